"""Property-based tests of the NextVisit model and its lossless trip through Redis fields."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prompt_processing.model.events import EventError, FanOutEntry, NextVisit

finite = st.floats(allow_nan=False, allow_infinity=False)
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)

valid_events = st.fixed_dictionaries(
    {
        "salIndex": st.integers(0, 2**31),
        "scriptSalIndex": st.integers(-(2**31), 2**31),
        "instrument": st.sampled_from(["LSSTCam", "LATISS", "HSC"]),
        "groupId": st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=128),
        "coordinateSystem": st.integers(1, 4),
        "position": st.tuples(finite, finite).map(list),
        "startTime": st.floats(min_value=1e-3, allow_nan=False, allow_infinity=False),
        "rotationSystem": st.integers(1, 4),
        "cameraAngle": finite,
        "filters": text,
        "dome": st.integers(1, 3),
        "duration": st.floats(min_value=0, allow_nan=False, allow_infinity=False),
        "nimages": st.integers(0, 100),
        "survey": text,
        "totalCheckpoints": st.integers(0, 1000),
        "private_sndStamp": finite,
    },
    optional={
        "private_efdStamp": finite,
        "private_seqNum": st.integers(),
        "private_identity": text,
        "private_origin": st.integers(),
        "private_revCode": text,
    },
)


@given(valid_events, st.integers(0, 188))
def test_entry_round_trips_through_redis_fields(body: dict[str, Any], detector: int) -> None:
    visit = NextVisit.from_json(json.dumps(body))
    entry = FanOutEntry(visit=visit, detector=detector)
    as_redis = {k.encode(): v.encode("utf-8") for k, v in entry.to_fields().items()}
    assert FanOutEntry.from_fields(as_redis) == entry
    assert all(isinstance(v, str) for v in entry.to_fields().values())


@given(valid_events)
def test_valid_events_keep_every_contract_field(body: dict[str, Any]) -> None:
    visit = NextVisit.from_json(json.dumps(body))
    assert visit.groupId == body["groupId"]
    assert list(visit.position) == body["position"]
    assert visit.startTime == body["startTime"]
    assert visit.private_efdStamp == body.get("private_efdStamp")
    assert "private_seqNum" not in visit.stream_fields()  # bookkeeping is dropped


_required = [
    "salIndex", "scriptSalIndex", "instrument", "groupId", "coordinateSystem", "position", "startTime",
    "rotationSystem", "cameraAngle", "filters", "dome", "duration", "nimages", "survey", "totalCheckpoints",
    "private_sndStamp",
]  # fmt: skip


@given(valid_events, st.sampled_from(_required))
def test_a_missing_field_is_named(body: dict[str, Any], field: str) -> None:
    del body[field]
    with pytest.raises(EventError, match=f"{field}: Field required"):
        NextVisit.from_json(json.dumps(body))


wrong_values = st.sampled_from(
    [
        ("groupId", 12345, "groupId: Input should be a valid string"),
        ("groupId", "", "groupId: String should have at least 1 character"),
        ("groupId", "has space", "groupId: String should match pattern"),
        ("duration", "30", "duration: Input should be a valid number"),
        ("duration", -1.0, "duration: Input should be greater than or equal to 0"),
        ("nimages", 1.5, "nimages: Input should be a valid integer"),
        ("dome", 9, "dome: Input should be 1, 2 or 3"),
        ("coordinateSystem", 0, "coordinateSystem: Input should be 1, 2, 3 or 4"),
        ("position", [1.0], "position.1: Field required"),
        ("position", "10,20", "position: Input should be a valid"),
        ("startTime", None, "startTime: Input should be a valid number"),
        ("salIndex", True, "salIndex: Input should be a valid integer"),
    ]
)


@given(valid_events, wrong_values)
def test_wrong_types_are_rejected_with_the_field_named(body: dict[str, Any], case: tuple[str, Any, str]) -> None:
    field, value, message = case
    body[field] = value
    with pytest.raises(EventError) as info:
        NextVisit.from_json(json.dumps(body))
    assert message in str(info.value)


@given(valid_events, st.sampled_from(["startTime", "cameraAngle", "private_sndStamp"]))
def test_non_finite_numbers_are_rejected(body: dict[str, Any], field: str) -> None:
    raw = json.dumps(body | {field: math.inf})  # json.dumps writes Infinity, which pydantic reads
    with pytest.raises(EventError, match=field):
        NextVisit.from_json(raw)


def test_lone_surrogates_are_rejected_not_crashing_redis_encoding() -> None:
    with pytest.raises(EventError, match=r"^message: Invalid JSON"):
        NextVisit.from_json(json.dumps({"survey": "\ud800"}))
    with pytest.raises(ValueError, match="must be valid UTF-8"):
        NextVisit.model_validate({"survey": "\ud800"})


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"42", b'"text"'])
def test_non_objects_are_reported_as_the_whole_message(raw: bytes) -> None:
    with pytest.raises(EventError, match=r"^message: "):
        NextVisit.from_json(raw)


def test_entry_without_detector_is_an_event_error() -> None:
    with pytest.raises(EventError, match="not a fan-out entry"):
        FanOutEntry.from_fields({b"groupId": b"x"})
