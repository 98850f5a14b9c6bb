"""`pp autoscale`: KEDA ScaledJob semantics for the activator flow runs, on Prefect.

Lifecycle (``services.lifecycle.serve``): ``startup()`` -> ``tick()`` until ``should_exit`` ->
``shutdown()``. Each instrument spec (``deployments/autoscaler.yaml``, see ``spec.py``) has a
**decision loop** of its own, in its own thread, started by the first tick; ``tick()`` itself only
supervises (work-pool limits, the health key, a loop that died) and hands back the decisions made.
A decision: **measure** the stream (one MULTI/EXEC: lag, pending, length, stale pending;
``metrics.py``) and the deployment's unfinished runs (two filtered counts) -> **decide** with
``rules.decide`` (KEDA's formulas, pure) -> **act**: create that many flow runs concurrently, at most
``create_concurrency`` in flight per instrument (``prefect_calls.py``), each given the instrument's
work-queue contract (flow parameter ``queue``). An instrument's burst (189 runs for
an LSSTCam visit) therefore never delays another instrument's decisions or runs.

Behaviour and guarantees:

- Reaction: between decisions an instrument's loop blocks in one XREAD on its stream, from the
  newest entry id its last measurement saw, for at most the time to its next due poll. A new
  entry wakes it and the decision runs at once, so the first runs of a visit are requested
  within tens of ms, not a polling interval. An entry that lands during a decision is after the
  measured tail and wakes the next read: none is missed. With
  ``wake_on_entries=false`` it only polls, as KEDA does.
- Counted work: the trigger's metric (lagCount / pendingEntriesCount / streamLength, as KEDA)
  plus, for lagCount, pending entries idle longer than ``queue.claim_idle_s``: a dead
  activator's entries get a run to reclaim them, where KEDA would leave them stranded. The runs
  it creates get that same ``claim_idle_s``, stream and group as their ``queue`` parameter
  (``model.queue_contract``), so they reclaim exactly what was counted.
- At most the decided number of runs per decision: run ``i`` of decision ``n`` (numbered in
  this process) has the idempotency key ``pp-autoscaler/<instrument>/<session>/<n>/<i>``; a
  creation retried within the decision (``adapters.retry``, up to ``create_attempts`` tries)
  gets the same run back, never a second one. ``<session>`` is random
  per process, so a restarted autoscaler never collides with old keys. A decision's creations
  all end before that instrument's next decision counts the runs, so none is counted twice or
  missed. Unfinished runs stay within maxReplicaCount as far as KEDA's formula guarantees it from
  the counts (runs made by hand count too); ``set_work_pool_limit`` also makes the work pool
  enforce it.
- Outages: a Redis or Prefect error (or a deployment not registered yet) ends that
  instrument's decision with one log line; the decision (measured afresh) is retried after
  0.25 s, then twice as late each time up to the polling interval (a transient 503 costs a fraction
  of a second, an outage one log line per interval); the service never exits on them.
  Prefect calls fail fast (``prefect_timeout_s``, no client-side backoff); flow-run
  creations are retried within the decision (``create_attempts``).
- Not detected: a run whose process died without its Prefect worker noticing stays Running in
  Prefect and keeps counting, as a stuck Job does for KEDA; Prefect's zombie-run detection
  (flow-run heartbeats and its "mark Crashed" automation) is what retires it.
- Observability: every decision is one JSON log line with its inputs and outputs (INFO when
  it creates runs or differs from the instrument's previous decision, else DEBUG) and, on the
  same condition (or always, with ``emit_unchanged``), a Prefect event
  ``pp.autoscaler.decision`` on resource ``pp.autoscaler.<instrument>``. Events go to the
  process's PREFECT_API_URL (``pp autoscale`` sets it from the settings). A health key
  (``pp:autoscaler:health:<name>``, TTL ``health_ttl_s``) backs ``pp autoscale --check``.
- Shutdown: SIGTERM/SIGINT only set a flag; each loop finishes the decision in progress (no new
  creation retries start), then the service exits: within a second (one XREAD slice) plus one
  API timeout. Runs already created are left to run; nothing is cancelled. A decision loop that
  dies on a bug ends the service (the next tick raises it): a restart beats a silent instrument.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any
from uuid import UUID

import httpx
import redis
from prefect.events import emit_event
from prefect.exceptions import ObjectNotFound, PrefectException
from prefect.settings import PREFECT_API_URL

from prompt_processing.adapters import prefect_api
from prompt_processing.adapters.health import HealthKey
from prompt_processing.adapters.redis_client import make_redis
from prompt_processing.adapters.retry import OutageWatch
from prompt_processing.autoscaler.metrics import JobCounts, QueueMetrics, measure_queue
from prompt_processing.autoscaler.prefect_calls import PrefectCalls
from prompt_processing.autoscaler.rules import Decision, decide
from prompt_processing.autoscaler.spec import Metric, ScaledJobSpec
from prompt_processing.model import naming
from prompt_processing.model.queue_contract import QueueContract
from prompt_processing.services.lifecycle import serve
from prompt_processing.services.metrics import AutoscalerMetrics, MetricsServer
from prompt_processing.settings import Settings

log = logging.getLogger(__name__)

EVENT_NAME = "pp.autoscaler.decision"
TAGS = ("autoscaler",)
PREFECT_ERRORS = (httpx.HTTPError, PrefectException, OSError)
_MAX_BLOCK_S = 1.0  # longest single XREAD, so a stop request is seen within a second
_SUPERVISE_S = 1.0  # a tick waits this long for decisions before it refreshes the health key
_FIRST_RETRY_S = 0.25  # a failed decision is retried this soon, then 2x, 4x ... up to the polling interval


@dataclass(frozen=True, slots=True)
class Target:
    """A spec's deployment as the Prefect API knows it."""

    deployment_id: UUID
    work_pool: str | None


