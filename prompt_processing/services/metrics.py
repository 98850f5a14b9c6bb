"""Prometheus metrics of the long-running services, each process on its own endpoint and registry.

Every service instance owns a ``CollectorRegistry`` (two in one process, as in tests, never
collide) and serves it on ``GET /metrics`` at ``PP_METRICS__HOST:<service>_port`` from startup to
shutdown. What each exports:

* fan-out: messages by outcome (fanned out, duplicate, dead-lettered), dead-lettered by kind,
  entries written, Kafka-received -> Redis-confirmed latency (histogram);
* router: notifications, raw images and presences recorded, dead-lettered by kind;
* Butler writer: pp-output events and datasets ingested, dead-lettered by kind, batch duration (histogram);
* autoscaler, per instrument (what Rubin's Redis stream exporter and KEDA show): lag, pending,
  stale pending, stream length, unfinished and not-yet-started activator runs, runs created,
  decision latency (histogram);
* reporter, per instrument, from the results streams as outcomes arrive (not the ones read back
  at start): visit-detectors by outcome, image landed -> alerts sent (histogram, with the 60 s
  bucket), each activator's peak memory (dropped 10 minutes after its last outcome).
"""

from __future__ import annotations

import logging
import time
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

FANOUT_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
DECISION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ALERT_LATENCY_BUCKETS_S = (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 300)
ACTIVATOR_MEMORY_KEPT_S = 600.0


class MetricsServer:
    """``GET /metrics`` of one registry, from ``start`` to ``stop``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._server: WSGIServer | None = None
        self._thread: Thread | None = None

    def start(self, host: str, port: int) -> int:
        """Serve on ``host:port`` (0: a free port); return the port. RuntimeError if it cannot bind."""
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise RuntimeError(f"metrics endpoint {host}:{port} unavailable ({exc.strerror}): choose another "
                               "PP_METRICS__<SERVICE>_PORT, or PP_METRICS__ENABLED=false") from exc
        bound = int(self._server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)


class FanOutMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.messages = Counter("pp_fanout_messages", "next-visit messages by outcome", ["outcome"],
                                registry=self.registry)  # fmt: skip
        self.dead_lettered = Counter("pp_fanout_dead_lettered", "messages dead-lettered, by kind", ["kind"],
                                     registry=self.registry)  # fmt: skip
        self.entries = Counter("pp_fanout_entries_written", "stream entries written", registry=self.registry)
        self.latency = Histogram("pp_fanout_latency_seconds", "Kafka message received -> Redis confirmed",
                                 buckets=FANOUT_LATENCY_BUCKETS_S, registry=self.registry)  # fmt: skip


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.notifications = Counter("pp_router_notifications", "S3 notifications read", registry=self.registry)
        self.images = Counter("pp_router_images", "raw image records seen", registry=self.registry)
        self.presences = Counter("pp_router_presences", "presences recorded (activators woken)",
                                 registry=self.registry)  # fmt: skip
        self.dead_lettered = Counter("pp_router_dead_lettered", "notifications dead-lettered, by kind", ["kind"],
                                     registry=self.registry)  # fmt: skip


class ButlerWriterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter("pp_butler_writer_events", "pp-output events ingested", registry=self.registry)
        self.datasets = Counter("pp_butler_writer_datasets", "datasets ingested (or found there)",
                                registry=self.registry)  # fmt: skip
        self.dead_lettered = Counter("pp_butler_writer_dead_lettered", "events dead-lettered, by kind", ["kind"],
                                     registry=self.registry)  # fmt: skip
        self.batch = Histogram("pp_butler_writer_batch_seconds", "one batch: registry transaction and ingest",
                               registry=self.registry)  # fmt: skip


class AutoscalerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["instrument"]
        self.lag = Gauge("pp_queue_lag", "entries never delivered to the group", labels, registry=self.registry)
        self.pending = Gauge("pp_queue_pending", "entries delivered, not acknowledged", labels, registry=self.registry)
        self.stale = Gauge("pp_queue_stale_pending", "pending entries idle longer than claim_idle_s", labels,
                           registry=self.registry)  # fmt: skip
        self.length = Gauge("pp_queue_length", "entries in the stream (XLEN)", labels, registry=self.registry)
        self.runs = Gauge("pp_activator_runs", "activator runs not finished, by state", [*labels, "state"],
                          registry=self.registry)  # fmt: skip
        self.created = Counter("pp_autoscaler_runs_created", "activator runs created", labels, registry=self.registry)
        self.decision = Histogram("pp_autoscaler_decision_seconds", "measuring the queue and the runs",
                                  labels, buckets=DECISION_BUCKETS_S, registry=self.registry)  # fmt: skip


class ReporterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.visits = Counter("pp_visits", "visit-detector outcomes recorded", ["instrument", "outcome"],
                              registry=self.registry)  # fmt: skip
        self.latency = Histogram("pp_landed_to_alerts_seconds", "raw image landed -> alerts sent", ["instrument"],
                                 buckets=ALERT_LATENCY_BUCKETS_S, registry=self.registry)  # fmt: skip
        self.memory = Gauge("pp_activator_max_rss_bytes", "peak memory of an activator at its latest outcome",
                            ["instrument", "activator"], registry=self.registry)  # fmt: skip
        self._memory_seen: dict[tuple[str, str], float] = {}

    def activator_memory(self, instrument: str, activator: str, max_rss_bytes: float) -> None:
        """Set one activator's peak memory; forget activators silent for ``ACTIVATOR_MEMORY_KEPT_S``."""
        now = time.monotonic()
        self.memory.labels(instrument, activator).set(max_rss_bytes)
        self._memory_seen[(instrument, activator)] = now
        for key, seen in list(self._memory_seen.items()):
            if now - seen > ACTIVATOR_MEMORY_KEPT_S:
                self.memory.remove(*key)
                del self._memory_seen[key]
