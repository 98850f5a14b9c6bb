"""process: the visit-detector's pipelines (Alert Production, or a fallback) run by lsst-pipe-base's executor.

The visit's survey picks the pipelines to try (``PP_PIPELINES__RULES``, ``tasks.visit``); the first whose graph
can be built runs, in a RUN of its own in the local repository. Nothing leaves the local repository
here: ``publish`` exports, stores in the APDB and sends the alerts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lsst.daf.butler import DatasetRef

from prompt_processing.activator.context import ProcessingContext, StepClock
from prompt_processing.butler import repo
from prompt_processing.model.errors import NonRetriableError, RetriableError
from prompt_processing.model.events import NextVisit
from prompt_processing.model.failures import is_transient
from prompt_processing.pipelines.runner import NoPipeline, PipelineFailed, run_pipelines
from tasks.apdb_state import ApdbState
from tasks.common import step
from tasks.wait_for_images import RawImages


@dataclass(frozen=True)
class Processed:
    """What ran and what it wrote: the pipeline, the ones that could not be built before it (and why), the
    RUN, the outputs by dataset type, and timings (s): graph build, execution, each task, middleware."""

    pipeline: str
    run: str
    outputs: dict[str, DatasetRef]
    tried: list[tuple[str, str]] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)


@step("process")
def process(
    ctx: ProcessingContext, clock: StepClock, visit: NextVisit, detector: int, raws: RawImages, state: ApdbState,
    names: list[str], missing: list[str],
) -> Processed:  # fmt: skip
    """Run the first of the pipelines ``names`` whose graph can be built.

    NonRetriableError if none can be (naming why for each, with what preload did not find: ``missing``)
    or a task failed once executing (naming the task, the data id and the error); RetriableError if a
    database did not answer (the next try runs in a new RUN).
    """
    with clock.timing("process"):
        local = ctx.local_repo(visit.instrument)
        tries = clock.entries.get("process", 1)
        attempt = ctx.attempt if tries == 1 else f"{ctx.attempt}r{tries - 1}"
        if state is ApdbState.STORED:  # its association config differs (read back): a RUN holds one config per task
            attempt += "b"
        run = repo.output_run(visit.instrument, visit.day_obs(), visit.groupId, attempt)
        where = f"instrument='{visit.instrument}' AND visit={raws.visit_id} AND detector={detector}"
        try:
            done = run_pipelines(local.butler, visit.instrument, names, where=where, inputs=local.input_collections,
                                 run=run, config=_config(ctx, state))  # fmt: skip
        except NoPipeline as exc:
            found = f"; preload did not find {'; '.join(missing)}" if missing else ""
            raise NonRetriableError(f"no pipeline could be built: {exc}{found}") from exc
        except PipelineFailed as exc:
            local.adopt_run(run)  # its partial outputs go with the visit-detector's
            if is_transient(exc.error):
                raise RetriableError(str(exc)) from exc
            raise NonRetriableError(str(exc)) from exc
        local.adopt(done.outputs.values())
        timings = {"graph": done.graph_s, "execute": done.execute_s, "middleware": done.middleware_s,
                   **{f"task:{label}": s for label, s in done.task_s.items()}}  # fmt: skip
        return Processed(done.pipeline, run, dict(done.outputs), done.tried, timings)


def _config(ctx: ProcessingContext, state: ApdbState) -> dict[str, dict[str, object]]:
    """Task config overrides from the settings: the APDB, association, alert schema and cutouts."""
    apdb, alerts = ctx.settings.apdb, ctx.settings.alerts
    return {
        "associate": {"apdb_url": apdb.db_url or "", "apdb_namespace": apdb.namespace or "",
                      "radius_arcsec": apdb.association_radius_arcsec,
                      "prior_sources_months": apdb.prior_sources_months, "read_back": state is ApdbState.STORED,
                      "cutout_size_px": alerts.cutout_size_px, "max_dia_sources": alerts.max_per_detector},
        "package": {"schema_version": alerts.schema_version or "", "cutout_size_px": alerts.cutout_size_px},
    }  # fmt: skip
