"""The ``activator`` flow: a warm worker as one long-lived flow run (deployments ``activator/activator-<instrument>``).

Loop: reclaim an entry a dead activator left (idle > ``claim_idle_s``) or read a new one with
BLOCK -> run it as the ``visit-detector`` task (one task run per visit-detector, named
``<instrument>-<group>-det<NNN>``) -> acknowledge when the outcome is final; an attempt that
failed retriably is handed back to be retried later by any activator (backoff). Exits after
``idle_timeout_s`` without work or ``max_visits`` visits. Delivery guarantees: see
``prompt_processing/activator/queue.py``.

Cancellation and shutdown: SIGTERM or SIGINT (what a Prefect worker sends when the run is
cancelled in the UI, and what Kubernetes sends when the pod is deleted) stops the loop: a visit
still waiting for its images is handed back at once, one already being processed is finished
(the pod's grace period must cover one visit), pending entries are handed back, and the run
ends Cancelled with the counts as its message.

Parameters: ``queue``, the work-queue contract (stream, group, ``claim_idle_s``,
``max_deliveries``), comes from the autoscaler that created the run, so both count the same
entries as abandoned; without it (a run started by hand) it is built from this run's
``PP_QUEUE__*`` settings. Everything else comes from the run's own ``PP_*`` environment.

What an operator sees: the run is named ``activator-<instrument>-<host>-<run id>``; each outcome
is one log line, one event and one keyed artifact (``tasks/outcome.py``); the run ends Completed,
named ``Completed``, ``Idle`` (it processed nothing) or ``<n> failed`` with the counts as its
message, and is tagged ``busy`` or ``idle`` so idle runs can be filtered out. Visit-detector
failures are counted once, on their own task runs, not again on the activator.
"""

from __future__ import annotations

import functools
import signal
import socket
import threading
import time
from types import FrameType

import redis
from prefect import Task, flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed

from prompt_processing.activator.context import ProcessingContext
from prompt_processing.activator.queue import WorkItem, WorkQueue
from prompt_processing.model import naming
from prompt_processing.model.events import NextVisit
from prompt_processing.model.queue_contract import QueueContract
from prompt_processing.settings import Settings
from tasks.logs import configure_run_logging
from tasks.outcome import VisitOutcome, add_run_tags
from tasks.visit import visit_detector_task

COUNTS = ("succeeded", "ignored", "failed", "handed_back", "lost")


def activator_run_name() -> str:
    """``activator-<instrument>-<host>-<run id, 8 chars>``: which pod (host) runs which instrument."""
    instrument = flow_run.parameters.get("instrument", "unknown")
    return f"activator-{instrument}-{socket.gethostname()}-{(flow_run.get_id() or 'local')[:8]}"


@flow(name=naming.ACTIVATOR_FLOW, flow_run_name=activator_run_name)
def activator(
    instrument: str,
    queue: QueueContract | None = None,
    max_visits: int | None = None,
    idle_timeout_s: float | None = None,
) -> State[dict[str, int]]:
    """Process visit-detectors of ``instrument`` until idle or ``max_visits``; the counts are the result.

    Args:
        instrument: The camera whose stream (`instrument:<name>`) this activator reads.
        queue: The work-queue contract (stream, group, claim_idle_s, max_deliveries); the autoscaler
            sets it. Leave it empty in a run started by hand: it is built from PP_QUEUE__*.
        max_visits: Stop after this many visit-detectors (empty: PP_ACTIVATOR__MAX_VISITS).
        idle_timeout_s: Stop after this many seconds without work (empty: PP_ACTIVATOR__IDLE_TIMEOUT_S).
    """
    settings = Settings()
    a = settings.activator
    contract = queue or QueueContract.for_instrument(instrument, settings.queue)
    name = f"{socket.gethostname()}-{(flow_run.get_id() or 'local')[:8]}"
    ctx = ProcessingContext(settings, name)
    work = WorkQueue(ctx.redis, instrument, name, contract, block_s=a.block_s,
                     results_retention_s=settings.visit.results_retention_s, retry=settings.retry)  # fmt: skip
    configure_run_logging(settings)
    signals = _stop_on_sigterm(ctx)
    counts = dict.fromkeys(COUNTS, 0)
    limit, idle_limit_s = max_visits or a.max_visits, idle_timeout_s or a.idle_timeout_s
    work.persistently("group check", work.ensure_group)
    last_work = time.monotonic()
    try:
        while not ctx.stopping.is_set() and sum(counts.values()) < limit:
            item = work.next()
            if item is None:
                if time.monotonic() - last_work > idle_limit_s:
                    break
                continue
            counts[_run_one(ctx, work, item)] += 1
            last_work = time.monotonic()
    finally:
        counts["handed_back"] += _close(work)
        ctx.close()
    return _final_state(counts, signals)


