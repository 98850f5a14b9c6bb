"""The ``activator`` flow: a warm worker as one long-lived flow run (deployments ``activator/activator-<instrument>``).

Loop: reclaim an entry a dead activator left (idle > ``claim_idle_s``) or read a new one with
BLOCK -> run it as the ``visit-detector`` task (one task run per visit-detector, named
``<instrument>-<group>-det<NNN>``) -> acknowledge when the outcome is final. Exits after
``idle_timeout_s`` without work or ``max_visits`` visits; SIGTERM finishes (or hands back)
the visit in hand first. Delivery guarantees: see ``prompt_processing/activator/queue.py``.

Parameters: ``queue``, the work-queue contract (stream, group, ``claim_idle_s``,
``max_deliveries``), comes from the autoscaler that created the run, so both count the same
entries as abandoned; without it (a run started by hand) it is built from this run's
``PP_QUEUE__*`` settings. Everything else comes from the run's own ``PP_*`` environment.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from types import FrameType
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from prompt_processing.activator.context import ProcessingContext
from prompt_processing.activator.queue import WorkItem, WorkQueue
from prompt_processing.model import naming
from prompt_processing.model.errors import NonRetriableError
from prompt_processing.model.queue_contract import QueueContract
from prompt_processing.settings import Settings
from tasks.visit import visit_detector_task


@flow(name=naming.ACTIVATOR_FLOW, flow_run_name="activator-{instrument}")
def activator(
    instrument: str,
    queue: QueueContract | None = None,
    max_visits: int | None = None,
    idle_timeout_s: float | None = None,
) -> dict[str, Any]:
    """Process visit-detectors of ``instrument`` until idle or ``max_visits``; return counts.

    ``queue``: the work-queue contract (set by the autoscaler); ``max_visits`` and
    ``idle_timeout_s`` override ``PP_ACTIVATOR__*`` for this run.
    """
    settings = Settings()
    a = settings.activator
    contract = queue or QueueContract.for_instrument(instrument, settings.queue)
    name = f"{socket.gethostname()}-{(flow_run.get_id() or 'local')[:8]}"
    ctx = ProcessingContext(settings, name)
    work = WorkQueue(ctx.redis, instrument, name, contract, block_s=a.block_s)
    _stop_on_sigterm(ctx)
    counts = {"succeeded": 0, "ignored": 0, "failed": 0, "handed_back": 0}
    limit, idle_limit_s = max_visits or a.max_visits, idle_timeout_s or a.idle_timeout_s
    work.ensure_group()
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
        counts["handed_back"] += work.close()
        ctx.close()
    get_run_logger().info("activator %s exits: %s", name, counts)
    return counts


def _run_one(ctx: ProcessingContext, queue: WorkQueue, item: WorkItem) -> str:
    """Run one entry; acknowledge final outcomes, hand back the rest. Returns the count to bump."""
    visit, detector = item.entry.visit, item.entry.detector
    base = {"group": visit.groupId, "detector": detector, "processed_by": ctx.name, "deliveries": item.deliveries}
    picked_up_at, start = time.time(), time.perf_counter()
    with queue.holding(item):
        state = visit_detector_task(ctx, visit, detector, return_state=True)
    wall_s = time.perf_counter() - start
    if state.is_completed():
        outcome = state.result()
        timing = {"pickup_ms": outcome.started_at * 1e3 - item.queued_at_ms, "wall_s": wall_s,
                  "overhead_s": outcome.overhead_s + wall_s - outcome.total_s}  # fmt: skip
        queue.finish(item, base | outcome.record() | timing)
        return str(outcome.status)
    error = state.result(raise_on_failure=False)
    if isinstance(error, NonRetriableError):
        queue.finish(item, base | {"status": "failed", "reason": str(error), "started_at": picked_up_at})
        return "failed"
    get_run_logger().warning("%s det%03d not final (%r); handed back", visit.groupId, detector, error)
    queue.hand_back([item.entry_id])  # retried by the next read of any activator, up to max_deliveries
    return "handed_back"


def _stop_on_sigterm(ctx: ProcessingContext) -> None:
    """SIGTERM/SIGINT only set a flag; the loop finishes or hands back the visit in hand."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, _frame: FrameType | None) -> None:
        ctx.stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
