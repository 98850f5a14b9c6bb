"""preload: the visit-detector's calibrations, template and refcat shards, into the local Butler."""

from __future__ import annotations

from prompt_processing.activator.context import ProcessingContext, StepClock
from prompt_processing.butler.local import Preloaded
from prompt_processing.model.events import NextVisit
from prompt_processing.model.failures import transient_as_retriable
from tasks.common import step


@step("preload")
def preload(ctx: ProcessingContext, clock: StepClock, visit: NextVisit, detector: int) -> Preloaded:
    """Everything the central Butler has for this visit-detector, in the run's local repository (see
    ``butler.local.LocalRepo.preload``); a warm activator keeps calibrations between visits.

    What was found is brought in even when something is missing; ``missing`` names what was not, and why.
    Whether the visit-detector can do without it is the pipelines' to say (``process``: a pipeline whose
    graph cannot be built falls through to the next).
    """
    with clock.timing("preload"), transient_as_retriable("central Butler"):
        found = ctx.local_repo(visit.instrument).preload(visit, detector)
    return found
