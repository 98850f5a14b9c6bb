"""The measures and the report of ``make faults`` (bench.fault_report), on synthetic outcome records (pure:
no stack; the alerts topic is a stand-in)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.fault_injection import Injected, VisitDetector
from bench.fault_report import (
    SECTION,
    RepeatResult,
    Row,
    measure,
    processed_twice,
    recovery_s,
    render_section,
    replace_section,
    stall_s,
    summarise,
)
from prompt_processing.adapters import kafka
from prompt_processing.adapters.kafka import Record
from prompt_processing.reporting.outcomes import Outcome
from prompt_processing.settings import Settings

T0 = 1_796_100_000.0
META = {"command": "python -m bench.faults", "when": "2026-12-01 20:22 UTC", "host": "vm", "seed": "1",
        "wall": "1 min 0 s", "night": "2 visits x 2 detectors", "kafka": "memory", "claim_idle_s": "30",
        "load": "mean 1.0, max 2.0"}  # fmt: skip


def outcome(group: str, detector: int, status: str, at_s: float, reason: str = "") -> Outcome:
    return Outcome("LSSTCam", group, detector, status, T0 + at_s, reason=reason)


def result(**fields: Any) -> RepeatResult:
    """A measured repeat: 2 x 2 visit-detectors planned, nothing wrong, unless ``fields`` say otherwise."""
    planned: list[VisitDetector] = [("g1", 0), ("g1", 1), ("g2", 0), ("g2", 1)]
    values: dict[str, Any] = {
        "fault": "redis-restart", "repeat": 1, "began": T0, "injected": Injected(T0 + 10, T0 + 30, "Redis wiped"),
        "planned": planned, "lost": [], "twice": [], "alerts": 8, "unique_alerts": 8, "dead_lettered": [],
        "recovery_s": 2.5, "stall_s": 4.0, "timeline": [(T0 + 5, "succeeded")] * 4, "failures": [],
    }  # fmt: skip
    return RepeatResult(**(values | fields))


class _Recorder:
    """What ``measure`` reads of a ``Recorder``: its copy of the results and dead-letter streams."""

    def __init__(self, outcomes: list[Outcome], dead: list[VisitDetector]) -> None:
        self._outcomes, self._dead = outcomes, dead

    def outcomes(self) -> list[Outcome]:
        return self._outcomes

    def dead_letters(self) -> list[VisitDetector]:
        return self._dead


# --------------------------------------------------------------------------- processed twice


def test_processed_twice_counts_visit_detectors_with_several_succeeded_or_failed_records() -> None:
    outcomes = [
        outcome("g1", 0, "succeeded", 1), outcome("g1", 0, "succeeded", 9),  # processed again
        outcome("g1", 1, "failed", 2, "CalibrationError: too few stars"), outcome("g1", 1, "succeeded", 8),
        outcome("g2", 0, "ignored", 3), outcome("g2", 0, "ignored", 4),  # ignored: nothing processed
        outcome("g2", 1, "succeeded", 5),
    ]  # fmt: skip
    assert processed_twice(outcomes) == [("g1", 0), ("g1", 1)]


def test_processed_twice_leaves_out_redeliveries_the_ledger_recognised() -> None:
    outcomes = [
        outcome("g1", 0, "succeeded", 1), outcome("g1", 0, "succeeded", 9, "already done: 3 alerts confirmed by a1"),
        outcome("g1", 1, "failed", 2, "CalibrationError: too few stars"),
        outcome("g1", 1, "failed", 8, "already failed: CalibrationError: too few stars (by a1; not tried again)"),
        # A reason that only mentions it further on is not a recognised redelivery.
        outcome("g2", 0, "succeeded", 3), outcome("g2", 0, "failed", 7, "ImageTimeout: not already done"),
    ]  # fmt: skip
    assert processed_twice(outcomes) == [("g2", 0)]


# --------------------------------------------------------------------------- recovery and stall


def test_recovery_is_the_first_outcome_after_the_fault_ended() -> None:
    injected = Injected(T0 + 10, T0 + 30)
    outcomes = [outcome("g1", 0, "succeeded", 20), outcome("g1", 1, "succeeded", 34.5),
                outcome("g2", 0, "succeeded", 32)]  # fmt: skip
    assert recovery_s(injected, outcomes, planned=4) == pytest.approx(2.0)


def test_recovery_is_zero_if_the_night_was_done_when_the_fault_ended_and_none_if_not() -> None:
    injected = Injected(T0 + 10, T0 + 30)
    outcomes = [outcome("g1", 0, "succeeded", 5), outcome("g1", 1, "succeeded", 6), outcome("g1", 1, "succeeded", 7)]
    assert recovery_s(injected, outcomes, planned=2) == 0.0
    assert recovery_s(injected, outcomes, planned=3) is None  # one still missing, nothing came after
    assert recovery_s(injected, [], planned=0) is None


def test_recovery_of_a_killed_activator_is_the_outcome_of_the_visit_detector_it_held() -> None:
    injected = Injected(T0 + 10, T0 + 10, hit=("g1", 1))
    outcomes = [outcome("g1", 0, "succeeded", 11), outcome("g1", 1, "succeeded", 40), outcome("g1", 1, "failed", 45)]
    assert recovery_s(injected, outcomes, planned=2) == pytest.approx(30.0)
    early = [outcome("g1", 1, "succeeded", 8)]  # recorded just before the kill landed
    assert recovery_s(injected, early, planned=2) == 0.0
    assert recovery_s(injected, outcomes[:1], planned=2) is None  # what it held never got an outcome


def test_recovery_measured_by_the_fault_itself_wins() -> None:
    injected = Injected(T0 + 10, T0 + 12, recovered_at=T0 + 19, hit=("g1", 0))
    assert recovery_s(injected, [outcome("g1", 0, "succeeded", 13)], planned=1) == pytest.approx(7.0)


def test_stall_is_the_longest_gap_from_the_last_record_before_the_fault_on() -> None:
    times = [T0 + s for s in (60.0, 0.0, 50.0, 58.0, 61.0)]  # unordered; the 0 -> 50 gap is before the fault
    assert stall_s(times, since=T0 + 52) == pytest.approx(8.0)  # 50 (the last before it) -> 58
    assert stall_s(times, since=T0 + 70) is None  # nothing after the fault
    assert stall_s([T0 + 1.0, T0 + 4.0], since=T0) == pytest.approx(3.0)  # nothing before it


# --------------------------------------------------------------------------- measure


def test_measure_counts_lost_dead_lettered_twice_and_duplicate_alerts_of_the_night(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outcomes = [
        outcome("g1", 0, "succeeded", 1), outcome("g1", 0, "succeeded", 40),
        outcome("g1", 1, "failed", 2, "flow failed: RuntimeError: CalibrationError: too few stars"),
        outcome("g2", 0, "succeeded", 3, "already done: 2 alerts confirmed by a1"),
        outcome("g9", 1, "succeeded", 4),  # another night's
    ]  # fmt: skip
    recorder = _Recorder(outcomes, dead=[("g2", 1), ("g9", 0)])
    alerts = [Record(b"", key, {"group": group.encode()})
              for key, group in ((b"a", "g1"), (b"a", "g1"), (b"b", "g2"), (b"c", "g9"))]  # fmt: skip
    monkeypatch.setattr(kafka, "read_records", lambda *_args, **_kwargs: alerts)
    injected = Injected(T0 + 30, T0 + 35, "Redis wiped")

    measured = measure(Settings(), recorder, "redis-restart", 2, T0, ["g1", "g2"], (0, 1), injected)  # type: ignore[arg-type]

    assert measured.planned == [("g1", 0), ("g1", 1), ("g2", 0), ("g2", 1)]
    assert measured.lost == [("g2", 1)]
    assert measured.dead_lettered == [("g2", 1)]
    assert measured.twice == [("g1", 0)]
    assert (measured.alerts, measured.unique_alerts, measured.duplicate_alerts) == (3, 2, 1)
    assert measured.recovery_s == pytest.approx(5.0)
    assert measured.failures == ["CalibrationError: too few stars"]
    assert measured.statuses() == {"succeeded": 2, "failed": 1, "already done": 1}


def test_a_killed_activator_recovers_when_its_entry_is_taken_and_the_notes_give_its_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka, "read_records", lambda *_args, **_kwargs: [])
    recorder = _Recorder([outcome("g1", 0, "succeeded", 5), outcome("g1", 1, "succeeded", 31)], dead=[])
    killed = Injected(T0 + 10, T0 + 10, "SIGKILL", hit=("g1", 1), recovered_at=T0 + 21.5)
    measured = measure(Settings(), recorder, "activator-kill", 1, T0, ["g1"], (0, 1), killed)  # type: ignore[arg-type]
    assert measured.recovery_s == pytest.approx(11.5)  # kill -> taken by another activator, not -> its outcome
    assert measured.notes == ["its visit-detector's outcome 21 s after the kill"]


def test_measure_marks_the_alerts_unknown_when_the_topic_cannot_be_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable(*_args: object, **_kwargs: object) -> list[Record]:
        raise TimeoutError("no message for 20 s")

    monkeypatch.setattr(kafka, "read_records", unreadable)
    recorder = _Recorder([outcome("g1", 0, "succeeded", 1)], dead=[])
    measured = measure(Settings(), recorder, "kafka-stop", 1, T0, ["g1"], (0,), Injected(T0, T0 + 1))  # type: ignore[arg-type]
    assert (measured.alerts, measured.unique_alerts) == (-1, -1)
    assert measured.lost == []
    table_row = _table_row(render_section([Row("kafka-stop", "Kafka stopped", [measured], None)], {}, META))
    assert table_row[5] == "**?**"  # duplicate alerts unknown (not 0)


# --------------------------------------------------------------------------- the report


def _table_row(section: str) -> list[str]:
    """The cells of the section's only fault row."""
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| fault |")]
    assert len(rows) == 1
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_the_table_bolds_non_zero_losses_and_duplicates_only() -> None:
    clean = result(repeat=1)
    bad = result(repeat=2, lost=[("g2", 1)], alerts=9, unique_alerts=8, recovery_s=None)
    row = Row("redis-restart", "Redis restarted without persistence", [clean, bad], None)

    cells = _table_row(render_section([row], {}, META))

    title, repeats, planned, lost, twice, duplicates, recovery = cells[:7]
    assert (title, repeats, planned) == ("Redis restarted without persistence", "2", "8")
    assert (lost, twice, duplicates) == ("**1**", "0", "**1**")
    assert recovery == "2.5 / 2.5 s (1 never)"


