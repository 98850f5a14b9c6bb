"""The ``process-visit-detector`` flow: one visit-detector as its own flow run, for manual reruns.

Deployed as ``process-visit-detector/rerun`` (``pp rerun``, the pre-filled link in a
visit-detector's artifact, or the UI's run form). An operator gives only (instrument, group,
detector): the NextVisit event is read back from the record the fan-out kept
(``pp:visit:<instrument>:<group>``, kept for ``PP_FANOUT__DEDUP_TTL_S``). Alerts already published
are never sent again: a visit-detector the APDB holds ends Completed, named ``Ignored``, unless
``force`` is set (new outputs; nothing stored in the APDB, no alert sent again). A visit whose images never
landed fails at once with that reason (its deadline passed long ago) instead of waiting again.

The outcome is recorded like an activator's: a line in the instrument's results stream (so the
night report and ``pp rerun --failed`` see it), an event, a keyed artifact; the run is tagged
``instrument:``, ``group:``, ``detector:`` and ``rerun-of:<run id>``. Settings (addresses, step
limits) come from the run's own ``PP_*`` environment.
"""

from __future__ import annotations

import socket
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from pydantic import Field

from prompt_processing.activator.context import ProcessingContext
from prompt_processing.adapters.results import append_result
from prompt_processing.model import naming
from prompt_processing.model.errors import NonRetriableError
from prompt_processing.model.events import GroupId, NextVisit
from prompt_processing.settings import Settings
from tasks.logs import configure_run_logging
from tasks.outcome import VisitOutcome, add_run_tags, outcome_state, report_outcome
from tasks.visit import run_visit_detector

Instrument = Literal["LSSTCam", "LATISS", "HSC"]
DetectorId = Annotated[int, Field(ge=0)]
"""The parameters are validated (Prefect, against these types) before the run touches Redis or S3."""


@flow(name=naming.PROCESS_VISIT_DETECTOR_FLOW, flow_run_name="{instrument}-{group}-det{detector:03d}")
def process_visit_detector(
    instrument: Instrument, group: GroupId, detector: DetectorId, rerun_of: str = "", force: bool = False
) -> State[VisitOutcome]:
    """Preload, wait for images, process and publish one visit-detector; the outcome is the result.

    Args:
        instrument: The camera.
        group: The visit's groupId, as in the failed run's name (`<instrument>-<group>-det<NNN>`).
        detector: The detector id, e.g. 94 for LSSTCam R22_S11.
        rerun_of: The id of the run whose failure this repeats (set by `pp rerun` and the
            artifacts' rerun links); recorded with the outcome and tagged `rerun-of:<id>`.
        force: Reprocess a visit-detector the APDB already holds: new outputs, nothing stored in the
            APDB, no alert sent again. Without it such a rerun ends Ignored.
    """
    settings = Settings()
    configure_run_logging(settings)
    add_run_tags(*naming.visit_tags(instrument, group, detector),
                 *([naming.rerun_of_tag(rerun_of)] if rerun_of else []))  # fmt: skip
    ctx = ProcessingContext(settings, name=f"rerun-{socket.gethostname()}")
    try:
        outcome = run_visit_detector(ctx, _recorded_visit(ctx, instrument, group), detector, rerun=True, force=force)
        outcome.flow_run_id, outcome.rerun_of = str(flow_run.get_id() or ""), rerun_of
        append_result(ctx.redis, instrument, outcome.record(), retention_s=settings.visit.results_retention_s)
        report_outcome(ctx, outcome, get_run_logger())
    finally:
        ctx.close()
    return outcome_state(outcome, flow=True)


def _recorded_visit(ctx: ProcessingContext, instrument: str, group: str) -> NextVisit:
    raw = ctx.redis.get(naming.visit_key(instrument, group))
    if raw is None:
        raise NonRetriableError(
            f"no record of visit {group} of {instrument}: fanned out more than PP_FANOUT__DEDUP_TTL_S "
            f"({ctx.settings.fanout.dedup_ttl_s} s) ago, or never"
        )
    return NextVisit.from_json(raw)
