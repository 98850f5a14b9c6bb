"""One visit-detector, start to finish: preload -> wait_for_images -> process -> publish.

Three names, three things:

* ``run_visit_detector`` (this module): the plain function that runs the four steps.
* the ``visit-detector`` task (``visit_detector_task``): how the activator runs it. Inside the
  activator's long-lived flow run each visit-detector is one task run named
  ``<instrument>-<group>-det<NNN>`` with its four steps nested under it: visible in the UI at
  task-run cost (~10 ms per run) instead of a subflow's ~0.4-2.5 s.
* the ``process-visit-detector`` flow (``flows/process_visit_detector.py``): one flow run per
  visit-detector, deployed as ``process-visit-detector/rerun`` for manual reruns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.events import emit_event
from prefect.utilities.context import get_task_and_flow_run_ids

from prompt_processing.activator.context import ProcessingContext, StepClock
from prompt_processing.model import naming
from prompt_processing.model.errors import IgnorableVisit
from prompt_processing.model.events import NextVisit
from tasks.common import with_step_options
from tasks.preload import preload
from tasks.process import process
from tasks.publish import publish
from tasks.wait_for_images import wait_for_images


@dataclass
class VisitOutcome:
    """What happened to one visit-detector; timings in seconds."""

    instrument: str
    group: str
    detector: int
    status: str  # "succeeded" or "ignored"
    reason: str = ""
    n_alerts: int = 0
    landed_at: str = ""
    alerts_sent_at: float = 0.0
    started_at: float = 0.0
    total_s: float = 0.0
    steps_s: dict[str, float] = field(default_factory=dict)

    @property
    def overhead_s(self) -> float:
        """All but image compute and waiting for the image inside this call: Prefect, Redis, S3
        and Kafka I/O. (The activator adds the cost of the task run around it.)"""
        return self.total_s - self.steps_s.get("process", 0.0) - self.steps_s.get("wait", 0.0)

    def record(self) -> dict[str, Any]:
        return asdict(self) | {"overhead_s": self.overhead_s}


def run_visit_detector(ctx: ProcessingContext, visit: NextVisit, detector: int) -> VisitOutcome:
    """Process one visit-detector; never alerts twice for the same one.

    Returns the outcome (``ignored`` when it was already published). Raises RetriableError,
    NonRetriableError (ImageTimeout among them) or an unexpected error; the caller decides
    what happens to the work entry.
    """
    started_at, start = time.time(), time.perf_counter()
    outcome = VisitOutcome(visit.instrument, visit.groupId, detector, "succeeded", started_at=started_at)
    try:
        if ctx.redis.exists(naming.published_key(visit.instrument, visit.groupId, detector)):
            raise IgnorableVisit("alerts already published for this visit-detector")
        clock, v = StepClock(), ctx.settings.visit
        label = f"{visit.instrument} {visit.groupId} det{detector:03d}"
        calibs = with_step_options(preload, v)(ctx, clock, visit.instrument, detector, *visit.position)
        raws = with_step_options(wait_for_images, v)(
            ctx, clock, visit.instrument, visit.groupId, detector, visit.nimages, visit.startTime, visit.duration
        )
        result = process(clock, raws.images, calibs, label)
        published = with_step_options(publish, v)(ctx, clock, visit, detector, result)
    except IgnorableVisit as exc:
        outcome.status, outcome.reason = "ignored", str(exc)
        outcome.total_s = time.perf_counter() - start
        return outcome
    outcome.n_alerts, outcome.alerts_sent_at = published.n_alerts, published.sent_at_utc
    outcome.landed_at = raws.landed_at[-1]
    outcome.steps_s = clock.seconds
    outcome.total_s = time.perf_counter() - start
    _report(ctx, outcome, published.outputs)
    return outcome


visit_detector_task = task(
    name=naming.VISIT_DETECTOR_TASK,
    task_run_name="{visit.instrument}-{visit.groupId}-det{detector:03d}",
    cache_policy=NO_CACHE,
)(run_visit_detector)


def _report(ctx: ProcessingContext, outcome: VisitOutcome, outputs: list[str]) -> None:
    """A Prefect event, and a markdown artifact with the per-step timings on this task run.

    The artifact is written by the run's reporter thread, off the visit's critical path;
    ``ProcessingContext.close`` waits for it.
    """
    resource = f"pp.visit.{outcome.instrument}.{outcome.group}.{outcome.detector:03d}"
    emit_event(
        event="pp.visit.published",
        resource={"prefect.resource.id": resource, "pp.instrument": outcome.instrument},
        payload=outcome.record(),
    )
    rows = "\n".join(f"| {step} | {seconds * 1e3:.1f} |" for step, seconds in outcome.steps_s.items())
    task_run_id, flow_run_id = get_task_and_flow_run_ids()
    artifact = ArtifactCreate(
        type="markdown",
        data=(
            f"### {outcome.instrument} {outcome.group} detector {outcome.detector:03d}\n\n"
            f"{outcome.n_alerts} alerts sent; image landed {outcome.landed_at}.\n\n"
            f"| step | ms |\n|---|---:|\n{rows}\n| orchestration and I/O | {outcome.overhead_s * 1e3:.1f} |\n"
            f"| **total** | **{outcome.total_s * 1e3:.1f}** |\n\n" + "\n".join(f"- `{uri}`" for uri in outputs)
        ),
        description=f"timings of {resource}",
        task_run_id=task_run_id,
        flow_run_id=flow_run_id,
    )
    ctx.reporter.submit(_create_artifact, artifact)


def _create_artifact(artifact: ArtifactCreate) -> None:
    try:
        with get_client(sync_client=True) as client:
            client.create_artifact(artifact)
    except Exception as exc:  # a report must never fail a visit that already succeeded
        logging.getLogger(__name__).warning("artifact not written: %s", exc)
