"""A visit-detector's outcome, and how it is shown to operators: state, event, log line, artifact.

Every outcome is final and one of ``succeeded``, ``ignored`` (nothing to do, e.g. already
published) or ``failed`` (the reason says why; the step it stopped in is named). Wherever it was
processed (an activator, a rerun), the same outcome gives:

* a Prefect state (``outcome_state``): Completed; Completed named ``Ignored``; Failed with the
  reason as its message (no traceback: a final failure is an outcome, not a crash);
* one event ``pp.visit.published`` / ``pp.visit.ignored`` / ``pp.visit.failed`` on resource
  ``pp.visit.<instrument>.<group>.<detector>`` with the whole record (an Automation can react);
* one log line with instrument, group, detector, outcome, reason and latency;
* a markdown artifact keyed ``visit-<instrument>-<group>-det<NNN>`` (its latest version is the
  latest outcome) with the reason, step timings, outputs and a pre-filled rerun link.

Events and artifacts go out on the run's reporter thread, off the critical path; a report that
cannot be written is logged, never fails the visit-detector.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.objects import State
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.settings import PREFECT_UI_URL
from prefect.states import Completed, Failed

from prompt_processing.activator.context import ProcessingContext
from prompt_processing.adapters import prefect_api, results
from prompt_processing.model import naming
from prompt_processing.model.errors import NonRetriableError

Status = Literal["succeeded", "ignored", "failed"]
IGNORED = "Ignored"
EVENTS: dict[str, str] = {"succeeded": "pp.visit.published", "ignored": "pp.visit.ignored", "failed": "pp.visit.failed"}

log = logging.getLogger(__name__)


@dataclass
class VisitOutcome:
    """What happened to one visit-detector, as recorded in the results stream; timings in seconds."""

    instrument: str
    group: str
    detector: int
    status: Status
    day_obs: str = ""
    reason: str = ""
    error: str = ""  # a failure's error type (ImageTimeout, ObjectMissing, ...): what reports group by
    stopped_at: str = ""  # the step a failure stopped in
    deliveries: int = 1
    n_alerts: int = 0
    landed_at: str = ""
    alerts_sent_at: float = 0.0
    started_at: float = 0.0
    total_s: float = 0.0
    steps_s: dict[str, float] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    pipeline: str = ""  # the pipeline that ran (ApPipe, or a fallback); "" if none did
    not_built: list[str] = field(default_factory=list)  # pipelines tried before it, each with why it was not built
    pipeline_s: dict[str, float] = field(default_factory=dict)  # graph build, each task, the executor's overhead
    processed_by: str = ""
    task_run_id: str = ""
    flow_run_id: str = ""
    rerun_of: str = ""
    max_rss_bytes: int = 0

    @property
    def overhead_s(self) -> float:
        """All but image compute and waiting for the image inside this call: Prefect, Redis, S3
        and Kafka I/O. (The activator adds the cost of the task run around it.)"""
        return self.total_s - self.steps_s.get("process", 0.0) - self.steps_s.get("wait", 0.0)

    @property
    def run_id(self) -> str:
        """The run that holds this outcome: its task run inside an activator, else its flow run."""
        return self.task_run_id or self.flow_run_id

    def record(self) -> dict[str, Any]:
        return asdict(self) | {"overhead_s": self.overhead_s}


def max_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def outcome_state(outcome: VisitOutcome, *, flow: bool = False) -> State[VisitOutcome]:
    """The run's final state for ``outcome``; the outcome itself is the state's result, but for a
    failed flow run, whose result must be an exception (``NonRetriableError`` with the reason)."""
    if outcome.status == "failed":
        where = f" (stopped in {outcome.stopped_at})" if outcome.stopped_at else ""
        message = f"{outcome.reason}{where}"
        return Failed(message=message, data=NonRetriableError(message) if flow else outcome)
    if outcome.status == "ignored":
        return Completed(name=IGNORED, message=outcome.reason, data=outcome)
    return Completed(message=f"{outcome.n_alerts} alerts sent", data=outcome)


def report_outcome(
    ctx: ProcessingContext, outcome: VisitOutcome, logger: logging.Logger | logging.LoggerAdapter[Any]
) -> None:
    """The outcome's log line now; its event and artifact on the reporter thread."""
    logger.log(logging.ERROR if outcome.status == "failed" else logging.INFO, outcome_line(outcome),
               extra={"pp_visit": _log_fields(outcome)})  # fmt: skip
    ctx.reporter.submit(_publish_report, ctx, outcome)


