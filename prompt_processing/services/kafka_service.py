"""The consumer-group service every Kafka-consuming service here builds on (fan-out, arrival router).

Lifecycle: ``startup()`` -> ``tick()`` until ``should_exit`` -> ``shutdown()``, run by
``lifecycle.serve``.

Delivery guarantee the base class provides: a message's offset is stored, and later
committed, only after ``handle()`` returned for it — that is, after its outcome is
durable (the subclass's write, or a confirmed copy on the dead-letter topic). A crash
before the commit redelivers the message; subclasses make redelivery harmless. A bad
message is dead-lettered unchanged, with its reason in headers; transport outages are
retried with backoff (``adapters.retry``, bounds from ``PP_RETRY__*``), never skipped.
SIGTERM/SIGINT finish the message in hand, commit, leave the group, and exit within the
shutdown deadline.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import tenacity
from confluent_kafka import KafkaError, Message
from prometheus_client import CollectorRegistry

from prompt_processing.adapters import kafka
from prompt_processing.adapters.health import HealthKey
from prompt_processing.adapters.retry import retrying
from prompt_processing.model import naming
from prompt_processing.services.lifecycle import serve, shutdown_deadline
from prompt_processing.services.metrics import MetricsServer
from prompt_processing.settings import KafkaSettings, RetrySettings

log = logging.getLogger(__name__)

TRANSPORT_ERRORS = (redis.RedisError, ConnectionError, OSError)
"""What ``KafkaService.retrying`` retries: an outage of Redis, Kafka or S3, not a bad message."""


@dataclass(frozen=True)
class MetricsEndpoint:
    """Where a service serves its registry (``services.metrics``); ``None`` for a service: no endpoint."""

    registry: CollectorRegistry
    host: str
    port: int


@dataclass(frozen=True)
class ServiceConfig:
    """What differs between services: names, topics and limits."""

    kind: str  # "fanout", "router": names the health key
    name: str  # this process: consumer client id and health key
    group_id: str
    topic: str
    dead_letter_topic: str
    batch_size: int
    poll_timeout_s: float
    health_ttl_s: int
    shutdown_deadline_s: float


class Stopping(Exception):
    """Raised inside a retry loop when shutdown was requested before the work succeeded."""


class KafkaService:
    """A consumer-group service; subclasses implement ``handle`` and ``health``."""

    def __init__(
        self, kafka_settings: KafkaSettings, retry: RetrySettings, config: ServiceConfig, client: redis.Redis,
        metrics: MetricsEndpoint | None = None,
    ) -> None:  # fmt: skip
        self.kafka_settings = kafka_settings
        self.retry = retry
        self.config = config
        self.redis = client
        self.should_exit = False
        self.health_key = HealthKey(client, config.kind, config.name, ttl_s=config.health_ttl_s)
        self._policies: dict[str, tenacity.Retrying] = {}
        self._consumer: Any = None
        self._producer: Any = None
        self._metrics = metrics
        self._metrics_server = MetricsServer(metrics.registry) if metrics is not None else None
        self.metrics_port: int | None = None  # bound by startup

    # -- to implement ----------------------------------------------------------------------------

    def handle(self, message: Message, received_at: float) -> None:
        """Bring one message to a durable outcome (raise ``Stopping`` to leave it uncommitted)."""
        raise NotImplementedError

    def health(self) -> dict[str, Any]:
        """Counters published in the health key."""
        raise NotImplementedError

    def topics(self) -> list[str]:
        """Topics this service needs; created at start-up where the broker allows."""
        return [self.config.topic, self.config.dead_letter_topic]

    def on_shutdown(self) -> None:
        """Release subclass resources (called last, even after errors)."""

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; return the process exit code."""
        return serve(self)

    def startup(self) -> None:
        try:
            kafka.ensure_topics(self.kafka_settings, self.topics())
        except Exception as exc:  # e.g. no CreateTopics ACL in production: topics are managed there
            log.warning("could not ensure topics exist (%s); assuming they do", exc)
        self._producer = kafka.make_producer(self.kafka_settings)
        self._consumer = kafka.make_consumer(self.kafka_settings, self.config.group_id, client_id=self.config.name)
        self._consumer.subscribe([self.config.topic])
        if self._metrics is not None and self._metrics_server is not None:
            self.metrics_port = self._metrics_server.start(self._metrics.host, self._metrics.port)

    def request_exit(self) -> None:
        """Ask the loop to stop after the message in hand; safe from signal handlers and threads."""
        self.should_exit = True

    def shutdown(self) -> None:
        deadline_s = self.config.shutdown_deadline_s
        with shutdown_deadline(deadline_s):
            try:
                if self._consumer is not None:
                    self.commit()
                    self._consumer.close()
                if self._producer is not None:
                    self._producer.flush(deadline_s / 2)
                self.health_key.delete()
            except RuntimeError as exc:
                log.warning("shutdown: %s", exc)
            finally:
                self.on_shutdown()
                if self._metrics_server is not None:
                    self._metrics_server.stop()
                self.redis.close()
        log.info("%s %s stopped: %s", self.config.kind, self.config.name, json.dumps(self.health()))

    # -- one tick --------------------------------------------------------------------------------

    def tick(self) -> None:
        """Take what messages are there, handle each, commit what was handled."""
        messages = self.poll()
        received_at = time.perf_counter()
        handled = 0
        try:
            for message in messages:
                self.handle(message, received_at)
                self._consumer.store_offsets(message=message)
                handled += 1
                if self.should_exit:
                    break
        except Stopping:
            log.info("stopping with %d message(s) unhandled; they will be redelivered", len(messages) - handled)
        if handled:
            self.commit()
        self.health_key.refresh(self.health)

    def poll(self) -> list[Message]:
        """Wait up to ``poll_timeout_s`` for one message, then take what else is already here.

        (``consume(n, timeout)`` alone would hold the first message until n arrive or the
        timeout passes: up to half a second of added latency at the summit's cadence.)
        """
        first = self._consumer.poll(self.config.poll_timeout_s)
        if first is None:
            return []
        messages = [first]
        if self.config.batch_size > 1:
            messages += self._consumer.consume(num_messages=self.config.batch_size - 1, timeout=0)
        good = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("kafka: %s", error)
        return good

    # -- helpers for subclasses ------------------------------------------------------------------

    def dead_letter(self, message: Message, kind: str, reason: str) -> None:
        """Copy ``message`` unchanged to the dead-letter topic with why; returns once confirmed."""
        log.warning("dead-letter %s@%d: %s: %s", message.topic(), message.offset(), kind, reason)
        headers = [
            (naming.DLQ_HEADER_KIND, kind.encode()),
            (naming.DLQ_HEADER_REASON, reason.encode("utf-8", "replace")),
            (naming.DLQ_HEADER_SOURCE, f"{message.topic()}/{message.partition()}/{message.offset()}".encode()),
            *(message.headers() or []),
        ]
        self.retrying("kafka", lambda: self._produce_confirmed(message.value(), message.key(), headers))

    def retrying[T](
        self, what: str, call: Callable[[], T], retry_on: tuple[type[BaseException], ...] = TRANSPORT_ERRORS
    ) -> T:
        """Call until it succeeds (``retry_on`` errors back off); a shutdown request raises ``Stopping``.

        The first try is a plain call: tenacity's bookkeeping (~10 us a call) cost 5-10% of the
        fan-out's burst throughput (BENCHMARKS.md), so the policy only takes over after a failure
        (its own first try comes at once, then the pauses).
        """
        try:
            return call()
        except retry_on as exc:
            log.warning("%s failed (%s: %s); retrying", what, type(exc).__name__, exc)
        policy = self._policies.get(what)
        if policy is None:  # one per call site, built once: the hot path only calls it
            policy = retrying(self.retry, what, retry_on=retry_on, give_up=lambda: self.should_exit)
            self._policies[what] = policy
        try:
            return policy(call)
        except retry_on as exc:
            raise Stopping(f"{what} still failing while stopping: {exc}") from exc

    def commit(self) -> None:
        try:
            self._consumer.commit(asynchronous=False)
        except Exception as exc:  # KafkaException(_NO_OFFSET) when nothing new was stored
            if "NO_OFFSET" not in str(exc):
                log.warning("offset commit failed (%s); messages may be redelivered, de-duplicated", exc)

    def _produce_confirmed(self, value: bytes | None, key: bytes | None, headers: list[Any]) -> None:
        errors: list[Any] = []
        self._producer.produce(
            self.config.dead_letter_topic, value=value, key=key, headers=headers,
            on_delivery=lambda err, _msg: errors.append(err) if err else None,
        )  # fmt: skip
        if self._producer.flush(10.0) or errors:
            raise ConnectionError(f"dead-letter topic did not confirm: {errors or 'timeout'}")