@dataclass(frozen=True)
class ScaleRecord:
    """One instrument's decision: what was measured, decided and done."""

    instrument: str
    deployment: str
    decision_no: int  # this process's decisions, counted from 1
    woken_by: str  # "entries", "interval" or "call"
    metric: Metric
    target: int
    queue: QueueMetrics
    jobs: JobCounts
    min_replica_count: int
    max_replica_count: int
    decision: Decision
    created: list[str] = field(default_factory=list)
    error: str | None = None
    measured_ms: float = 0.0
    at: float = field(default_factory=time.time)

    def payload(self) -> dict[str, Any]:
        """Inputs and outputs, flat, for the log line and the event."""
        queue = asdict(self.queue)
        return {
            "instrument": self.instrument, "deployment": self.deployment, "decision_no": self.decision_no,
            "woken_by": self.woken_by, "metric": self.metric, "target": self.target,
            "queue_length": self.queue.queue_length(self.metric),
            **{k: v for k, v in queue.items() if k != "tail_id"},
            "running_jobs": self.jobs.running, "pending_jobs": self.jobs.pending,
            "min_replica_count": self.min_replica_count, "max_replica_count": self.max_replica_count,
            **asdict(self.decision), "created": len(self.created), "created_run_ids": self.created,
            "error": self.error, "measured_ms": round(self.measured_ms, 2), "at": self.at,
        }  # fmt: skip

    def same_as(self, other: ScaleRecord | None) -> bool:
        """Same inputs and outputs as ``other`` (numbering, timing and wake-up cause aside)."""
        if other is None:
            return False
        ignored = ("decision_no", "woken_by", "measured_ms", "at", "created_run_ids")
        mine, theirs = self.payload(), other.payload()
        return all(mine[k] == theirs[k] for k in mine if k not in ignored)


