"""The next-visit fan-out service: Kafka ``next-visit`` -> Redis ``instrument:<name>`` streams.

Delivery guarantee — each valid, unexpired visit of a served instrument is fanned out
exactly once while its de-duplication key lives (``dedup_ttl_s`` >= message expiry):

* A message's Kafka offset is stored and committed only after its outcome is durable:
  the Redis script has returned (entries + de-duplication key, all or nothing), or
  the dead-letter topic acknowledged the copy. A crash at any point before the commit
  redelivers the message (at least once from Kafka).
* A redelivered visit finds its de-duplication key and adds nothing (``StreamFanOut``),
  so the streams see it once. Two fan-outs racing on the same visit: Redis runs their scripts one
  after the other, and the second adds nothing.
* A bad message (not JSON, wrong types, unknown instrument, expired) is copied unchanged
  to the dead-letter topic with its reason in headers and counted; it never stops the
  service. Redis or Kafka outages are retried with backoff, never skipped.
* Redis lost its data (restarted without persistence): the de-duplication keys went with the
  streams, so the last ``replay_window_s`` of next-visit events is fanned out again
  (``KafkaService.check_redis``); visits whose alerts were all sent are then recognised by the
  activators from the alerts ledger (succeeded, "already done"), the others are processed.
* SIGTERM/SIGINT: the current message is finished, offsets are committed, the consumer
  leaves its group and the process exits within ``shutdown_deadline_s``.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
from confluent_kafka import Message

from prompt_processing.adapters.redis_client import make_redis
from prompt_processing.adapters.streams import StreamFanOut
from prompt_processing.model import naming
from prompt_processing.model.admission import Rejected, admit
from prompt_processing.model.instruments import active_detector_table
from prompt_processing.services.kafka_service import KafkaService, MetricsEndpoint, ServiceConfig
from prompt_processing.services.metrics import FanOutMetrics
from prompt_processing.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class FanOutStats:
    """Counters of one fan-out process, published in its health key."""

    received: int = 0
    fanned_out: int = 0
    duplicates: int = 0
    entries_written: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    latencies_ms: LatencyWindow = field(default_factory=lambda: LatencyWindow(10_000))

    def snapshot(self) -> dict[str, Any]:
        p50, p99 = self.latencies_ms.percentiles(50, 99)
        return {
            "received": self.received,
            "fanned_out": self.fanned_out,
            "duplicates": self.duplicates,
            "entries_written": self.entries_written,
            "dead_lettered": dict(self.dead_lettered),
            "latency_ms_p50": p50,
            "latency_ms_p99": p99,
            "latency_samples": len(self.latencies_ms),
        }


class LatencyWindow:
    """The last ``size`` latencies in a numpy ring buffer: O(1) to add, one O(n) selection
    (``np.percentile``, linear interpolation) for any number of percentiles."""

    def __init__(self, size: int) -> None:
        self._values = np.empty(size, dtype=np.float64)
        self._count = 0

    def __len__(self) -> int:
        return min(self._count, len(self._values))

    def append(self, value: float) -> None:
        self._values[self._count % len(self._values)] = value
        self._count += 1

    def clear(self) -> None:
        self._count = 0

    def values(self) -> list[float]:
        """The samples in the window (oldest first until it wraps, then in ring order)."""
        return [float(v) for v in self._values[: len(self)]]

    def percentiles(self, *qs: float) -> list[float | None]:
        """The ``qs`` percentiles (0..100) of the window; Nones while it is empty."""
        if not len(self):
            return [None] * len(qs)
        return [float(v) for v in np.percentile(self._values[: len(self)], qs)]


class FanOutService(KafkaService):
    """One fan-out process (see the module docstring for its guarantee)."""

    def __init__(self, settings: Settings, *, clock_utc_s: Callable[[], float] = time.time) -> None:
        f, k = settings.fanout, settings.kafka
        config = ServiceConfig(
            kind="fanout", name=f.consumer_name or socket.gethostname(), group_id=f.group_id,
            topic=k.next_visit_topic, dead_letter_topic=k.dead_letter_topic, batch_size=f.batch_size,
            poll_timeout_s=f.poll_timeout_s, health_ttl_s=f.health_ttl_s, shutdown_deadline_s=f.shutdown_deadline_s,
            replay_window_s=f.replay_window_s,
        )  # fmt: skip
        client = make_redis(settings.redis, settings.retry, name=f"fanout-{config.name}")
        self.metrics = FanOutMetrics()
        m = settings.metrics
        endpoint = MetricsEndpoint(self.metrics.registry, m.host, m.fanout_port) if m.enabled else None
        super().__init__(k, settings.retry, config, client, endpoint)
        self.settings = settings
        self.stats = FanOutStats()
        self._clock = clock_utc_s
        self._active = active_detector_table(settings.instruments)
        # The writer shares the service's client (health key, replay marker): one connection, one thread.
        self._writer = StreamFanOut(client, dedup_ttl_s=f.dedup_ttl_s, stream_maxlen=f.stream_maxlen)

    def startup(self) -> None:
        super().startup()
        try:
            self._writer.load()
        except redis.RedisError as exc:  # not fatal: the first write loads it (NOSCRIPT), retried as any write
            log.warning("could not load the fan-out script at start-up (%s); the first write will", exc)
        log.info(
            "fan-out %s: %s -> %s", self.config.name, self.config.topic,
            ", ".join(f"{naming.stream_name(i)} ({len(d)} detectors)" for i, d in self._active.items()),
        )  # fmt: skip

    def handle(self, message: Message, received_at: float) -> None:
        """Fan out or dead-letter one message."""
        self.stats.received += 1
        try:
            visit, instrument, detectors = admit(
                message.value(),
                now_utc_s=self._clock(),
                active=self._active,
                message_expiration_s=self.settings.fanout.message_expiration_s,
            )
        except Rejected as rejected:
            if self.replaying(message):  # dead-lettered (or expired since) the first time
                return
            self.dead_letter(message, str(rejected.kind), rejected.reason)
            self.metrics.messages.labels("dead_lettered").inc()
            self.metrics.dead_lettered.labels(str(rejected.kind)).inc()
            self.stats.dead_lettered[str(rejected.kind)] += 1
            return
        written = self.retrying("redis", lambda: self._writer.write(visit, instrument, detectors))
        if written:
            latency_s = time.perf_counter() - received_at
            self.metrics.messages.labels("fanned_out").inc()
            self.metrics.entries.inc(written)
            self.metrics.latency.observe(latency_s)
            self.stats.fanned_out += 1
            self.stats.entries_written += written
            self.stats.latencies_ms.append(latency_s * 1e3)
        else:
            self.metrics.messages.labels("duplicate").inc()
            self.stats.duplicates += 1
            log.info("visit %s/%s already fanned out; skipped", instrument, visit.groupId)

    def health(self) -> dict[str, Any]:
        return self.stats.snapshot()
