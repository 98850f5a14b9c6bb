"""Fuzzing every input parser (pure): a few hundred hypothesis cases each, from ``pp_devkit.fuzzing``.

Each case is a valid input, or one mutated at the byte level or in its structure; the property
(``Target.check``) holds when the parser accepts a well-formed result (it round-trips) or refuses with its
documented exception and a reason naming the field. ``python -m bench.fuzz`` runs the same at 10,000 cases.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings

from pp_devkit import fuzzing
from pp_devkit.fuzzing import PropertyViolation, Target
from prompt_processing.model import admission
from prompt_processing.model.events import EventError
from prompt_processing.services.router import BadNotification

TARGETS = {target.name: target for target in fuzzing.targets()}
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip


def _holds(target: Target, case: Any) -> None:
    assert target.check(case) in ("accepted", "rejected")


@FUZZ
@given(TARGETS["next-visit"].cases)
def test_next_visit_events(case: bytes) -> None:
    _holds(TARGETS["next-visit"], case)


@FUZZ
@given(TARGETS["s3-notification"].cases)
def test_s3_notifications(case: bytes) -> None:
    _holds(TARGETS["s3-notification"], case)


@FUZZ
@given(TARGETS["sidecar"].cases)
def test_sidecars(case: tuple[bytes, Any]) -> None:
    _holds(TARGETS["sidecar"], case)


@FUZZ
@given(TARGETS["raw-key"].cases)
def test_raw_keys(case: str) -> None:
    _holds(TARGETS["raw-key"], case)


@FUZZ
@given(TARGETS["stream-entry"].cases)
def test_stream_entries(case: dict[bytes, bytes]) -> None:
    _holds(TARGETS["stream-entry"], case)


@FUZZ
@given(TARGETS["pp-output"].cases)
def test_pp_output_events(case: bytes) -> None:
    _holds(TARGETS["pp-output"], case)


@FUZZ
@given(TARGETS["autoscaler-spec"].cases)
def test_autoscaler_specs(case: bytes) -> None:
    _holds(TARGETS["autoscaler-spec"], case)


def test_every_parser_has_its_test() -> None:
    assert set(TARGETS) == {"next-visit", "s3-notification", "sidecar", "raw-key", "stream-entry", "pp-output",
                            "autoscaler-spec"}  # fmt: skip


@pytest.mark.parametrize("name", sorted(TARGETS))
@pytest.mark.parametrize("outcome", ["accepted", "rejected"])
def test_the_cases_reach_both_outcomes(name: str, outcome: str) -> None:
    """Neither all valid nor all garbage: each parser's cases include inputs it accepts and ones it refuses."""
    target = TARGETS[name]
    quick = settings(max_examples=500, deadline=None, database=None, phases=[Phase.generate],
                     suppress_health_check=list(HealthCheck))  # fmt: skip
    find(target.cases, lambda case: target.check(case) == outcome, settings=quick)


# -- the property can fail: a crash, a reason without its field, an accepted result that is not usable --------


def test_an_undocumented_exception_is_a_crash() -> None:
    def crashes() -> None:
        raise TypeError("'NoneType' object is not subscriptable")

    def refuses() -> None:
        raise EventError("groupId: Field required")

    with pytest.raises(PropertyViolation, match="crashed: TypeError"):
        fuzzing.attempt(crashes, EventError)
    assert isinstance(fuzzing.attempt(refuses, EventError), EventError)


def test_a_reason_without_the_field_is_a_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    def vague(raw: bytes | None) -> list[tuple[str, str, str]]:  # what parse_notification used to say
        raise BadNotification("not an S3 event notification: 'NoneType' object is not subscriptable")

    assert fuzzing.check_notification(b"null") == "rejected"
    monkeypatch.setattr(fuzzing, "parse_notification", vague)
    with pytest.raises(PropertyViolation, match="does not name the field"):
        fuzzing.check_notification(b"null")


def test_an_accepted_visit_without_a_date_is_a_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = json.dumps(fuzzing.next_visit_seeds()[0] | {"startTime": 1e300}).encode()  # valid types, no dayObs
    assert fuzzing.check_next_visit(raw) == "rejected"
    monkeypatch.setattr(admission, "_has_day_obs", lambda visit: True)  # admission as it was before the fuzzing
    with pytest.raises(PropertyViolation, match="accepted, but the result is not usable: OverflowError"):
        fuzzing.check_next_visit(raw)
