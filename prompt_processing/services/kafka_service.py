"""The consumer-group service every Kafka-consuming service here builds on (fan-out, arrival router).

Lifecycle: ``startup()`` -> ``tick()`` until ``should_exit`` -> ``shutdown()``, run by
``lifecycle.serve``.

Delivery guarantee the base class provides: a message's offset is stored, and later
committed, only after ``handle()`` returned for it — that is, after its outcome is
durable (the subclass's write, or a confirmed copy on the dead-letter topic). A crash
before the commit redelivers the message; subclasses make redelivery harmless. A bad
message is dead-lettered unchanged, with its reason in headers. Failures of Redis, Kafka,
S3 or a database are classed by ``model.failures``: an outage is retried with backoff
(``adapters.retry``, bounds from ``PP_RETRY__*``), never skipped, and past ``outage_alarm_s``
the health record says unhealthy; a permanent failure while handling a message (or any
unexpected error: a bug) dead-letters that message with the reason, and the service goes on
with the next (a refusal of our configuration also makes the health record unhealthy at once).
SIGTERM/SIGINT finish the message in hand, commit, leave the group, and exit within the shutdown
deadline.
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
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import CollectorRegistry

from prompt_processing.adapters import kafka
from prompt_processing.adapters.health import HealthKey
from prompt_processing.adapters.retry import OutageWatch, retrying
from prompt_processing.model import naming
from prompt_processing.model.failures import Failure, classify, is_transient, kafka_error
from prompt_processing.services.lifecycle import serve, shutdown_deadline
from prompt_processing.services.metrics import MetricsServer
from prompt_processing.settings import KafkaSettings, RetrySettings

log = logging.getLogger(__name__)

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
    replay_window_s: float = 0.0  # > 0: replay this much of the topic when Redis lost its data (``check_redis``)


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
        self.outages = OutageWatch(retry.outage_alarm_s)
        self._redis_checked_at = float("-inf")
        self._replay_until: dict[int, int] = {}  # partition -> the end offset of a replay in progress
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
            except (RuntimeError, KafkaException) as exc:
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
        self.check_redis()
        handled = 0
        try:
            for message in messages:
                self.handle_or_dead_letter(message, received_at)
                self._consumer.store_offsets(message=message)
                handled += 1
                if self.should_exit:
                    break
        except Stopping:
            log.info("stopping with %d message(s) unhandled; they will be redelivered", len(messages) - handled)
        if handled:
            self.commit()
        self.refresh_health()

    def check_redis(self) -> None:
        """Once a second: if Redis lost its data (restarted without persistence, or flushed: this service's
        marker key ``pp:<kind>:epoch`` is gone) while the group has committed offsets, replay the last
        ``replay_window_s`` of the topic, so what was in flight is written again (idempotently: see the
        subclass). A group that never committed reads from the start anyway: the marker is just set."""
        now = time.monotonic()
        if self.config.replay_window_s <= 0 or now - self._redis_checked_at < 1.0:
            return
        assignment = self._consumer.assignment()
        if not assignment:
            return
        self._redis_checked_at = now
        try:
            if not self.redis.set(naming.epoch_key(self.config.kind), str(time.time()), nx=True):
                return  # the marker is there: nothing was lost
        except redis.RedisError:
            return  # Redis away: the next check tells
        if all(tp.offset < 0 for tp in self._consumer.committed(assignment, timeout=10)):
            return  # nothing committed yet: the group reads everything once
        since_ms = int((time.time() - self.config.replay_window_s) * 1000)
        wanted = [TopicPartition(tp.topic, tp.partition, since_ms) for tp in assignment]
        # What this consumer already fetched (not the broker's watermark: Tansu's can fall short of the end).
        seen = {tp.partition: tp.offset for tp in self._consumer.position(assignment)}
        for start in self._consumer.offsets_for_times(wanted, timeout=10):
            if start.offset < 0 or seen.get(start.partition, -1) < 0:
                continue  # nothing written in the window, or nothing fetched yet
            self._replay_until[start.partition] = seen[start.partition]
            self._consumer.seek(start)
        log.warning("%s %s: Redis has no %s (lost its data, or first start): replaying %s from %.0f s ago: %s",
                    self.config.kind, self.config.name, naming.epoch_key(self.config.kind), self.config.topic,
                    self.config.replay_window_s, self._replay_until)  # fmt: skip

    def replaying(self, message: Message) -> bool:
        """``message`` is read again by a replay (``check_redis``): already dealt with once."""
        return (message.offset() or 0) < self._replay_until.get(message.partition() or 0, -1)

    def handle_or_dead_letter(self, message: Message, received_at: float) -> None:
        """``handle`` the message; one that fails permanently (or hits a bug) is dead-lettered with why."""
        try:
            self.handle(message, received_at)
        except Stopping:
            raise
        except Exception as exc:  # transient failures were retried inside handle(); this one is final
            kind = "permanent-error" if classify(exc) is Failure.PERMANENT else "error"
            log.exception("%s@%d could not be handled (%s)", message.topic(), message.offset(), kind)
            self.dead_letter(message, kind, f"{type(exc).__name__}: {exc!s:.500}")
            self.on_dead_lettered(kind)

    def on_dead_lettered(self, kind: str) -> None:
        """Count a message dead-lettered by ``handle_or_dead_letter`` (subclasses keep their counters)."""

    def refresh_health(self) -> None:
        """The health record: the subclass's counters, ``healthy`` and any outage in progress."""
        self.health_key.refresh(lambda: {**self.health(), **self.outages.snapshot()})

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
        source = f"{message.topic()}/{message.partition()}/{message.offset()}"
        self.dead_letter_value(message.value(), message.key(), kind, reason, source=source,
                               headers=list(message.headers() or []))  # fmt: skip

    def dead_letter_value(
        self, value: bytes | None, key: bytes | None, kind: str, reason: str, *, source: str,
        headers: list[Any] | None = None,
    ) -> None:  # fmt: skip
        """Put ``value`` on the dead-letter topic with why and where from; returns once confirmed."""
        log.warning("dead-letter %s: %s: %s", source, kind, reason)
        all_headers = [
            (naming.DLQ_HEADER_KIND, kind.encode()),
            (naming.DLQ_HEADER_REASON, reason.encode("utf-8", "replace")),
            (naming.DLQ_HEADER_SOURCE, source.encode()),
            *(headers or []),
        ]
        self.retrying("kafka", lambda: self._produce_confirmed(value, key, all_headers))

    def retrying[T](self, what: str, call: Callable[[], T]) -> T:
        """Call until it succeeds; a failure ``model.failures`` classes transient backs off and is
        retried (a shutdown request then raises ``Stopping``), a permanent one is raised at once.

        The first try is a plain call: tenacity's bookkeeping (~10 us a call) cost 5-10% of the
        fan-out's burst throughput (BENCHMARKS.md), so the policy only takes over after a failure
        (its own first try comes at once, then the pauses).
        """
        try:
            result = call()
            self.outages.recovered(what)
            return result
        except Exception as exc:
            if classify(exc) is Failure.PERMANENT:
                raise
            self.outages.failed(what, exc)  # a refusal of our configuration alarms at once, and is not retried
            if not is_transient(exc):
                raise
            log.warning("%s failed (%s: %s); retrying", what, type(exc).__name__, exc)
        policy = self._policies.get(what)
        if policy is None:  # one per call site, built once: the hot path only calls it
            policy = retrying(self.retry, what, give_up=lambda: self.should_exit, watch=self.outages)
            self._policies[what] = policy
        try:
            result = policy(call)
        except Exception as exc:
            if is_transient(exc):
                raise Stopping(f"{what} still failing while stopping: {exc}") from exc
            raise
        finally:
            self.refresh_health()
        self.outages.recovered(what)
        return result

    def commit(self) -> None:
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            error = kafka_error(exc)
            if error is None or error.code() != KafkaError._NO_OFFSET:  # _NO_OFFSET: nothing new was stored
                log.warning("offset commit failed (%s); messages may be redelivered, de-duplicated", exc)

    def _produce_confirmed(self, value: bytes | None, key: bytes | None, headers: list[Any]) -> None:
        """Produce one copy and wait for the broker's answer: a copy still queued is waited for, never
        sent again (a stalled broker gives no duplicate); a definite error is raised, classed by its code."""
        errors: list[Any] = []
        self._producer.produce(
            self.config.dead_letter_topic, value=value, key=key, headers=headers,
            on_delivery=lambda err, _msg: errors.append(err) if err else None,
        )  # fmt: skip
        waited_s = 0.0
        while self._producer.flush(1.0) and not errors:
            waited_s += 1.0
            if self.should_exit:
                raise Stopping(f"dead-letter topic {self.config.dead_letter_topic} unconfirmed while stopping")
            if waited_s % 10 == 0:
                self.outages.failed("kafka dead-letter", TimeoutError(f"unconfirmed for {waited_s:.0f} s"))
                self.refresh_health()
        if errors:
            raise KafkaException(errors[0])  # classed by its code: an outage is retried, a refusal is not
        self.outages.recovered("kafka dead-letter")
