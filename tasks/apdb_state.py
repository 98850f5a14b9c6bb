"""What the APDB and its alerts ledger say of a visit-detector, looked up once its raws are in."""

from __future__ import annotations

from enum import StrEnum

from prompt_processing.activator.context import ProcessingContext
from prompt_processing.apdb.db import ApdbMissing
from prompt_processing.model.errors import NonRetriableError, RetriableError
from prompt_processing.model.events import NextVisit
from prompt_processing.model.failures import is_transient


class ApdbState(StrEnum):
    NEW = "new"  # not in the APDB: associate, store, send
    STORED = "stored"  # in the APDB, alerts not all confirmed: send the rest (rebuilt from its rows), store nothing
    SENT = "sent"  # the ledger says all its alerts were confirmed: nothing to store or send


def apdb_state(ctx: ProcessingContext, visit: NextVisit, detector: int, visit_id: int) -> ApdbState:
    """The visit-detector's ``ApdbState`` (SENT: the alerts ledger says all its alerts were confirmed);
    NonRetriableError if there is no APDB, RetriableError if it is down."""
    try:
        if ctx.ledger.done(visit_id, detector) is not None:
            return ApdbState.SENT
        return ApdbState.STORED if ctx.apdb.containsVisitDetector(visit_id, detector) else ApdbState.NEW
    except ApdbMissing as exc:
        raise NonRetriableError(str(exc)) from exc
    except Exception as exc:
        if is_transient(exc):
            raise RetriableError(f"APDB: {type(exc).__name__}: {exc}") from exc
        raise
