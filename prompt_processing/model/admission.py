"""Which next-visit messages are fanned out, and why the others are dead-lettered.

Pure functions: the same message, clock and configuration always give the same verdict. ``admit``
raises nothing but ``Rejected``, whose reason starts with the field at fault (``groupId: ...``), or
``message: ...`` when the message is not a JSON object at all (``pp_devkit.fuzzing`` checks both).
"""

from __future__ import annotations

from enum import StrEnum

from prompt_processing.model.events import EventError, NextVisit
from prompt_processing.model.instruments import get_instrument


class DeadLetterKind(StrEnum):
    """Why a message was not fanned out (the ``pp-dead-letter-kind`` header)."""

    MALFORMED = "malformed"  # not JSON, or not a JSON object
    INVALID = "invalid"  # JSON, but a field is missing, of the wrong type or out of range
    UNKNOWN_INSTRUMENT = "unknown-instrument"  # not an instrument this fan-out serves
    EXPIRED = "expired"  # sent longer ago than message_expiration_s


class Rejected(Exception):
    """A message to dead-letter: ``kind`` for counting, ``reason`` for people."""

    def __init__(self, kind: DeadLetterKind, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


def admit(
    raw: bytes | None,
    *,
    now_utc_s: float,
    active: dict[str, tuple[int, ...]],
    message_expiration_s: float,
) -> tuple[NextVisit, str, tuple[int, ...]]:
    """Return (event, canonical instrument name, active detectors) or raise Rejected.

    An admitted visit has a dayObs (``visit.day_obs()`` works: the activators name runs by it).
    """
    if not raw:
        raise Rejected(DeadLetterKind.MALFORMED, "message: empty message")
    try:
        visit = NextVisit.from_json(raw)
    except EventError as exc:
        kind = DeadLetterKind.MALFORMED if _is_malformed(str(exc)) else DeadLetterKind.INVALID
        raise Rejected(kind, str(exc)) from exc
    instrument = get_instrument(visit.instrument)
    if instrument is None or instrument.name not in active:
        served = ", ".join(sorted(active)) or "none"
        raise Rejected(
            DeadLetterKind.UNKNOWN_INSTRUMENT,
            f"instrument: {visit.instrument!r} is not served here (served: {served})",
        )
    age_s = now_utc_s - visit.sent_at_utc()
    if age_s > message_expiration_s:
        stamp = "private_sndStamp" if visit.private_efdStamp is None else "private_efdStamp"
        raise Rejected(
            DeadLetterKind.EXPIRED,
            f"{stamp}: sent {age_s:.0f} s ago, more than message_expiration_s={message_expiration_s:g}",
        )
    if not _has_day_obs(visit):
        raise Rejected(DeadLetterKind.INVALID, f"startTime: {visit.startTime!r} is not a moment with a date (dayObs)")
    return visit, instrument.name, active[instrument.name]


def _has_day_obs(visit: NextVisit) -> bool:
    """Whether the shutter-open time falls in a calendar year 1..9999 (a float far out of it has no date)."""
    try:
        visit.day_obs()
    except (OverflowError, ValueError, OSError):
        return False
    return True


def _is_malformed(reason: str) -> bool:
    return reason.startswith("message: ")
