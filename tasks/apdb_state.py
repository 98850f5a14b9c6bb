"""What the APDB (and the alerts-sent marker) say of a visit-detector, looked up once its raws are in."""

from __future__ import annotations

from enum import StrEnum

from prompt_processing.activator.context import ProcessingContext
from prompt_processing.apdb.db import OUTAGES, ApdbMissing
from prompt_processing.model import naming
from prompt_processing.model.errors import NonRetriableError, RetriableError
from prompt_processing.model.events import NextVisit


class ApdbState(StrEnum):
    NEW = "new"  # not in the APDB: associate, store, send
    STORED = "stored"  # in the APDB, alerts not known sent: send them (rebuilt from its rows), store nothing
    SENT = "sent"  # in the APDB, alerts sent: nothing to store or send


def apdb_state(ctx: ProcessingContext, visit: NextVisit, detector: int, visit_id: int) -> ApdbState:
    """The visit-detector's ``ApdbState``; NonRetriableError if there is no APDB, RetriableError if it is down."""
    try:
        if not ctx.apdb.containsVisitDetector(visit_id, detector):
            return ApdbState.NEW
    except ApdbMissing as exc:
        raise NonRetriableError(str(exc)) from exc
    except OUTAGES as exc:
        raise RetriableError(f"APDB: {type(exc).__name__}: {exc}") from exc
    sent = ctx.redis.exists(naming.published_key(visit.instrument, visit.groupId, detector))
    return ApdbState.SENT if sent else ApdbState.STORED
