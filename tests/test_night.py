"""A night's figures from its outcomes (pure)."""

from __future__ import annotations

import pytest

from prompt_processing.reporting.night import Night
from prompt_processing.reporting.outcomes import Outcome, still_failed

T0 = 1_796_100_000.0


def outcome(group: str, detector: int, status: str, at_s: float, **fields: object) -> Outcome:
    return Outcome("LATISS", group, detector, status, T0 + at_s, day_obs="20261130", **fields)  # type: ignore[arg-type]


def test_each_visit_detector_counts_once_with_its_latest_outcome() -> None:
    night = Night("LATISS", "20261130")
    records = [
        outcome("g1", 0, "failed", 1, reason="no raw image", error="ImageTimeout", stopped_at="wait_for_images"),
        outcome("g2", 0, "failed", 2, reason="missing bias", error="ObjectMissing", stopped_at="preload"),
        outcome("g3", 0, "failed", 3, reason="no raw image 3", error="ImageTimeout", stopped_at="wait_for_images"),
        outcome("g4", 0, "succeeded", 4, latency_s=0.5, n_alerts=5),
        outcome("g5", 0, "succeeded", 5, latency_s=80.0, n_alerts=2),
        outcome("g1", 0, "succeeded", 9, latency_s=1.5, n_alerts=4, rerun_of="run-1"),  # the rerun
    ]
    for record in records:
        night.add(record)
    assert night.counts() == {"succeeded": 3, "failed": 2, "ignored": 0}
    assert night.records == 6
    assert night.failures_by_error() == [("ImageTimeout in wait_for_images", 1, "no raw image 3"),
                                         ("ObjectMissing in preload", 1, "missing bias")]  # fmt: skip
    summary = night.summary()
    assert summary["visit_detectors"] == 5 and summary["alerts_recorded"] == 11
    assert summary["latency_p50_s"] == pytest.approx(1.5) and summary["latency_max_s"] == 80.0
    assert summary["within_60s"] == pytest.approx(2 / 3)
    assert [o.group for o in still_failed(records)] == ["g2", "g3"]


def test_a_late_record_of_an_earlier_attempt_does_not_hide_the_latest() -> None:
    night = Night("LATISS", "20261130")
    night.add(outcome("g1", 0, "succeeded", 9, latency_s=1.0))
    night.add(outcome("g1", 0, "failed", 1, reason="old"))  # read after, recorded before
    assert night.counts()["succeeded"] == 1 and night.counts()["failed"] == 0


def test_table_rows_put_failures_first_with_a_rerun_link_and_are_capped() -> None:
    night = Night("LATISS", "20261130")
    for i in range(5):
        night.add(outcome(f"ok{i}", 0, "succeeded", i, latency_s=1.0))
    night.add(outcome("bad", 0, "failed", 10, reason="corrupt FITS", run_id="task-9"))
    rows = night.table_rows(3, lambda o: f"https://ui/rerun/{o.run_id}")
    assert [row["visit"] for row in rows] == ["bad", "ok4", "ok3"]
    assert rows[0]["rerun form"] == "https://ui/rerun/task-9" and rows[1]["rerun form"] == ""
    assert rows[0]["reason"] == "corrupt FITS" and rows[1]["landed -> alerts (s)"] == 1.0


def test_markdown_summary_states_the_requirement_share_and_failures() -> None:
    night = Night("LATISS", "20261130")
    night.add(outcome("g1", 0, "succeeded", 1, latency_s=2.0))
    night.add(outcome("g2", 0, "failed", 2, reason="no raw image", error="ImageTimeout", stopped_at="wait_for_images"))
    text = night.markdown()
    assert "2 visit-detectors (2 outcome records, reruns included): 1 succeeded, 1 failed, 0 ignored." in text
    assert "100.0% within 60 s" in text
    assert "| ImageTimeout in wait_for_images | 1 | no raw image |" in text
