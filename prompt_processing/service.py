"""The shape every Kafka-consuming service here shares (the fan-out, the arrival router).

Lifecycle: ``startup()`` -> ``tick()`` until ``should_exit`` -> ``shutdown()``.

Delivery guarantee the base class provides: a message's offset is stored, and later
committed, only after ``handle()`` returned for it — that is, after its outcome is
durable (the subclass's write, or a confirmed copy on the dead-letter topic). A crash
before the commit redelivers the message; subclasses make redelivery harmless. A bad
message is dead-lettered unchanged, with its reason in headers; transport outages are
retried with backoff, never skipped. SIGTERM/SIGINT finish the message in hand, commit,
leave the group, and exit within the shutdown deadline.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

import redis
from confluent_kafka import KafkaError, Message

from prompt_processing import kafka, naming
from prompt_processing.settings import KafkaSettings

log = logging.getLogger(__name__)

_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)
_HEALTH_EVERY_S = 1.0


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

    def __init__(self, kafka_settings: KafkaSettings, config: ServiceConfig, client: redis.Redis) -> None:
        self.kafka_settings = kafka_settings
        self.config = config
        self.redis = client
        self.should_exit = False
        self._consumer: Any = None
        self._producer: Any = None
        self._health_at = 0.0

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

    def request_exit(self) -> None:
        """Ask the loop to stop after the message in hand; safe from signal handlers and threads."""
        self.should_exit = True

    def shutdown(self) -> None:
        deadline_s = self.config.shutdown_deadline_s
        watchdog = threading.Timer(deadline_s, _overran, args=(deadline_s,))
        watchdog.daemon = True
        watchdog.start()
        try:
            if self._consumer is not None:
                self.commit()
                self._consumer.close()
            if self._producer is not None:
                self._producer.flush(deadline_s / 2)
            self.redis.delete(self.health_key)
        except (redis.RedisError, RuntimeError) as exc:
            log.warning("shutdown: %s", exc)
        finally:
            watchdog.cancel()
            self.on_shutdown()
            self.redis.close()
        log.info("%s %s stopped: %s", self.config.kind, self.config.name, json.dumps(self.health()))

    @property
    def health_key(self) -> str:
        return naming.health_key(self.config.kind, self.config.name)

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
        self.publish_health()

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

    def retrying[T](self, what: str, call: Callable[[], T]) -> T:
        """Call until it succeeds; transport errors back off; shutdown raises ``Stopping``."""
        attempt = 0
        while True:
            try:
                return call()
            except (redis.RedisError, ConnectionError, OSError) as exc:
                if self.should_exit:
                    raise Stopping from exc
                delay_s = _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]
                log.error("%s failed (%s); retrying in %.1f s", what, exc, delay_s)
                time.sleep(delay_s)
                attempt += 1

    def commit(self) -> None:
        try:
            self._consumer.commit(asynchronous=False)
        except Exception as exc:  # KafkaException(_NO_OFFSET) when nothing new was stored
            if "NO_OFFSET" not in str(exc):
                log.warning("offset commit failed (%s); messages may be redelivered, de-duplicated", exc)

    def publish_health(self) -> None:
        now = time.monotonic()
        if now - self._health_at < _HEALTH_EVERY_S:
            return
        self._health_at = now
        body = {"name": self.config.name, "updated_at": time.time(), **self.health()}
        try:
            self.redis.set(self.health_key, json.dumps(body), ex=self.config.health_ttl_s)
        except redis.RedisError as exc:
            log.warning("health key not refreshed: %s", exc)

    def _produce_confirmed(self, value: bytes | None, key: bytes | None, headers: list[Any]) -> None:
        errors: list[Any] = []
        self._producer.produce(
            self.config.dead_letter_topic, value=value, key=key, headers=headers,
            on_delivery=lambda err, _msg: errors.append(err) if err else None,
        )  # fmt: skip
        if self._producer.flush(10.0) or errors:
            raise ConnectionError(f"dead-letter topic did not confirm: {errors or 'timeout'}")


class Servable(Protocol):
    """A long-running service: ``startup()`` -> ``tick()`` until ``should_exit`` -> ``shutdown()``."""

    should_exit: bool

    def startup(self) -> None: ...
    def tick(self) -> object: ...
    def shutdown(self) -> None: ...
    def request_exit(self) -> None: ...


def serve(service: Servable) -> int:
    """Run ``service`` until SIGTERM/SIGINT, which only set its exit flag; return the exit code.

    The tick in progress finishes, then ``shutdown()`` runs (also after an error).
    """

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: finishing the work in hand, then exiting", signum)
        service.request_exit()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    service.startup()
    try:
        while not service.should_exit:
            service.tick()
    finally:
        service.shutdown()
    return 0


def _overran(deadline_s: float) -> None:
    log.error("shutdown overran its %.0f s deadline; exiting (uncommitted messages are redelivered)", deadline_s)
    os._exit(70)


def read_health(client: redis.Redis, kind: str, name: str) -> dict[str, Any] | None:
    """The health record of service ``kind`` called ``name``, or None if missing or stale."""
    raw = client.get(naming.health_key(kind, name))
    return json.loads(raw) if raw else None
