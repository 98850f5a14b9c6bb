"""The night simulation's measured inputs (``bench.night_sim --measured``), from the files the benchmarks write.

- Pod start: ``bench/results/visit189.json`` (``bench.bench_visit189``): an activator process spawned ->
  reading the work stream (imports, its flow run, its clients), each started alone, as a pod on a node
  of its own would be. A Kubernetes pod adds scheduling and the image pull.
- Processing (image landed -> outcome): a full LSSTCam CCD's compute, ``compute_4096_s`` in
  ``bench/results/workers.json`` (``bench.bench_workers``), plus the orchestration overhead per
  visit-detector at the highest rate the orchestration tier sustained within its limits on PostgreSQL
  (``capacity.json``), drawn independently.
- API latency: ``bench/results/burst.json`` (``bench.bench_burst``): the autoscaler's run creations on
  PostgreSQL, at the shipped number in flight: the first run's latency and the intervals between runs.
  The simulation queues every decision's runs behind the ones still being created.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESULTS = Path("bench/results")
BURST_MODE = "pp autoscale, 4 in flight"


@dataclass(frozen=True)
class Measured:
    pod_start_s: tuple[float, ...]
    processing_s: tuple[float, ...]  # compute x overhead: every pair, so draws from it are independent
    first_creation_s: tuple[float, ...]
    creation_interval_s: tuple[float, ...]
    sources: str  # which files and which of their samples, for the report

    def describe(self) -> str:
        def med(values: tuple[float, ...]) -> str:
            return f"median {np.median(values):.2f} s, p95 {np.percentile(values, 95):.2f} s, n={len(values)}"

        return (f"measured pod start ({med(self.pod_start_s)}), processing ({med(self.processing_s)}), run creation "
                f"(first {med(self.first_creation_s)}; then one every {med(self.creation_interval_s)})")  # fmt: skip


def load(results: Path = RESULTS) -> Measured:
    """The measured inputs; FileNotFoundError naming the benchmark to run if one of its files is missing."""
    capacity, workers, bursts, visit189 = (_read(results / name, command) for name, command in (
        ("capacity.json", "python -m bench.bench_capacity"), ("workers.json", "python -m bench.bench_workers"),
        ("burst.json", "python -m bench.bench_burst"),
        ("visit189.json", "python -m bench.bench_visit189")))  # fmt: skip
    steps = [s for s in capacity["steps"] if s["database"] == "postgresql" and s["variant"] == "steps as task runs"]
    within = [s for s in steps if np.percentile(s["overhead_s"], 95) <= 0.4] or steps
    step = max(within, key=lambda s: s["offered_per_s"])
    compute = workers["compute_4096_s"]
    processing = tuple(float(c + o) for c in compute for o in step["overhead_s"])
    mine = [b for b in bursts if b["database"] == "postgresql" and b["mode"] == BURST_MODE]
    if not mine:
        raise ValueError(f"no '{BURST_MODE}' bursts on PostgreSQL in {results / 'burst.json'}")
    first = tuple(float(b["created_s"][0]) for b in mine)
    intervals = tuple(float(x) for b in mine for x in np.diff(b["created_s"]))
    starts = tuple(float(x) for x in visit189["solo_start_s"])
    sources = (f"`visit189.json` ({len(starts)} activators started alone), `capacity.json` (PostgreSQL: overhead at "
               f"{step['offered_per_s']:.0f} visit-detectors/s, steps as task runs), `workers.json` ({len(compute)} "
               "full-CCD computes), "
               f"`burst.json` ({len(mine)} bursts of 189 runs, {BURST_MODE}, PostgreSQL)")  # fmt: skip
    return Measured(starts, processing, first, intervals, sources)


def _read(path: Path, command: str) -> dict:  # type: ignore[type-arg]
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `{command}` first (it is part of `make bench`)")
    return json.loads(path.read_text())  # type: ignore[no-any-return]
