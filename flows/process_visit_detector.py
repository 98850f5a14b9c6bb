"""The ``process-visit-detector`` flow: one visit-detector as its own flow run, for manual reruns.

Deployed as ``process-visit-detector/rerun`` (``pp rerun``). An operator reruns a failed
visit-detector with only (instrument, group, detector): the NextVisit event is read back from
the record the fan-out kept (``pp:visit:<instrument>:<group>``, kept for ``dedup_ttl_s``), or
given in full as ``visit``. Alerts already published are never sent again (the run completes as
ignored). Settings (addresses, step limits) come from the run's own ``PP_*`` environment.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from prefect import flow, get_run_logger

from prompt_processing.activator.context import ProcessingContext
from prompt_processing.model import naming
from prompt_processing.model.errors import NonRetriableError
from prompt_processing.model.events import NextVisit
from prompt_processing.settings import Settings
from tasks.visit import run_visit_detector


@flow(name=naming.PROCESS_VISIT_DETECTOR_FLOW, flow_run_name="{instrument}-{group}-det{detector:03d}")
def process_visit_detector(
    instrument: str, group: str, detector: int, visit: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Preload, wait for images, process and publish one visit-detector; returns the outcome."""
    settings = Settings()
    ctx = ProcessingContext(settings, name=f"rerun-{socket.gethostname()}")
    try:
        event = NextVisit.from_json(json.dumps(visit)) if visit is not None else _recorded_visit(ctx, instrument, group)
        outcome = run_visit_detector(ctx, event, detector)
    finally:
        ctx.close()
    get_run_logger().info("%s %s det%03d: %s %s", instrument, group, detector, outcome.status, outcome.reason)
    return outcome.record()


def _recorded_visit(ctx: ProcessingContext, instrument: str, group: str) -> NextVisit:
    raw = ctx.redis.get(naming.visit_key(instrument, group))
    if raw is None:
        raise NonRetriableError(
            f"no record of visit {group} of {instrument} (fanned out more than dedup_ttl_s ago, or never): "
            "pass the NextVisit event as the `visit` parameter"
        )
    return NextVisit.from_json(raw)