def _run_one(ctx: ProcessingContext, queue: WorkQueue, item: WorkItem) -> str:
    """Run one entry; record and acknowledge final outcomes, hand back the rest. Returns the count to bump."""
    visit, detector = item.entry.visit, item.entry.detector
    picked_up_at, start = time.time(), time.perf_counter()
    visit_task = _tagged_task(visit.instrument) if ctx.settings.visit.tag_task_runs else visit_detector_task
    with queue.holding(item) as lease:
        ctx.lease = lease
        try:
            state = visit_task(ctx, visit, detector, item.deliveries, return_state=True)
        finally:
            ctx.lease = None
    wall_s = time.perf_counter() - start
    outcome = state.result(raise_on_failure=False)
    _forget_task_results()
    logger = get_run_logger()
    if lease.lost.is_set():  # another activator may be on it: record nothing, hand back nothing
        logger.warning("%s %s det%03d: entry lost to another activator; left to it", visit.instrument,
                       visit.groupId, detector)  # fmt: skip
        return "lost"
    if not isinstance(outcome, VisitOutcome):  # a retriable error that outlasted the retries, or a bug
        delay_s = 0.0 if ctx.stopping.is_set() else queue.retry_delay_s(item.deliveries)
        label = f"{visit.instrument} {visit.groupId} det{detector:03d}"
        logger.warning(hand_back_line(label, outcome, item.deliveries, queue.max_deliveries, delay_s))
        try:
            queue.persistently("hand-back", lambda: queue.hand_back([item.entry_id], delays_s=[delay_s]))
        except redis.RedisError as exc:  # it stays pending: reclaimed after claim_idle_s
            logger.warning("could not hand back %s (%s); it is reclaimed after claim_idle_s", item.entry_id, exc)
        return "handed_back"
    timing = {"pickup_ms": (outcome.started_at or picked_up_at) * 1e3 - item.queued_at_ms, "wall_s": wall_s,
              "overhead_s": outcome.overhead_s + wall_s - outcome.total_s}  # fmt: skip
    try:
        recorded = queue.persistently("finish", lambda: queue.finish(item, outcome.record() | timing))
    except redis.RedisError as exc:  # redelivered after claim_idle_s; the alerts ledger makes it "already done"
        logger.error("outcome of %s not recorded (%s); the entry is redelivered", item.entry_id, exc)
        return "lost"
    return outcome.status if recorded else "lost"


def hand_back_line(label: str, outcome: object, deliveries: int, max_deliveries: int, delay_s: float) -> str:
    """The log line of an entry handed back not final after its ``deliveries``-th attempt: when it is tried
    again, or, after the last attempt ``max_deliveries`` allows, that its next claim dead-letters it."""
    if deliveries >= max_deliveries:
        return (f"{label} not final ({outcome!r}) after attempt {deliveries} of {max_deliveries}; handed back, "
                "dead-lettered when next claimed (max_deliveries reached)")  # fmt: skip
    return (f"{label} not final ({outcome!r}); handed back, retried in {delay_s:.1f} s (attempt {deliveries + 1} "
            f"of {max_deliveries})")  # fmt: skip


def _forget_task_results() -> None:
    """Drop Prefect's in-memory links from the finished visit-detector's results to their task runs.

    A flow run keeps every task result it saw (``run_results``: ~30 entries per visit-detector, counted
    by the memory soak's diagnosis, each holding a state and its result alive) to link a later task's inputs
    to upstream runs. No later task of an activator takes them as inputs, so nothing is lost, and the
    mapping no longer grows with every visit an activator run processed."""
    context = FlowRunContext.get()
    if context is not None:
        context.run_results.clear()


@functools.cache
def _tagged_task(instrument: str) -> Task[[ProcessingContext, NextVisit, int, int], State[VisitOutcome]]:
    """The visit-detector task tagged ``instrument:<name>``, built once per instrument
    (``PP_VISIT__TAG_TASK_RUNS``).

    Prefect 3 checks each tagged task run's tags for concurrency limits through a client service
    per distinct set of tags. Measured: a tag set per visit-detector (group, detector) costs ~75 ms
    per visit-detector even on PostgreSQL and a service per visit; one shared set ~4 ms, with stalls
    of ~2 s on SQLite. So group and detector are in the task run's name (the UI's search), the
    artifact key and the event; reruns, which are flow runs, carry all three tags.
    """
    return visit_detector_task.with_options(tags=[naming.instrument_tag(instrument)])


def _close(work: WorkQueue) -> int:
    """Hand back what is pending and leave the group; with Redis away, leave it to be reclaimed."""
    try:
        return work.persistently("close", work.close)
    except redis.RedisError as exc:
        get_run_logger().warning("could not hand back pending entries (%s); reclaimed after claim_idle_s", exc)
        return 0


def _final_state(counts: dict[str, int], signals: list[int]) -> State[dict[str, int]]:
    """Cancelled if a signal stopped the run (cancelled in the UI, SIGTERM, pod deletion), else
    Completed, named for what an operator scans the runs list for; tagged busy or idle."""
    processed = sum(counts[k] for k in ("succeeded", "ignored", "failed"))
    message = ", ".join(f"{counts[k]} {k.replace('_', ' ')}" for k in COUNTS)
    add_run_tags(naming.ACTIVATOR_BUSY_TAG if processed or counts["handed_back"] else naming.ACTIVATOR_IDLE_TAG)
    if signals:
        get_run_logger().warning("activator stopped by signal %d: %s", signals[0], message)
        return Cancelled(message=f"stopped by signal {signals[0]}: {message}", data=counts)
    name = "Idle" if not processed else f"{counts['failed']} failed" if counts["failed"] else "Completed"
    get_run_logger().info("activator exits: %s", message)
    return Completed(name=name, message=message, data=counts)


def _stop_on_sigterm(ctx: ProcessingContext) -> list[int]:
    """SIGTERM/SIGINT only set a flag (the loop hands back or finishes the visit in hand); the list
    returned receives the signals caught."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        return caught

    def stop(signum: int, _frame: FrameType | None) -> None:
        caught.append(signum)
        ctx.stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    return caught