def outcome_line(outcome: VisitOutcome) -> str:
    """``LSSTCam <group> det094 succeeded: 5 alerts, landed -> alerts 0.41 s`` and the like."""
    head = f"{outcome.instrument} {outcome.group} det{outcome.detector:03d} {outcome.status}"
    if outcome.status == "succeeded":
        return (f"{head} ({outcome.pipeline}): {outcome.n_alerts} alerts, "
                f"landed -> alerts {landed_to_alerts_s(outcome):.2f} s")  # fmt: skip
    where = f" in {outcome.stopped_at}" if outcome.stopped_at else ""
    return f"{head}{where}: {outcome.reason} (delivery {outcome.deliveries})"


def landed_to_alerts_s(outcome: VisitOutcome) -> float:
    """A succeeded outcome's latency: raw image landed -> alerts sent, seconds."""
    return results.landed_to_alerts_s({"landed_at": outcome.landed_at, "alerts_sent_at": str(outcome.alerts_sent_at)})


def rerun_link(ctx: ProcessingContext, outcome: VisitOutcome) -> str | None:
    """The UI's run form of the rerun deployment, pre-filled for this visit-detector; None if not deployed."""
    deployment_id = _rerun_deployment_id(ctx)
    if deployment_id is None:
        return None
    parameters = {"instrument": outcome.instrument, "group": outcome.group, "detector": outcome.detector,
                  "rerun_of": outcome.run_id}  # fmt: skip
    return prefect_api.run_form_url(_ui_url(ctx), deployment_id, parameters)


def _ui_url(ctx: ProcessingContext) -> str:
    """The UI of the Prefect server this run reports to (Prefect's own PREFECT_UI_URL, derived from
    its API URL), else the settings' ``prefect.ui``."""
    ui_url = PREFECT_UI_URL.value()
    return str(ui_url).rstrip("/") if ui_url else ctx.settings.prefect.ui


def add_run_tags(*run_tags: str) -> None:
    """Add ``run_tags`` to the current flow run (outside one, or if the API refuses: logged, not raised)."""
    run_id = flow_run.get_id()
    if run_id is None or not run_tags:
        return
    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(run_id))
            client.update_flow_run(UUID(run_id), tags=sorted({*run.tags, *run_tags}))
    except Exception as exc:  # a missing tag must not fail the run
        log.warning("could not tag the flow run %s with %s: %s", run_id, run_tags, exc)


def _publish_report(ctx: ProcessingContext, outcome: VisitOutcome) -> None:
    try:
        _emit_event(outcome)
        with get_client(sync_client=True) as client:
            client.create_artifact(_artifact(ctx, outcome))
    except Exception as exc:  # a report must never fail a visit-detector whose outcome is recorded
        log.warning("report of %s not written: %s", outcome_line(outcome), exc)


def _emit_event(outcome: VisitOutcome) -> None:
    related = []
    if outcome.task_run_id:
        related.append({"prefect.resource.id": f"prefect.task-run.{outcome.task_run_id}",
                        "prefect.resource.role": "task-run"})  # fmt: skip
    if outcome.flow_run_id:
        related.append({"prefect.resource.id": f"prefect.flow-run.{outcome.flow_run_id}",
                        "prefect.resource.role": "flow-run"})  # fmt: skip
    resource = {
        "prefect.resource.id": f"pp.visit.{outcome.instrument.lower()}.{outcome.group}.{outcome.detector:03d}",
        "prefect.resource.name": outcome_line(outcome)[:200],
        "pp.instrument": outcome.instrument,
        "pp.group": outcome.group,
        "pp.detector": f"{outcome.detector:03d}",
    }
    emit_event(
        event=EVENTS[outcome.status],
        resource=resource,
        related=related,
        payload=outcome.record(),
    )


