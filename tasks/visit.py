"""One visit-detector, start to finish: preload -> wait_for_images -> process -> publish.

Three names, three things:

* ``run_visit_detector`` (this module): the plain function that runs the four steps.
* the ``visit-detector`` task (``visit_detector_task``): how the activator runs it. Inside the
  activator's long-lived flow run each visit-detector is one task run named
  ``<instrument>-<group>-det<NNN>`` (tag ``instrument:<name>``) with its four steps nested
  under it, named ``<instrument>-<group>-det<NNN>:<step>``: visible in the UI
  at task-run cost (~10 ms per run) instead of a subflow's ~0.4-2.5 s. With
  ``PP_VISIT__STEP_TASK_RUNS=false`` the steps run inline instead (``tasks.common.run_step``): one
  task run per visit-detector, for LSSTCam-scale nights.
* the ``process-visit-detector`` flow (``flows/process_visit_detector.py``): one flow run per
  visit-detector, deployed as ``process-visit-detector/rerun`` for manual reruns.

The steps run in a transaction of their own that commits as each step ends, so steps that
completed stay Completed when a later step stops the visit-detector (instead of Prefect's
"RolledBack": nothing is rolled back).
"""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.transactions import CommitMode, transaction
from prefect.utilities.context import get_task_and_flow_run_ids

from prompt_processing.activator.context import ProcessingContext, StepClock
from prompt_processing.apdb.ledger import Final
from prompt_processing.model import naming
from prompt_processing.model.errors import IgnorableVisit, NonRetriableError, RetriableError
from prompt_processing.model.events import NextVisit
from prompt_processing.model.failures import transient_as_retriable
from prompt_processing.pipelines.selection import Unselected, select_pipelines
from tasks.apdb_state import ApdbState, apdb_state
from tasks.common import run_step
from tasks.outcome import VisitOutcome, max_rss_bytes, outcome_state, report_outcome
from tasks.preload import preload
from tasks.process import process
from tasks.publish import publish
from tasks.wait_for_images import RawImages, wait_for_images


def visit_label(instrument: str, group: str, detector: int) -> str:
    """A visit-detector's run name, ``<instrument>-<group>-det<NNN>``."""
    return f"{instrument}-{group}-det{detector:03d}"


def run_visit_detector(
    ctx: ProcessingContext, visit: NextVisit, detector: int, *, rerun: bool = False, force: bool = False
) -> VisitOutcome:
    """Process one visit-detector; never alerts twice for the same one.

    Once its raws are in, the APDB and its alerts ledger say whether it was processed
    (``tasks.apdb_state.ApdbState``): one whose alerts were all confirmed is, for an activator, already
    done (succeeded, nothing sent again); a ``rerun`` of one in the APDB refuses (ignored, with the
    reason) unless ``force``d; a forced rerun writes new outputs and stores nothing. Alerts the APDB's
    rows show but the ledger does not (the worker died between the two) are sent (the same alerts, same
    ids); an alert the ledger holds never is again.

    Returns the final outcome: ``succeeded``, ``ignored`` (already processed) or ``failed``
    (a ``NonRetriableError``: missing calibration, corrupt image, image never arrived...). A final
    outcome is recorded in the ledger, and a redelivery of it is not processed again, nor loaded or
    waited for ("already done", "already failed: <the first reason>"); a rerun is, and its outcome
    replaces the one recorded.
    Raises ``RetriableError`` (an outage that outlasted the steps' retries) or an unexpected
    error: not final, the caller decides what happens to the work entry.
    """
    started_at, start = time.time(), time.perf_counter()
    outcome = VisitOutcome(visit.instrument, visit.groupId, detector, "succeeded", day_obs=visit.day_obs(),
                           started_at=started_at, processed_by=ctx.name)  # fmt: skip
    clock = StepClock(visit_label(visit.instrument, visit.groupId, detector))
    try:
        _run(ctx, clock, outcome, visit, detector, rerun=rerun, force=force)
    finally:  # whatever happened (a lost lease, an outage): the next attempt, here too, starts clean
        ctx.end_visit(visit.instrument)
    outcome.steps_s = clock.seconds
    outcome.total_s = time.perf_counter() - start
    outcome.max_rss_bytes = max_rss_bytes()
    return outcome


def _run(
    ctx: ProcessingContext, clock: StepClock, outcome: VisitOutcome, visit: NextVisit, detector: int, *,
    rerun: bool, force: bool,
) -> None:  # fmt: skip
    """Fill ``outcome`` (from the ledger, or by running the steps) and record it if it is final and new."""
    recognised = False  # a redelivery the ledger knew: nothing processed, nothing to record
    try:
        recognised = not rerun and _known_final(ctx, outcome)
        if not recognised:
            recognised = _run_steps(ctx, clock, outcome, visit, detector, rerun=rerun, force=force)
    except IgnorableVisit as exc:
        outcome.status, outcome.reason = "ignored", str(exc)
    except NonRetriableError as exc:
        outcome.status, outcome.reason, outcome.stopped_at = "failed", str(exc), clock.step
        outcome.error = exc.final.error if isinstance(exc, AlreadyFailed) else type(exc).__name__
        recognised = isinstance(exc, AlreadyFailed)
    if not recognised and outcome.status in ("succeeded", "failed"):
        _record_final(ctx, outcome)


