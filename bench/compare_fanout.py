"""Did a change make the fan-out slower? The fan-out benchmark of this tree against a git revision.

`python -m bench.compare_fanout --baseline-rev <rev> --output BENCHMARKS.md`

Checks the baseline revision out into a temporary git worktree, then runs each tree's own
`python -m bench.bench_fanout` alternately (baseline, this tree, baseline, ...) ``--pairs`` times,
so machine noise falls on both alike, with the same venv and the same knobs. Each run starts its
own Redis and Kafka-protocol broker. The figures are read from the markdown section each run
writes (the format both trees share) and compared as medians over the runs: the write of one
LSSTCam visit by ``StreamFanOut`` (whatever it is in each tree: a hand-packed MULTI/EXEC before
issue 13, a server-side script since), and the service end to end (latency p50/p99 at 20 visits/s,
burst throughput).
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from rich.progress import Progress

from bench.bench_fanout import _replace_section

ROOT = Path(__file__).resolve().parent.parent
PLOT = Path("bench/results/fanout_write_latency.png")  # where bench_fanout draws
METRICS = {
    # name: (pattern in bench_fanout's section, unit, True if larger is better)
    "StreamFanOut write of one visit, p50": (r"\| StreamFanOut: [^|]*\| ([\d.]+) \|", "ms", False),
    "StreamFanOut write of one visit, p99": (r"\| StreamFanOut: [^|]*\| [\d.]+ \| ([\d.]+) \|", "ms", False),
    "service latency p50 (20 visits/s)": (r"\| latency p50 [^|]*\| ([\d.]+) ms", "ms", False),
    "service latency p99": (r"\| latency p99 \| ([\d.]+) ms", "ms", False),
    "service burst throughput": (r"\| sustained throughput [^|]*\| ([\d.]+) visits/s", "visits/s", True),
}


def run_bench(tree: Path, knobs: list[str]) -> dict[str, float]:
    """One run of ``tree``'s fan-out benchmark; its figures by METRICS name."""
    with tempfile.NamedTemporaryFile("w+", suffix=".md") as out:
        command = [sys.executable, "-m", "bench.bench_fanout", "--output", out.name, *knobs]
        subprocess.run(command, cwd=tree, check=True, capture_output=True, text=True)
        text = Path(out.name).read_text()
    figures = {}
    for name, (pattern, _unit, _larger) in METRICS.items():
        match = re.search(pattern, text)
        if match is None:
            raise RuntimeError(f"{tree}: no {name!r} in the benchmark's output")
        figures[name] = float(match.group(1))
    return figures


def render(
    rev: str, pairs: int, knobs: list[str], baseline: list[dict[str, float]], ours: list[dict[str, float]]
) -> str:
    command = f"python -m bench.compare_fanout --baseline-rev {rev} --pairs {pairs} {' '.join(knobs)}".rstrip()
    lines = [
        "## Fan-out before and after the layout change (issue 8)",
        "",
        f"Command: `{command}`, run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} (Python "
        f"{platform.python_version()}); each tree's own `bench.bench_fanout`, alternated {pairs} times "
        "(baseline first), medians over the runs.",
        "",
        f"| measure | baseline `{rev}` | this tree | this tree / baseline |",
        "|---|---:|---:|---:|",
    ]
    for name, (_pattern, unit, larger_better) in METRICS.items():
        before = statistics.median(run[name] for run in baseline)
        after = statistics.median(run[name] for run in ours)
        ratio = after / before
        verdict = "within 5%" if abs(ratio - 1) <= 0.05 else "better" if (ratio > 1) == larger_better else "worse"
        lines.append(f"| {name} | {before:.2f} {unit} | {after:.2f} {unit} | {ratio:.2f} ({verdict}) |")
    lines += [
        "",
        "Where `StreamFanOut` is the same code in both trees (as across issue 8, where only its module moved), its "
        "ratio shows how far this machine's noise alone moves a figure between runs.",
        "",
        "Runs (baseline / this tree):",
        "",
    ]
    for name in METRICS:
        runs_before, runs_after = (", ".join(f"{run[name]:g}" for run in runs) for runs in (baseline, ours))
        lines.append(f"- {name}: {runs_before} / {runs_after}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-rev", required=True, help="git revision to compare against")
    parser.add_argument("--pairs", type=int, default=3, help="baseline/this-tree run pairs")
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--paced", type=int, default=300)
    parser.add_argument("--burst", type=int, default=3000)
    args = parser.parse_args()
    knobs = ["--rounds", str(args.rounds), "--paced", str(args.paced), "--burst", str(args.burst)]
    rev = subprocess.run(["git", "rev-parse", "--short", args.baseline_rev], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    baseline: list[dict[str, float]] = []
    ours: list[dict[str, float]] = []
    plot = ROOT / PLOT  # each run redraws it; keep the one that matches its own BENCHMARKS.md section
    kept_plot = plot.read_bytes() if plot.exists() else None
    with tempfile.TemporaryDirectory(prefix="pp-baseline-") as parent:
        worktree = Path(parent) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), rev], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        try:
            with Progress() as progress:
                task = progress.add_task(f"fan-out benchmark, {rev} vs this tree", total=2 * args.pairs)
                for _ in range(args.pairs):
                    baseline.append(run_bench(worktree, knobs))
                    progress.advance(task)
                    ours.append(run_bench(ROOT, knobs))
                    progress.advance(task)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=False)
            if kept_plot is not None:
                plot.write_bytes(kept_plot)
    section = render(rev, args.pairs, knobs, baseline, ours)
    _replace_section(args.output, section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
