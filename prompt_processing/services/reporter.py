"""`pp reporter`: every recorded outcome folded into its night, and the nights' artifacts kept current.

Lifecycle (``lifecycle.serve``): ``startup()`` reads the results streams of the served
instruments back ``keep_nights`` nights -> ``tick()`` blocks up to ``block_s`` for new outcome
records (one XREAD on every stream), folds them into their nights, and at most every
``artifact_every_s`` writes a new version of each changed night's table and summary artifacts
(``reporting.report.NightArtifacts``) -> ``shutdown()`` writes what changed since.

Guarantees: a night's artifact never goes backwards (the single writer folds records in stream
order, each visit-detector's latest outcome wins); an outcome recorded while the reporter was
down is read at its next start. A Redis or Prefect outage is logged and retried next tick; it
never stops the service. One reporter per deployment: two would write the same artifacts twice.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import redis
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.settings import temporary_settings

from prompt_processing.adapters import prefect_api
from prompt_processing.adapters.health import HealthKey
from prompt_processing.adapters.redis_client import make_redis
from prompt_processing.adapters.results import read_entries
from prompt_processing.model import naming
from prompt_processing.model.events import day_obs
from prompt_processing.reporting.night import Night
from prompt_processing.reporting.outcomes import Outcome, parse
from prompt_processing.reporting.report import NightArtifacts
from prompt_processing.services.lifecycle import serve
from prompt_processing.services.metrics import MetricsServer, ReporterMetrics
from prompt_processing.settings import Settings

log = logging.getLogger(__name__)

NightKey = tuple[str, str]  # (instrument, dayObs)
READ_COUNT = 1000  # records per stream per read


class ReporterService:
    """Keeps the nights of ``instruments`` and their artifacts (see the module docstring)."""

    def __init__(self, settings: Settings, instruments: Sequence[str]) -> None:
        if not instruments:
            raise ValueError("the reporter needs at least one instrument")
        self.settings = settings
        self.config = settings.reporter
        self.instruments = tuple(instruments)
        self.name = self.config.name or socket.gethostname()
        self.should_exit = False
        self.nights: dict[NightKey, Night] = {}
        self.written = 0  # artifact writes (a night's table and summary count once)
        self._dirty: set[NightKey] = set()
        self._last_ids: dict[str, str] = {}  # stream -> the last entry id folded (set by startup)
        self._written_at = 0.0
        self._redis = make_redis(
            settings.redis, settings.retry, name="reporter", socket_timeout_s=settings.redis.socket_timeout_s + 30
        )
        self._resources = ExitStack()
        self._artifacts: NightArtifacts | None = None
        self.health_key = HealthKey(self._redis, "reporter", self.name, ttl_s=self.config.health_ttl_s)
        self.metrics = ReporterMetrics()
        self._metrics_server = MetricsServer(self.metrics.registry)
        self.metrics_port: int | None = None  # bound by startup

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; return the process exit code."""
        return serve(self)

    # -- lifecycle -------------------------------------------------------------------------------

    def startup(self) -> None:
        self._resources.enter_context(temporary_settings(prefect_api.client_settings(self.settings)))
        client: SyncPrefectClient = self._resources.enter_context(get_client(sync_client=True))
        self._artifacts = NightArtifacts(self.settings, client, table_rows=self.config.table_rows)
        since = time.time() - self.config.keep_nights * 86_400
        for instrument in self.instruments:
            stream = naming.results_stream(instrument)
            entries = read_entries(self._redis, instrument, since_utc=since)
            self._fold(instrument, entries)
            self._last_ids[stream] = entries[-1][0] if entries else f"{int(since * 1000)}-0"
        log.info("reporter %s: %d nights of %s read back", self.name, len(self.nights), ", ".join(self.instruments))
        m = self.settings.metrics
        if m.enabled:
            self.metrics_port = self._metrics_server.start(m.host, m.reporter_port)
            self._resources.callback(self._metrics_server.stop)

    def request_exit(self) -> None:
        self.should_exit = True

    def tick(self) -> None:
        """Fold new outcome records; write the changed nights when due."""
        try:
            streams: Any = self._last_ids
            reply: Any = self._redis.xread(streams, count=READ_COUNT, block=int(self.config.block_s * 1000))
        except redis.RedisError as exc:
            log.error("reporter: Redis unavailable (%s); retrying", exc)
            time.sleep(self.config.block_s)
            reply = []
        for stream, entries in reply or []:
            name = stream.decode() if isinstance(stream, bytes) else stream
            instrument = next(i for i in self.instruments if naming.results_stream(i) == name)
            decoded = [(_text(i), {_text(k): _text(v) for k, v in f.items()}) for i, f in entries]
            self._fold(instrument, decoded, live=True)
            self._last_ids[name] = decoded[-1][0]
        if self._dirty and time.monotonic() - self._written_at >= self.config.artifact_every_s:
            self.write_dirty()
        self.health_key.refresh(self._health)

    def shutdown(self) -> None:
        try:
            self.write_dirty()
        finally:
            self.health_key.delete()
            self._resources.close()
            self._redis.close()
        log.info("reporter %s stopped after %d artifact writes", self.name, self.written)

    # -- work --------------------------------------------------------------------------------------

    def write_dirty(self) -> None:
        """A new version of the artifacts of every night that changed; a Prefect error keeps them dirty."""
        assert self._artifacts is not None, "startup() was not called"
        self._written_at = time.monotonic()
        for key in sorted(self._dirty):
            try:
                self._artifacts.write(self.nights[key])
            except Exception as exc:  # the Prefect API is away: try again next time
                log.error("reporter: night %s %s not written (%s); retrying", *key, exc)
                return
            self._dirty.discard(key)
            self.written += 1

    def _fold(self, instrument: str, entries: list[tuple[str, dict[str, str]]], *, live: bool = False) -> None:
        """Add records to their nights; ``live`` ones (not read back at start) also to the metrics."""
        for entry_id, fields in entries:
            outcome = parse(instrument, entry_id, fields)
            if live:
                self._measure(outcome)
            key = (instrument, outcome.day_obs or day_obs(outcome.recorded_at))
            self.nights.setdefault(key, Night(*key)).add(outcome)
            self._dirty.add(key)
        self._forget_old_nights()

    def _measure(self, outcome: Outcome) -> None:
        m = self.metrics
        m.visits.labels(outcome.instrument, outcome.status).inc()
        if outcome.latency_s is not None:
            m.latency.labels(outcome.instrument).observe(outcome.latency_s)
        if outcome.processed_by and outcome.max_rss_bytes:
            m.activator_memory(outcome.instrument, outcome.processed_by, outcome.max_rss_bytes)

    def _forget_old_nights(self) -> None:
        keep = sorted({night for (_i, night) in self.nights}, reverse=True)[: self.config.keep_nights]
        for key in [k for k in self.nights if k[1] not in keep]:
            del self.nights[key]
            self._dirty.discard(key)

    def _health(self) -> dict[str, Any]:
        return {"nights": {f"{i} {d}": n.summary() for (i, d), n in self.nights.items()}, "written": self.written}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