class Autoscaler:
    """Creates activator flow runs from the instrument streams' backlog, per spec."""

    def __init__(self, settings: Settings, specs: Sequence[ScaledJobSpec], *, name: str | None = None) -> None:
        if not specs:
            raise ValueError("the autoscaler needs at least one spec")
        self.settings = settings
        self.config = settings.autoscaler
        self.specs = tuple(specs)
        self.name = name or self.config.name or socket.gethostname()
        self.session = uuid.uuid4().hex[:12]
        self.should_exit = False
        self.decisions_made = 0
        self.last: dict[str, ScaleRecord] = {}
        self._decision_lock = threading.Lock()
        self._records: queue.SimpleQueue[ScaleRecord | None] = queue.SimpleQueue()
        self._loops: list[threading.Thread] = []
        self._loop_error: BaseException | None = None
        self._resources = ExitStack()
        self._redis = make_redis(settings.redis, settings.retry, name=f"autoscaler-{self.name}")
        self._prefect = PrefectCalls(prefect_api.client_settings(settings), timeout_s=self.config.prefect_timeout_s,
                                     max_in_flight=self.config.create_concurrency, retry=settings.retry)  # fmt: skip
        self._targets: dict[str, Target] = {}
        self._tails: dict[str, str] = {}
        self._next_poll = {s.instrument: 0.0 for s in self.specs}
        self._failures = {s.instrument: 0 for s in self.specs}
        self._pool_limits_set = not self.config.set_work_pool_limit
        self.health_key = HealthKey(self._redis, "autoscaler", self.name, ttl_s=self.config.health_ttl_s)
        self.outages = OutageWatch(settings.retry.outage_alarm_s)
        self.metrics = AutoscalerMetrics()
        self._metrics_server = MetricsServer(self.metrics.registry)
        self.metrics_port: int | None = None  # bound by startup

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; return the process exit code."""
        return serve(self)

    def startup(self) -> None:
        """Open the Prefect client (fast-failing: no client-side retries)."""
        events_url = PREFECT_API_URL.value()
        if events_url != self.settings.prefect.url:
            log.warning("decision events go to PREFECT_API_URL=%s, not %s", events_url, self.settings.prefect.url)
        self._prefect.start()
        self._resources.callback(self._prefect.close)
        names = ", ".join(f"{s.instrument} -> {s.deployment} ({s.scaling_strategy}, {s.min_replica_count}.."
                          f"{s.max_replica_count}, every {s.polling_interval_s:g} s)" for s in self.specs)  # fmt: skip
        wake = "on new entries and " if self.config.wake_on_entries else ""
        log.info("autoscaler %s (session %s) scales %s %son its polling interval", self.name, self.session, names, wake)
        m = self.settings.metrics
        if m.enabled:
            self.metrics_port = self._metrics_server.start(m.host, m.autoscaler_port)
            self._resources.callback(self._metrics_server.stop)

    def request_exit(self) -> None:
        """Stop after the decisions in progress; safe from signal handlers and other threads."""
        self.should_exit = True
        self._records.put(None)  # wakes a waiting tick

    def shutdown(self) -> None:
        self.request_exit()
        for thread in self._loops:
            thread.join(timeout=_MAX_BLOCK_S + self.config.prefect_timeout_s + 5)
        self.health_key.delete()
        self._resources.close()
        self._redis.close()
        log.info("autoscaler %s stopped after %d decisions", self.name, self.decisions_made)

    # -- one tick --------------------------------------------------------------------------------

    def tick(self) -> list[ScaleRecord]:
        """Supervise the decision loops (started by the first tick): set the work pools' limits, wait up
        to a second for decisions, refresh the health key; the decisions made since the last tick.
        Raises the error a decision loop died of."""
        if not self._pool_limits_set:
            self._set_pool_limits()
        if not self._loops:
            self._loops = [threading.Thread(target=self._decision_loop, args=(spec,), daemon=True,
                                            name=f"autoscaler-{spec.instrument}") for spec in self.specs]  # fmt: skip
            for thread in self._loops:
                thread.start()
        records: list[ScaleRecord] = []
        try:
            item = self._records.get(timeout=_SUPERVISE_S)
            while True:
                if item is not None:
                    records.append(item)
                item = self._records.get_nowait()
        except queue.Empty:
            pass
        if self._loop_error is not None:
            raise RuntimeError("an autoscaler decision loop died") from self._loop_error
        self.health_key.refresh(self._health)
        return records

    def _decision_loop(self, spec: ScaledJobSpec) -> None:
        """One instrument's loop: wait for new entries or its next due poll, then decide."""
        # The wake-up connection blocks in XREAD for up to _MAX_BLOCK_S: its timeout outlasts that.
        wake = make_redis(self.settings.redis, self.settings.retry, name=f"autoscaler-{self.name}-{spec.instrument}",
                          socket_timeout_s=_MAX_BLOCK_S + self.settings.redis.socket_timeout_s)  # fmt: skip
        try:
            while not self.should_exit:
                woken = self._wait(spec, wake)
                now = time.monotonic()
                if self.should_exit or (not woken and now < self._next_poll[spec.instrument]):
                    continue
                record = self.scale(spec, woken_by="entries" if woken else "interval")
                failed = record is None or record.error is not None
                self._next_poll[spec.instrument] = now + self._retry_after_s(spec, failed=failed)
                if record is not None:
                    self._records.put(record)
        except BaseException as exc:
            log.exception("autoscaler %s: decision loop died; the service stops", spec.instrument)
            self._loop_error = exc
            self.request_exit()
        finally:
            wake.close()

    def scale(self, spec: ScaledJobSpec, *, woken_by: str = "call") -> ScaleRecord | None:
        """Measure, decide and create runs for one spec; None if Redis or Prefect failed."""
        with self._decision_lock:
            self.decisions_made += 1
            decision_no, started = self.decisions_made, time.perf_counter()
        contract = self.contract(spec)
        try:
            queue = measure_queue(self._redis, spec.stream, spec.consumer_group,
                                  claim_idle_s=contract.claim_idle_s,
                                  scan_limit=self.config.stale_scan_limit)  # fmt: skip
        except redis.RedisError as exc:
            self.outages.failed("redis", exc)
            log.error("autoscaler %s: Redis unavailable (%s); retrying next tick", spec.instrument, exc)
            return None
        self.outages.recovered("redis")
        self._tails[spec.stream] = queue.tail_id
        try:
            target = self._target(spec)
            jobs = self._prefect.count_jobs(target.deployment_id)
        except PREFECT_ERRORS as exc:
            self._prefect_failed(spec, exc)
            return None
        self.outages.recovered("prefect")
        measured_ms = (time.perf_counter() - started) * 1e3
        decision = decide(
            spec.scaling_strategy, queue.queue_length(spec.metric), spec.target, jobs.running, jobs.pending,
            spec.min_replica_count, spec.max_replica_count, queue_length_deduction=spec.queue_length_deduction,
            running_job_percentage=spec.running_job_percentage, activation_threshold=spec.metadata.activation_lag_count,
        )  # fmt: skip
        created, error = self._create_runs(spec, target, contract, decision.new_jobs, decision_no)
        record = ScaleRecord(
            spec.instrument, spec.deployment, decision_no, woken_by, spec.metric, spec.target, queue, jobs,
            spec.min_replica_count, spec.max_replica_count, decision, created, error, measured_ms,
        )  # fmt: skip
        self._report(record)
        return record

    # -- steps -----------------------------------------------------------------------------------

    def _wait(self, spec: ScaledJobSpec, wake: redis.Redis) -> bool:
        """Block until ``spec``'s next due poll or, with ``wake_on_entries``, a new entry; True if woken."""
        timeout_s = self._next_poll[spec.instrument] - time.monotonic()
        if timeout_s <= 0.0005:
            return False
        if not self.config.wake_on_entries:
            time.sleep(min(timeout_s, _MAX_BLOCK_S))
            return False
        try:
            block_ms = max(1, int(min(timeout_s, _MAX_BLOCK_S) * 1000))
            reply: Any = wake.xread({spec.stream: self._tails.get(spec.stream, "$")}, count=1, block=block_ms)
        except redis.RedisError as exc:
            log.error("autoscaler %s: wake-up read failed (%s); polling only until Redis is back", spec.instrument, exc)
            time.sleep(min(timeout_s, 1.0))
            return False
        for _stream, entries in reply or []:
            newest = entries[-1][0]
            self._tails[spec.stream] = newest.decode() if isinstance(newest, bytes) else newest
            return True
        return False

    def _retry_after_s(self, spec: ScaledJobSpec, *, failed: bool) -> float:
        """The polling interval; after a failed tick sooner (0.25 s, doubling up to the interval), so
        work whose wake-up was spent on a failed tick does not wait a whole interval."""
        failures = self._failures[spec.instrument] = self._failures[spec.instrument] + 1 if failed else 0
        if not failures:
            return spec.polling_interval_s
        backoff_s: float = _FIRST_RETRY_S * 2.0 ** min(failures - 1, 16)
        return min(spec.polling_interval_s, backoff_s)

    def _target(self, spec: ScaledJobSpec) -> Target:
        """The spec's deployment id and work pool (looked up once, again after it went missing)."""
        target = self._targets.get(spec.deployment)
        if target is None:
            target = Target(*self._prefect.deployment(spec.deployment))
            self._targets[spec.deployment] = target
        return target

    def contract(self, spec: ScaledJobSpec) -> QueueContract:
        """The work-queue contract of ``spec``'s instrument: what it measures, and what its runs get."""
        return QueueContract.for_instrument(spec.instrument, self.settings.queue, stream=spec.stream,
                                            consumer_group=spec.consumer_group)  # fmt: skip

    def _create_runs(
        self, spec: ScaledJobSpec, target: Target, contract: QueueContract, n: int, decision_no: int
    ) -> tuple[list[str], str | None]:
        """Create ``n`` runs concurrently, each retried under its own idempotency key; return (run ids, error)."""
        if n <= 0:
            return [], None
        keys = [f"pp-autoscaler/{spec.instrument}/{self.session}/{decision_no}/{i}" for i in range(n)]
        creation = self._prefect.create_runs(
            spec.instrument, target.deployment_id, keys, parameters=spec.parameters | {"queue": contract.model_dump()},
            tags=[*TAGS, naming.instrument_tag(spec.instrument)], attempts=self.config.create_attempts,
            give_up=lambda: self.should_exit, watch=self.outages,
        )  # fmt: skip
        if creation.error is not None:
            self._prefect_failed(spec, creation.error)
        return creation.run_ids, creation.summary()

    def _prefect_failed(self, spec: ScaledJobSpec, exc: BaseException) -> None:
        self.outages.failed("prefect", exc)
        gone = isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 404
        if isinstance(exc, ObjectNotFound) or gone:  # not deployed yet, or deleted since it was looked up
            self._targets.pop(spec.deployment, None)
            log.error("autoscaler %s: deployment %s not found (run `pp deploy`); retrying next tick",
                      spec.instrument, spec.deployment)  # fmt: skip
        else:
            log.error("autoscaler %s: Prefect API unavailable (%s: %s); retrying next tick",
                      spec.instrument, type(exc).__name__, exc)  # fmt: skip

    def _report(self, record: ScaleRecord) -> None:
        """The metrics; one JSON log line per decision; a Prefect event when it says something new."""
        self._measure(record)
        previous = self.last.get(record.instrument)
        self.last[record.instrument] = record
        news = bool(record.created or record.decision.new_jobs or record.error) or not record.same_as(previous)
        payload = record.payload()
        level = logging.INFO if news else logging.DEBUG
        log.log(level, "decision %s", json.dumps(payload), extra={"pp_decision": payload})
        if news or self.config.emit_unchanged:
            target = self._targets.get(record.deployment)
            related = [] if target is None else [{"prefect.resource.id": f"prefect.deployment.{target.deployment_id}",
                                                  "prefect.resource.role": "deployment"}]  # fmt: skip
            resource = {"prefect.resource.id": f"pp.autoscaler.{record.instrument.lower()}",
                        "prefect.resource.name": f"autoscaler {record.instrument}"}  # fmt: skip
            emit_event(event=EVENT_NAME, resource=resource, related=related, payload=payload)

    def _measure(self, record: ScaleRecord) -> None:
        m, instrument = self.metrics, record.instrument
        m.lag.labels(instrument).set(record.queue.lag)
        m.pending.labels(instrument).set(record.queue.pending)
        m.stale.labels(instrument).set(record.queue.stale_pending)
        m.length.labels(instrument).set(record.queue.stream_length)
        m.runs.labels(instrument, "unfinished").set(record.jobs.running)
        m.runs.labels(instrument, "not started").set(record.jobs.pending)
        m.created.labels(instrument).inc(len(record.created))
        m.decision.labels(instrument).observe(record.measured_ms / 1e3)

    def _set_pool_limits(self) -> None:
        """Each work pool's concurrency limit := sum of maxReplicaCount of the specs using it."""
        limits: dict[str, int] = {}
        try:
            for spec in self.specs:
                pool = self._target(spec).work_pool
                if pool is not None:
                    limits[pool] = limits.get(pool, 0) + spec.max_replica_count
            for pool, limit in limits.items():
                self._prefect.set_pool_limit(pool, limit)
                log.info("work pool %s: concurrency limit set to %d", pool, limit)
        except PREFECT_ERRORS as exc:
            log.error("could not set work-pool concurrency limits (%s); retrying next tick", exc)
            return
        self._pool_limits_set = True

    def _health(self) -> dict[str, Any]:
        last = dict(self.last)  # a copy: the decision loops add their first records to it meanwhile
        return {"session": self.session, "decisions_made": self.decisions_made,
                "decisions": {k: r.payload() for k, r in last.items()}, **self.outages.snapshot()}  # fmt: skip