def _run_steps(
    ctx: ProcessingContext, clock: StepClock, outcome: VisitOutcome, visit: NextVisit, detector: int, *,
    rerun: bool, force: bool,
) -> bool:  # fmt: skip
    """The four steps, filling ``outcome``; True if they found the visit-detector already done (its alerts
    all confirmed: the APDB's ledger knew it by visit id once the raws were in)."""
    v = ctx.settings.visit
    pipelines = _pipelines(ctx, visit)
    with transaction(commit_mode=CommitMode.EAGER):
        inputs = run_step(preload, v, ctx, clock, visit, detector)
        raws = run_step(wait_for_images, v, ctx, clock, visit, detector)
        state = apdb_state(ctx, visit, detector, raws.visit_id)
        if state is ApdbState.SENT and not (rerun or force):
            _already_done(ctx, outcome, raws, detector)
            return True
        state = _admitted(state, rerun=rerun, force=force)
        processed = run_step(process, v, ctx, clock, visit, detector, raws, state, pipelines, inputs.missing)
        outcome.pipeline, outcome.not_built = processed.pipeline, [f"{n}: {w}" for n, w in processed.tried]
        outcome.pipeline_s = processed.timings_s
        published = run_step(publish, v, ctx, clock, visit, detector, raws, processed, state)
        outcome.n_alerts, outcome.alerts_sent_at = published.n_alerts, published.sent_at_utc
        outcome.landed_at, outcome.outputs = raws.landed_at[-1], published.outputs
    return False


class AlreadyFailed(NonRetriableError):
    """A visit-detector redelivered to an activator after a final failure the ledger holds."""

    def __init__(self, final: Final) -> None:
        self.final = final
        super().__init__(f"already failed: {final.reason} (by {final.processed_by}; not tried again, rerun it by "
                         f"hand to retry)")  # fmt: skip


def _known_final(ctx: ProcessingContext, outcome: VisitOutcome) -> bool:
    """Whether the ledger holds this visit-detector's final outcome, looked up before anything is loaded or
    waited for: a redelivery (its acknowledgement was lost, or the fan-out re-fanned its visit after Redis
    lost the stream) is not processed again, so it is never processed twice and a replay after a Redis
    loss goes by fast. Succeeded before: ``outcome`` says "already done" (no alert counted or sent again);
    failed before: AlreadyFailed (operators rerun failures by hand)."""
    with transient_as_retriable("alerts ledger"):
        final = ctx.ledger.final(outcome.instrument, outcome.group, outcome.detector)
    if final is None:
        return False
    if final.status == "failed":
        raise AlreadyFailed(final)
    outcome.reason = f"already done: {final.n_alerts} alerts confirmed by {final.processed_by} (none sent again)"
    outcome.landed_at, outcome.alerts_sent_at = final.landed_at, final.finished_at
    return True


def _record_final(ctx: ProcessingContext, outcome: VisitOutcome) -> None:
    """The outcome into the ledger's record of final outcomes (a rerun's replaces the one before)."""
    final = Final(outcome.status, outcome.reason, outcome.error, outcome.n_alerts, outcome.landed_at,
                  outcome.alerts_sent_at or time.time(), ctx.name)  # fmt: skip
    with transient_as_retriable("alerts ledger"):
        ctx.ledger.record_final(outcome.instrument, outcome.group, outcome.detector, final)


def _pipelines(ctx: ProcessingContext, visit: NextVisit) -> list[str]:
    """The pipelines to try, by the visit's survey: IgnorableVisit (or NonRetriableError, as configured) if
    none, before anything is loaded or waited for."""
    try:
        return select_pipelines(ctx.settings.pipelines, visit.survey, *visit.position)
    except Unselected as exc:
        raise (IgnorableVisit(str(exc)) if exc.ignore else NonRetriableError(str(exc))) from exc


def _admitted(state: ApdbState, *, rerun: bool, force: bool) -> ApdbState:
    """``state`` if the visit-detector is to be processed; IgnorableVisit (with the reason) if not."""
    if state is ApdbState.NEW or force or not rerun:
        return state
    raise IgnorableVisit("already in the APDB: rerun with force to rewrite its outputs (an alert already "
                         "sent is never sent again)")  # fmt: skip


def _already_done(ctx: ProcessingContext, outcome: VisitOutcome, raws: RawImages, detector: int) -> None:
    """A redelivered visit-detector whose alerts the ledger holds all confirmed (an attempt that finished
    but whose acknowledgement was lost, or a re-fan after Redis lost the stream): succeeded, with the first
    attempt's latency and no alert counted again."""
    with transient_as_retriable("alerts ledger"):
        done = ctx.ledger.done(raws.visit_id, detector)
    if done is None:
        raise RetriableError("alerts ledger: the visit-detector's completion record vanished")
    outcome.reason = f"already done: {done.n_alerts} alerts confirmed by {done.processed_by} (none sent again)"
    outcome.landed_at, outcome.alerts_sent_at = raws.landed_at[-1], done.sent_at


@task(name=naming.VISIT_DETECTOR_TASK, task_run_name="{visit.instrument}-{visit.groupId}-det{detector:03d}",
      cache_policy=NO_CACHE)  # fmt: skip
def visit_detector_task(
    ctx: ProcessingContext, visit: NextVisit, detector: int, deliveries: int = 1
) -> State[VisitOutcome]:
    """One visit-detector as a task run whose state is its outcome (``tasks.outcome.outcome_state``);
    its outcome line is in the task run's log, its event and artifact go out (``report_outcome``)."""
    outcome = run_visit_detector(ctx, visit, detector)
    task_run_id, flow_run_id = get_task_and_flow_run_ids()
    outcome.task_run_id, outcome.flow_run_id = str(task_run_id or ""), str(flow_run_id or "")
    outcome.deliveries = deliveries
    report_outcome(ctx, outcome, get_run_logger())
    return outcome_state(outcome)
