"""The next-visit fan-out service: Kafka ``next-visit`` -> Redis ``instrument:<name>`` streams.

Delivery guarantee — each valid, unexpired visit of a served instrument is fanned out
exactly once while its de-duplication key lives (``dedup_ttl_s`` >= message expiry):

* A message's Kafka offset is stored and committed only after its outcome is durable:
  the Redis transaction has returned (entries + de-duplication key, all or nothing), or
  the dead-letter topic acknowledged the copy. A crash at any point before the commit
  redelivers the message (at least once from Kafka).
* A redelivered visit finds its de-duplication key and adds nothing (``StreamFanOut``),
  so the streams see it once. Two fan-outs racing on the same visit: one wins the WATCH.
* A bad message (not JSON, wrong types, unknown instrument, expired) is copied unchanged
  to the dead-letter topic with its reason in headers and counted; it never stops the
  service. Redis or Kafka outages are retried with backoff, never skipped.
* SIGTERM/SIGINT: the current message is finished, offsets are committed, the consumer
  leaves its group and the process exits within ``shutdown_deadline_s``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import redis
from confluent_kafka import KafkaError, Message

from prompt_processing import kafka, naming
from prompt_processing.admission import Rejected, admit
from prompt_processing.instruments import active_detector_table
from prompt_processing.resp import RespConnection
from prompt_processing.settings import Settings
from prompt_processing.stats import percentile
from prompt_processing.streams import StreamFanOut

log = logging.getLogger(__name__)

_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)
_HEALTH_EVERY_S = 1.0


@dataclass
class FanOutStats:
    """Counters of one fan-out process, published in its health key."""

    received: int = 0
    fanned_out: int = 0
    duplicates: int = 0
    entries_written: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))

    def snapshot(self) -> dict[str, Any]:
        lat = list(self.latencies_ms)
        return {
            "received": self.received,
            "fanned_out": self.fanned_out,
            "duplicates": self.duplicates,
            "entries_written": self.entries_written,
            "dead_lettered": dict(self.dead_lettered),
            "latency_ms_p50": percentile(lat, 50),
            "latency_ms_p99": percentile(lat, 99),
            "latency_samples": len(lat),
        }


class _Stopping(Exception):
    """Raised inside a retry loop when shutdown was requested before the work succeeded."""


class FanOutService:
    """One fan-out process. Lifecycle: ``startup()`` -> ``tick()`` until ``should_exit`` -> ``shutdown()``."""

    def __init__(self, settings: Settings, *, clock_utc_s: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.name = settings.fanout.consumer_name or socket.gethostname()
        self.stats = FanOutStats()
        self.should_exit = False
        self._clock = clock_utc_s
        self._active = active_detector_table(settings.instruments)
        self._redis = redis.Redis.from_url(
            settings.redis.url, socket_timeout=settings.redis.socket_timeout_s, health_check_interval=10
        )
        self._writer_connection = RespConnection(settings.redis)
        self._writer = StreamFanOut(
            self._writer_connection,
            dedup_ttl_s=settings.fanout.dedup_ttl_s,
            stream_maxlen=settings.fanout.stream_maxlen,
        )
        self._consumer: Any = None
        self._producer: Any = None
        self._health_at = 0.0

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; return the process exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.startup()
        try:
            while not self.should_exit:
                self.tick()
        finally:
            self.shutdown()
        return 0

    def startup(self) -> None:
        k = self.settings.kafka
        try:
            kafka.ensure_topics(k, [k.next_visit_topic, k.dead_letter_topic])
        except Exception as exc:  # e.g. no CreateTopics ACL in production: topics are managed there
            log.warning("could not ensure topics exist (%s); assuming they do", exc)
        self._producer = kafka.make_producer(k)
        self._consumer = kafka.make_consumer(k, self.settings.fanout.group_id, client_id=self.name)
        self._consumer.subscribe([k.next_visit_topic])
        log.info(
            "fan-out %s: %s -> %s", self.name, k.next_visit_topic,
            ", ".join(f"{naming.stream_name(i)} ({len(d)} detectors)" for i, d in self._active.items()),
        )  # fmt: skip

    def request_exit(self) -> None:
        """Ask the loop to stop after the message in hand; safe from signal handlers and threads."""
        self.should_exit = True

    def shutdown(self) -> None:
        deadline_s = self.settings.fanout.shutdown_deadline_s
        watchdog = threading.Timer(deadline_s, _overran, args=(deadline_s,))
        watchdog.daemon = True
        watchdog.start()
        try:
            if self._consumer is not None:
                self._commit()
                self._consumer.close()
            if self._producer is not None:
                self._producer.flush(deadline_s / 2)
            self._redis.delete(naming.fanout_health_key(self.name))
        except (redis.RedisError, RuntimeError) as exc:
            log.warning("shutdown: %s", exc)
        finally:
            watchdog.cancel()
            self._redis.close()
            self._writer_connection.close()
        log.info("fan-out %s stopped: %s", self.name, json.dumps(self.stats.snapshot()))

    # -- one tick --------------------------------------------------------------------------------

    def tick(self) -> None:
        """Take up to ``batch_size`` messages, handle each, commit what was handled."""
        messages = self.poll()
        received_at = time.perf_counter()
        handled = 0
        try:
            for message in messages:
                self.handle(message, received_at)
                handled += 1
                if self.should_exit:
                    break
        except _Stopping:
            log.info("stopping with %d message(s) unhandled; they will be redelivered", len(messages) - handled)
        if handled:
            self._commit()
        self._publish_health()

    def poll(self) -> list[Message]:
        """Wait up to ``poll_timeout_s`` for one message, then take what else is already here.

        (``consume(n, timeout)`` alone would hold the first message until n arrive or the
        timeout passes: up to half a second of added latency at the summit's cadence.)
        """
        f = self.settings.fanout
        first = self._consumer.poll(f.poll_timeout_s)
        if first is None:
            return []
        messages = [first]
        if f.batch_size > 1:
            messages += self._consumer.consume(num_messages=f.batch_size - 1, timeout=0)
        good = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("kafka: %s", error)
        return good

    def handle(self, message: Message, received_at: float) -> None:
        """Fan out or dead-letter one message, then store its offset for the next commit."""
        self.stats.received += 1
        try:
            visit, instrument, detectors = admit(
                message.value(),
                now_utc_s=self._clock(),
                active=self._active,
                message_expiration_s=self.settings.fanout.message_expiration_s,
            )
        except Rejected as rejected:
            self._dead_letter(message, rejected)
        else:
            written = self._retrying("redis", lambda: self._writer.write(visit, instrument, detectors))
            if written:
                self.stats.fanned_out += 1
                self.stats.entries_written += written
                self.stats.latencies_ms.append((time.perf_counter() - received_at) * 1e3)
            else:
                self.stats.duplicates += 1
                log.info("visit %s/%s already fanned out; skipped", instrument, visit.groupId)
        self._consumer.store_offsets(message=message)

    # -- helpers ---------------------------------------------------------------------------------

    def _dead_letter(self, message: Message, rejected: Rejected) -> None:
        log.warning("dead-letter %s@%d: %s", message.topic(), message.offset(), rejected)
        headers = [
            (naming.DLQ_HEADER_KIND, str(rejected.kind).encode()),
            (naming.DLQ_HEADER_REASON, rejected.reason.encode("utf-8", "replace")),
            (naming.DLQ_HEADER_SOURCE, f"{message.topic()}/{message.partition()}/{message.offset()}".encode()),
            *(message.headers() or []),
        ]
        self._retrying("kafka", lambda: self._produce_confirmed(message.value(), message.key(), headers))
        self.stats.dead_lettered[str(rejected.kind)] += 1

    def _produce_confirmed(self, value: bytes | None, key: bytes | None, headers: list[Any]) -> None:
        errors: list[Any] = []
        self._producer.produce(
            self.settings.kafka.dead_letter_topic, value=value, key=key, headers=headers,
            on_delivery=lambda err, _msg: errors.append(err) if err else None,
        )  # fmt: skip
        if self._producer.flush(10.0) or errors:
            raise ConnectionError(f"dead-letter topic did not confirm: {errors or 'timeout'}")

    def _retrying[T](self, what: str, call: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return call()
            except (redis.RedisError, ConnectionError, OSError) as exc:
                if self.should_exit:
                    raise _Stopping from exc
                delay_s = _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]
                log.error("%s failed (%s); retrying in %.1f s", what, exc, delay_s)
                time.sleep(delay_s)
                attempt += 1

    def _commit(self) -> None:
        try:
            self._consumer.commit(asynchronous=False)
        except Exception as exc:  # KafkaException(_NO_OFFSET) when nothing new was stored
            if "NO_OFFSET" not in str(exc):
                log.warning("offset commit failed (%s); messages may be redelivered, de-duplicated", exc)

    def _publish_health(self) -> None:
        now = time.monotonic()
        if now - self._health_at < _HEALTH_EVERY_S:
            return
        self._health_at = now
        body = {"name": self.name, "updated_at": self._clock(), **self.stats.snapshot()}
        try:
            self._redis.set(naming.fanout_health_key(self.name), json.dumps(body), ex=self.settings.fanout.health_ttl_s)
        except redis.RedisError as exc:
            log.warning("health key not refreshed: %s", exc)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: finishing the current message, then exiting", signum)
        self.request_exit()


def _overran(deadline_s: float) -> None:
    log.error("shutdown overran its %.0f s deadline; exiting (uncommitted messages are redelivered)", deadline_s)
    os._exit(70)


def read_health(settings: Settings, name: str | None = None) -> dict[str, Any] | None:
    """The health record of the fan-out called ``name`` (default: this host), or None if stale."""
    client = redis.Redis.from_url(settings.redis.url, socket_timeout=settings.redis.socket_timeout_s)
    try:
        raw = client.get(naming.fanout_health_key(name or settings.fanout.consumer_name or socket.gethostname()))
    finally:
        client.close()
    return json.loads(raw) if raw else None