def test_the_section_names_what_was_lost_and_says_why_a_fault_does_not_apply() -> None:
    bad = result(lost=[("g2", 1)], twice=[("g1", 0)])
    rows = [Row("redis-restart", "Redis restarted", [bad], None),
            Row("kafka-restart", "Kafka restarted", [], "not survivable here: topics in memory")]  # fmt: skip

    section = render_section(rows, {"redis-restart": Path("bench/results/faults-redis-restart.png")}, META)

    assert section.startswith(SECTION + "\n")
    assert "| Kafka restarted | 0 | - | - | - | - | - | not survivable here: topics in memory |" in section
    assert "[redis-restart](bench/results/faults-redis-restart.png)" in section
    assert "- redis-restart #1 (fault at " in section
    assert "lost 1: g2 det001; processed twice 1: g1 det000" in section


def test_a_clean_repeat_has_no_evidence_line() -> None:
    section = render_section([Row("baseline", "none (baseline)", [result(fault="baseline")], None)], {}, META)
    assert "Losses and duplicates" not in section
    cells = _table_row(section)
    assert cells[3:7] == ["0", "0", "0", "-"]  # no recovery for the baseline


def test_summarise_gives_the_counts_notes_and_commonest_failures_of_a_repeat() -> None:
    failures = ["CalibrationError: too few stars"] * 2 + ["ImageTimeout: no raw image"]
    measured = result(lost=[("g2", 1)], twice=[("g1", 0)], alerts=10, unique_alerts=8, recovery_s=None,
                      failures=failures, notes=["restarted before it: redis"])  # fmt: skip
    assert summarise(measured) == (
        "redis-restart #1: 4 planned, 1 lost, 1 twice, 2 duplicate alerts, recovery never; Redis wiped; "
        "restarted before it: redis; failed: CalibrationError: too few stars (2); "
        "failed: ImageTimeout: no raw image (1)"
    )


def test_replace_section_replaces_only_its_own_section(tmp_path: Path) -> None:
    path = tmp_path / "RELIABILITY.md"
    replace_section(path, f"{SECTION}\n\nfirst run\n")
    assert path.read_text() == f"# Reliability\n\n{SECTION}\n\nfirst run\n"

    path.write_text(f"# Reliability\n\nintro\n\n{SECTION}\n\nfirst run\n\n## Fuzzing\n\nkept\n")
    replace_section(path, f"{SECTION}\n\nsecond run\n")
    assert path.read_text() == f"# Reliability\n\nintro\n\n{SECTION}\n\nsecond run\n\n## Fuzzing\n\nkept\n"
