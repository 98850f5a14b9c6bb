"""Which messages are fanned out and which are dead-lettered, and why (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from prompt_processing.model.admission import DeadLetterKind, Rejected, admit
from prompt_processing.model.events import TAI_MINUS_UTC_S

NOW_UTC_S = 1_800_000_000.0
ACTIVE = {"LSSTCam": (1, 2, 3), "LATISS": (0,)}


def _event(**changes: Any) -> bytes:
    body = {
        "salIndex": 1, "scriptSalIndex": 7, "instrument": "LSSTCam", "groupId": "2027-01-15T03:00:00.000",
        "coordinateSystem": 2, "position": [150.1, -30.2], "startTime": NOW_UTC_S + 60, "rotationSystem": 2,
        "cameraAngle": 12.5, "filters": "r_57", "dome": 2, "duration": 30.0, "nimages": 1,
        "survey": "BLOCK-365", "totalCheckpoints": 0, "private_sndStamp": NOW_UTC_S + TAI_MINUS_UTC_S,
    }  # fmt: skip
    body.update(changes)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def _admit(raw: bytes | None) -> tuple[Any, str, tuple[int, ...]]:
    return admit(raw, now_utc_s=NOW_UTC_S, active=ACTIVE, message_expiration_s=3600)


def test_valid_event_gets_its_instruments_detectors() -> None:
    visit, instrument, detectors = _admit(_event(instrument="lsstcam"))
    assert (instrument, detectors) == ("LSSTCam", (1, 2, 3))
    assert visit.groupId == "2027-01-15T03:00:00.000"


@pytest.mark.parametrize(
    ("raw", "kind", "reason"),
    [
        (None, DeadLetterKind.MALFORMED, "empty message"),
        (b"", DeadLetterKind.MALFORMED, "empty message"),
        (b"{oops", DeadLetterKind.MALFORMED, "Invalid JSON"),
        (b"[]", DeadLetterKind.MALFORMED, "message: "),
        (_event(groupId=17), DeadLetterKind.INVALID, "groupId: Input should be a valid string"),
        (_event(duration=...), DeadLetterKind.INVALID, "duration: Field required"),
        (_event(instrument="DECam"), DeadLetterKind.UNKNOWN_INSTRUMENT, "'DECam' is not served here"),
        (_event(instrument="HSC"), DeadLetterKind.UNKNOWN_INSTRUMENT, "served: LATISS, LSSTCam"),
        (
            _event(private_sndStamp=NOW_UTC_S - 3601 + TAI_MINUS_UTC_S),
            DeadLetterKind.EXPIRED,
            "sent 3601 s ago",
        ),
        (_event(private_efdStamp=NOW_UTC_S - 7200), DeadLetterKind.EXPIRED, "message_expiration_s=3600"),
    ],
)
def test_rejections_carry_kind_and_reason(raw: bytes | None, kind: DeadLetterKind, reason: str) -> None:
    with pytest.raises(Rejected) as info:
        _admit(raw)
    assert info.value.kind is kind
    assert reason in info.value.reason


def test_expiry_prefers_the_efd_stamp_and_keeps_fresh_events() -> None:
    # sndStamp says two hours old, but the EFD stamp (UTC) says one minute: the EFD stamp wins.
    raw = _event(private_sndStamp=NOW_UTC_S - 7200, private_efdStamp=NOW_UTC_S - 60)
    assert _admit(raw)[1] == "LSSTCam"
    assert _admit(_event(private_sndStamp=NOW_UTC_S - 3599 + TAI_MINUS_UTC_S))[1] == "LSSTCam"