def _artifact(ctx: ProcessingContext, outcome: VisitOutcome) -> ArtifactCreate:
    rows = "\n".join(f"| {step} | {seconds * 1e3:.1f} |" for step, seconds in outcome.steps_s.items())
    timings = (f"| step | ms |\n|---|---:|\n{rows}\n| orchestration and I/O | {outcome.overhead_s * 1e3:.1f} |\n"
               f"| **total** | **{outcome.total_s * 1e3:.1f}** |\n")  # fmt: skip
    link = rerun_link(ctx, outcome)
    rerun = f"[Rerun it]({link}) (pre-filled form), or" if link else "Rerun it with"
    lines = [
        f"### {outcome.instrument} {outcome.group} detector {outcome.detector:03d}: {outcome.status}",
        "",
        outcome_line(outcome),
        "",
        f"Night {outcome.day_obs}, delivery {outcome.deliveries}, processed by `{outcome.processed_by}`"
        + (f", rerun of `{outcome.rerun_of}`" if outcome.rerun_of else "") + ".",
        "",
        timings if outcome.steps_s else "",
        _pipeline_lines(outcome),
        *(f"- `{uri}`" for uri in outcome.outputs),
        "",
        f"{rerun} `pp rerun {outcome.instrument} {outcome.group} {outcome.detector}`.",
    ]
    return ArtifactCreate(
        key=naming.visit_artifact_key(outcome.instrument, outcome.group, outcome.detector),
        type="markdown",
        data="\n".join(lines),
        description=f"{outcome.instrument} {outcome.group} det{outcome.detector:03d}: {outcome.status}",
        task_run_id=outcome.task_run_id or None,
        flow_run_id=outcome.flow_run_id or None,
    )


def _pipeline_lines(outcome: VisitOutcome) -> str:
    """Which pipeline ran (and why the ones before it did not), with the wall time of each of its tasks."""
    lines = [f"Pipeline: **{outcome.pipeline or 'none'}**"]
    lines += [f"- not built: {why}" for why in outcome.not_built]
    if outcome.pipeline_s:
        lines += ["", "| pipeline part | ms |", "|---|---:|"]
        lines += [f"| {part} | {seconds * 1e3:.1f} |" for part, seconds in outcome.pipeline_s.items()]
    return "\n".join(lines) + "\n"


def _rerun_deployment_id(ctx: ProcessingContext) -> str | None:
    """Looked up once per run (None, and looked up again next time, while it is not deployed)."""
    if ctx.lookups.get(naming.RERUN_DEPLOYMENT) is None:
        try:
            with get_client(sync_client=True) as client:
                ctx.lookups[naming.RERUN_DEPLOYMENT] = str(client.read_deployment_by_name(naming.RERUN_DEPLOYMENT).id)
        except Exception as exc:  # not deployed (a test, a bare flow call): no link
            log.debug("no %s deployment: %s", naming.RERUN_DEPLOYMENT, exc)
    return ctx.lookups.get(naming.RERUN_DEPLOYMENT)


def _log_fields(outcome: VisitOutcome) -> dict[str, Any]:
    fields = {"instrument": outcome.instrument, "group": outcome.group, "detector": outcome.detector,
              "outcome": outcome.status, "reason": outcome.reason, "stopped_at": outcome.stopped_at,
              "deliveries": outcome.deliveries, "n_alerts": outcome.n_alerts, "pipeline": outcome.pipeline}  # fmt: skip
    if outcome.status == "succeeded":
        fields["landed_to_alerts_s"] = round(landed_to_alerts_s(outcome), 3)
    return fields
