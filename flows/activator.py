"""The ``activator`` flow: one warm worker, one long-lived flow run (deployment ``activator-<instrument>``).

Loop: reclaim an entry a dead worker left (idle > ``claim_idle_s``) or read a new one with
BLOCK -> run it as the ``process-visit`` task (one task run per visit-detector, named
``<instrument>-<group>-det<NNN>``) -> acknowledge when the outcome is final. Exits after
``idle_timeout_s`` without work or ``max_visits`` visits; SIGTERM finishes (or hands back)
the visit in hand first. Delivery guarantees: see ``prompt_processing/work.py``.
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

from prompt_processing.context import WorkerContext
from prompt_processing.errors import NonRetriableError
from prompt_processing.settings import Settings
from prompt_processing.work import WorkItem, WorkQueue
from tasks.visit import process_visit_task


@flow(name="activator", flow_run_name="activator-{instrument}")
def activator(instrument: str, max_visits: int | None = None, idle_timeout_s: float | None = None) -> dict[str, Any]:
    """Process visit-detectors of ``instrument`` until idle or ``max_visits``; return counts."""
    settings = Settings()
    w = settings.worker
    name = f"{socket.gethostname()}-{(flow_run.get_id() or 'local')[:8]}"
    ctx = WorkerContext(settings, name)
    queue = WorkQueue(ctx.redis, instrument, name, claim_idle_s=w.claim_idle_s, block_s=w.block_s,
                      max_deliveries=w.max_deliveries)  # fmt: skip
    _stop_on_sigterm(ctx)
    counts = {"succeeded": 0, "ignored": 0, "failed": 0, "handed_back": 0}
    limit, idle_limit_s = max_visits or w.max_visits, idle_timeout_s or w.idle_timeout_s
    queue.ensure_group()
    last_work = time.monotonic()
    try:
        while not ctx.stopping.is_set() and sum(counts.values()) < limit:
            item = queue.next()
            if item is None:
                if time.monotonic() - last_work > idle_limit_s:
                    break
                continue
            counts[_run_one(ctx, queue, item)] += 1
            last_work = time.monotonic()
    finally:
        counts["handed_back"] += queue.close()
        ctx.close()
    get_run_logger().info("activator %s exits: %s", name, counts)
    return counts


def _run_one(ctx: WorkerContext, queue: WorkQueue, item: WorkItem) -> str:
    """Run one entry; acknowledge final outcomes, hand back the rest. Returns the count to bump."""
    visit, detector = item.entry.visit, item.entry.detector
    base = {"group": visit.groupId, "detector": detector, "worker": ctx.name, "deliveries": item.deliveries}
    picked_up_at, start = time.time(), time.perf_counter()
    with queue.holding(item):
        state = process_visit_task(ctx, visit, detector, return_state=True)
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
    queue.hand_back([item.entry_id])  # retried by the next read of any worker, up to max_deliveries
    return "handed_back"


def _stop_on_sigterm(ctx: WorkerContext) -> None:
    """SIGTERM/SIGINT only set a flag; the loop finishes or hands back the visit in hand."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, _frame: FrameType | None) -> None:
        ctx.stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
