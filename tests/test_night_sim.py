"""The autoscaler night simulation on tiny nights: fast behavioural checks of the model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench.night_inputs import BURST_MODE, Measured, load
from bench.night_sim import SECTION, NightConfig, main, plan_night, replace_section, simulate
from prompt_processing.autoscaler.rules import KNOWN_STRATEGIES

TINY = NightConfig(n_visits=5, detectors=4, min_replicas=1, max_replicas=50, seed=7)


@pytest.mark.parametrize("strategy", KNOWN_STRATEGIES)
def test_every_entry_is_processed_exactly_once(strategy: str) -> None:
    night = plan_night(TINY)
    result = simulate(night, TINY, strategy)
    assert len(result.taken_count) == 5 * 4
    assert (result.taken_count == 1).all()
    assert np.isfinite(result.done_s).all()
    assert (result.start_s >= night.land_s).all()  # nobody processes before the image lands
    assert (result.take_s >= np.repeat(night.visit_event_s, 4)).all()  # nor takes an entry before its event
    assert np.isfinite(result.job_seconds)  # and every job has exited by the end


@pytest.mark.parametrize("strategy", ["default", "accurate", "eager"])
def test_concurrent_jobs_never_exceed_max(strategy: str) -> None:
    cfg = replace(TINY, max_replicas=6, min_replicas=2)
    result = simulate(plan_night(cfg), cfg, strategy)
    assert result.jobs.max() <= 6
    if strategy == "eager":
        assert result.jobs.max() == 6  # eager fills every free slot while entries wait


def test_custom_can_exceed_max_as_in_keda() -> None:
    # KEDA's custom caps new jobs at MaxReplicaCount, not at MaxReplicaCount - running
    cfg = replace(TINY, max_replicas=6, min_replicas=2)
    assert simulate(plan_night(cfg), cfg, "custom").jobs.max() > 6


@pytest.mark.parametrize("strategy", ["eager", "accurate"])
def test_instant_pods_and_huge_max_take_entries_within_one_poll(strategy: str) -> None:
    cfg = replace(TINY, max_replicas=100_000, min_replicas=0, pod_start_median_s=1e-9, pod_start_sigma=0.0)
    night = plan_night(cfg)
    result = simulate(night, cfg, strategy)
    waited = result.take_s - np.repeat(night.visit_event_s, cfg.detectors)
    assert waited.max() <= cfg.poll_s + 1e-6
    assert (result.start_s == night.land_s).all()  # so no image ever waits for a job


def test_results_are_deterministic_for_a_seed() -> None:
    first = simulate(plan_night(TINY), TINY, "eager")
    again = simulate(plan_night(TINY), TINY, "eager")
    other = simulate(plan_night(replace(TINY, seed=8)), replace(TINY, seed=8), "eager")
    for name in ("tick_s", "backlog", "jobs", "take_s", "start_s", "done_s"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert (first.jobs_created, first.jobs_wasted, first.job_seconds) == (
        again.jobs_created,
        again.jobs_wasted,
        again.job_seconds,
    )
    assert not np.array_equal(first.done_s, other.done_s)


def test_replace_section_keeps_other_sections(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Benchmarks\n\n## Fan-out (issue 2)\n\nfan-out\n\n{SECTION}\n\nold\n\n## Later\n\nlater\n")
    replace_section(path, f"{SECTION}\n\nnew\n")
    text = path.read_text()
    assert "fan-out" in text and "later" in text and "new" in text and "old" not in text
    assert text.index("## Fan-out") < text.index(SECTION) < text.index("## Later")


def test_main_writes_its_section_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output, plot = tmp_path / "BENCHMARKS.md", tmp_path / "night.png"
    output.write_text("# Benchmarks\n\n## Fan-out (issue 2)\n\nkept\n")
    assert main(["--hours", "0.03", "--output", str(output), "--plot", str(plot)]) == 0
    text = output.read_text()
    assert "kept" in text and SECTION in text and "**Recommendation: `" in text
    assert "python -m bench.night_sim --hours 0.03" in text
    assert plot.stat().st_size > 0
    capsys.readouterr()


def _measured(first_s: float, interval_s: float) -> Measured:
    return Measured(pod_start_s=(1e-9,), processing_s=(5.0,), first_creation_s=(first_s,),
                    creation_interval_s=(interval_s,), sources="test")  # fmt: skip


def test_measured_run_creation_queues_each_decisions_runs_behind_the_api() -> None:
    cfg = replace(TINY, max_replicas=100_000, min_replicas=0, detectors=20, measured=_measured(3.0, 0.5))
    night = plan_night(cfg)
    result = simulate(night, cfg, "eager")
    first_visit = result.take_s[:20] - night.visit_event_s[0]
    # 20 runs asked for within one poll: the k-th exists 3 s + (k - 1) x 0.5 s after the decision, at the earliest
    assert sorted(first_visit)[-1] >= 3.0 + 19 * 0.5
    assert (night.processing_s == 5.0).all()  # processing drawn from the measured samples
    instant = simulate(night, replace(cfg, measured=_measured(0.0, 0.0)), "eager")
    assert (instant.take_s - np.repeat(night.visit_event_s, 20)).max() <= cfg.poll_s + 1e-6


def test_measured_inputs_come_from_the_benchmarks_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"bench\.bench_capacity"):
        load(tmp_path)
    steps = [{"database": "postgresql", "variant": "steps as task runs", "offered_per_s": r, "overhead_s": o}
             for r, o in ((2, [0.1, 0.2]), (4, [0.3, 0.35]), (6, [0.5, 0.9]))]  # fmt: skip
    (tmp_path / "capacity.json").write_text(json.dumps({"steps": steps}))
    (tmp_path / "visit189.json").write_text(json.dumps({"solo_start_s": [4.0, 6.0], "bursts": []}))
    (tmp_path / "workers.json").write_text(json.dumps({"compute_4096_s": [10.0, 12.0]}))
    bursts = [{"database": "postgresql", "mode": BURST_MODE, "created_s": [0.5, 0.6, 0.8]},
              {"database": "sqlite", "mode": BURST_MODE, "created_s": [9.0, 19.0]}]  # fmt: skip
    (tmp_path / "burst.json").write_text(json.dumps(bursts))
    m = load(tmp_path)
    assert m.pod_start_s == (4.0, 6.0)
    assert sorted(m.processing_s) == pytest.approx([10.3, 10.35, 12.3, 12.35])  # the highest rate within 400 ms p95
    assert m.first_creation_s == (0.5,)
    assert m.creation_interval_s == pytest.approx((0.1, 0.2))
