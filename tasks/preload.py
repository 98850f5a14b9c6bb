"""preload: the visit-detector's calibrations, template and refcat shards, into the local Butler."""

from __future__ import annotations

from prompt_processing.activator.context import ProcessingContext, StepClock
from prompt_processing.butler import repo
from prompt_processing.butler.local import Preloaded
from prompt_processing.model.errors import NonRetriableError, RetriableError
from prompt_processing.model.events import NextVisit
from tasks.common import step


class MissingInputs(NonRetriableError):
    """The central repository lacks an input this visit-detector cannot be processed without."""


@step("preload")
def preload(ctx: ProcessingContext, clock: StepClock, visit: NextVisit, detector: int) -> Preloaded:
    """Everything the central Butler has for this visit-detector, in the run's local repository (see
    ``butler.local.LocalRepo.preload``); a warm activator keeps calibrations between visits.

    What was found is brought in even when something is missing; then ``MissingInputs`` (non-retriable)
    names each missing input and why. A reference catalogue is not required yet (no step reads it).
    """
    with clock.timing("preload"):
        try:
            found = ctx.local_repo(visit.instrument).preload(visit, detector)
        except repo.OUTAGES as exc:
            raise RetriableError(f"central Butler: {type(exc).__name__}: {exc}") from exc
    required = [why for why in found.missing if not why.startswith("refcat")]
    if required:
        raise MissingInputs("; ".join(required))
    return found
