"""Capacity of the orchestration tier: `make bench` (python -m bench.bench_capacity --output BENCHMARKS.md).

For each Prefect database (SQLite, PostgreSQL), in a child process with its own stack: start N activators
(``bench.capacity_activator``: the real activator flow, image work replaced by a calibrated sleep), then
offer LSSTCam visit-detectors at rising rates (each second, one visit fanned out to ``rate`` detectors
through the fan-out's script) for ``--step-s`` seconds per rate, until a visit-detector's overhead p95
passes 400 ms or the activators stop keeping up. Per rate: the overhead (wall time less compute and image
wait) and queue wait percentiles, the sustained rate, what the Prefect server stored per visit-detector
(rows by table: task runs, their states, logs, events, artifacts), and the server's and the activators'
CPU per visit-detector. Samples: bench/results/capacity.json; plot: bench/results/capacity.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from bench.prefect_env import isolate_prefect

RESULTS = Path("bench/results")
OVERHEAD_LIMIT_S = 0.4
KEEP_UP = 0.9  # sustained / offered below this: the activators fell behind
VARIANTS = {"steps as task runs": {}, "steps inline": {"PP_VISIT__STEP_TASK_RUNS": "false"}}


@dataclass
class Step:
    """One offered rate on one database."""

    database: str
    variant: str  # the steps as task runs of their own, or inline (PP_VISIT__STEP_TASK_RUNS)
    activators: int
    offered_per_s: float
    offered: int
    completed: int
    failed: int
    sustained_per_s: float
    overhead_s: list[float]
    queue_wait_s: list[float]
    rows_per_vd: dict[str, float]
    server_cpu_per_vd_s: float
    activators_cpu_per_vd_s: float

    def p(self, what: str, q: float) -> float:
        values = getattr(self, what)
        return float(np.percentile(values, q)) if values else float("nan")

    @property
    def within(self) -> bool:
        return self.p("overhead_s", 95) <= OVERHEAD_LIMIT_S and self.sustained_per_s >= KEEP_UP * self.offered_per_s


# --------------------------------------------------------------------------- child: one database


def child(args: argparse.Namespace) -> int:
    state = Path(tempfile.mkdtemp(prefix=f"pp-bench-capacity-{args.child}-"))
    port = isolate_prefect(state)
    from bench.capacity_harness import Calibration, CapacityStack  # noqa: PLC0415 - after Prefect's settings

    calibration = Calibration(args.compute_s, args.io_s)
    steps: list[Step] = []
    extra: dict[str, Any] = {}
    with CapacityStack.running(state, port, args.child) as stack:
        for variant, env in VARIANTS.items():
            stack.start_activators(args.activators, calibration, env)
            warm_up(stack, args.activators)
            for rate in args.rates:
                step = run_step(stack, args.child, variant, args.activators, rate, args.step_s)
                steps.append(step)
                print(f"{args.child}, {variant}, {rate}/s: overhead p95 {step.p('overhead_s', 95) * 1e3:.0f} ms, "
                      f"sustained {step.sustained_per_s:.2f}/s, server CPU {step.server_cpu_per_vd_s * 1e3:.0f} ms/vd",
                      flush=True)  # fmt: skip
                if not step.within:
                    break
            extra.setdefault("activator_rss_bytes", stack.activators_rss_bytes())
            stack.stop_activators()
        extra["activator_start_s"] = stack.start_s
    args.samples.write_text(json.dumps({"steps": [asdict(s) for s in steps], **extra}))
    return 0


def warm_up(stack: Any, n: int) -> None:
    """Every activator's first visit-detector (its clients and caches warm), not measured."""
    from bench.capacity_harness import new_prefix  # noqa: PLC0415

    prefix = new_prefix("warm")
    stack.announce(f"{prefix}0", range(n))
    done = stack.wait_outcomes(prefix, n, 120)
    if len(done) < n or any(r["status"] != "succeeded" for r in done):
        raise RuntimeError(f"warm-up: {len(done)} of {n} outcomes, not all succeeded: {done[:1]}")
    stack.quiesce()


def run_step(stack: Any, database: str, variant: str, activators: int, rate: int, step_s: int) -> Step:
    """Offer ``rate`` visit-detectors a second for ``step_s`` seconds; measure until all are done."""
    from bench.capacity_harness import new_prefix  # noqa: PLC0415

    prefix = new_prefix(f"cap{rate}")
    rows_before, server_before, act_before = stack.rows(), stack.server_cpu_s(), stack.activators_cpu_s()
    started = time.time()
    for i in range(step_s):
        time.sleep(max(0.0, started + i - time.time()))
        stack.announce(f"{prefix}{i:04d}", range(rate))
    offered = rate * step_s
    done = stack.wait_outcomes(prefix, offered, timeout_s=step_s * 3 + 60)
    finished = sorted(float(r["started_at"]) + float(r["wall_s"]) for r in done)
    act_cpu = stack.activators_cpu_s() - act_before
    stack.quiesce()  # the server's recorders have written what the step sent
    rows_after, server_cpu = stack.rows(), stack.server_cpu_s() - server_before
    n = max(1, len(done))
    return Step(
        database=database, variant=variant, activators=activators, offered_per_s=float(rate), offered=offered,
        completed=len(done),
        failed=sum(r["status"] != "succeeded" for r in done), sustained_per_s=throughput(finished),
        overhead_s=[float(r["overhead_s"]) for r in done],
        queue_wait_s=[float(r["pickup_ms"]) / 1e3 for r in done],
        rows_per_vd={k: (rows_after[k] - rows_before[k]) / n for k in rows_after},
        server_cpu_per_vd_s=server_cpu / n, activators_cpu_per_vd_s=act_cpu / n,
    )  # fmt: skip


def throughput(finished: list[float]) -> float:
    """Completions per second between the first and the last (n - 1 intervals); 0 with fewer than 2."""
    return (len(finished) - 1) / (finished[-1] - finished[0]) if len(finished) > 1 else 0.0


# --------------------------------------------------------------------------- parent: report


def sustained(steps: list[Step], database: str, variant: str) -> float:
    """The highest sustained rate among the rates within the limits (0 if none was)."""
    mine = [s for s in steps if (s.database, s.variant) == (database, variant) and s.within]
    return max((s.sustained_per_s for s in mine), default=0.0)


def render(steps: list[Step], meta: dict[str, Any], args: argparse.Namespace, elapsed_s: float) -> str:
    argv = " ".join(sys.argv[1:])
    lines = [
        "## Capacity of the orchestration tier (issue 13)",
        "",
        f"Command: `python -m bench.bench_capacity {argv}` (in `make bench`), run {datetime.now(UTC):%Y-%m-%d %H:%M} "
        f"UTC on {platform.node()} ({os.cpu_count()} cores, Python {platform.python_version()}), "
        f"{elapsed_s / 60:.0f} min. "
        f"{args.activators} activator processes (the real flow; image work replaced by sleeping {args.compute_s} s "
        f"of compute and {args.io_s} s of I/O per visit-detector, the workers benchmark's 512 x 512 figures: "
        "`bench/capacity_activator.py`), Redis, Tansu, the Prefect server and the alerts ledger (PostgreSQL) "
        f"on this machine. Each rate is offered for {args.step_s} s as one LSSTCam visit a second fanned out to "
        "`rate` detectors. Overhead = a visit-detector's wall time less compute and image wait (the sleep's I/O "
        f"part included); queue wait = fanned out -> picked up. The ramp stops at the first rate whose overhead "
        f"p95 passes {OVERHEAD_LIMIT_S * 1e3:.0f} ms or whose sustained rate falls under {KEEP_UP:.0%} of the offer.",
        "",
        "| Prefect on | steps | offered /s | done | sustained /s | overhead p50 / p95 | queue wait p50 / p95 "
        "| server CPU / vd | activators' CPU / vd |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in steps:
        lines.append(
            f"| {s.database} | {s.variant.removeprefix('steps ')} | {s.offered_per_s:.0f} | "
            f"{s.completed} of {s.offered}"
            f"{f' ({s.failed} failed)' if s.failed else ''} | {s.sustained_per_s:.2f} | "
            f"{s.p('overhead_s', 50) * 1e3:.0f} / {s.p('overhead_s', 95) * 1e3:.0f} ms | "
            f"{s.p('queue_wait_s', 50):.2f} / {s.p('queue_wait_s', 95):.2f} s | {s.server_cpu_per_vd_s * 1e3:.0f} ms | "
            f"{s.activators_cpu_per_vd_s * 1e3:.0f} ms |"
        )
    lines += ["", "What the Prefect server stored per visit-detector (rows added over the step / visit-detectors "
              "done; a task run's state changes arrive as events and are recorded as states):", ""]  # fmt: skip
    kinds = list(steps[0].rows_per_vd) if steps else []
    lines += [f"| Prefect on | steps | offered /s | {' | '.join(kinds)} |", "|---|---|---:|" + "---:|" * len(kinds)]
    for s in steps:
        lines.append(f"| {s.database} | {s.variant.removeprefix('steps ')} | {s.offered_per_s:.0f} | "
                     + " | ".join(f"{s.rows_per_vd[k]:.1f}" for k in kinds) + " |")  # fmt: skip
    lines += ["", *_summary(steps, meta), "", f"![capacity]({RESULTS / 'capacity.png'})", ""]
    return "\n".join(lines)


def _summary(steps: list[Step], meta: dict[str, Any]) -> list[str]:
    out = []
    for database, m in meta.items():
        rates = ", ".join(f"{sustained(steps, database, v):.2f} /s with the {v}" for v in VARIANTS)
        rss = m.get("activator_rss_bytes") or [0]
        start = m.get("activator_start_s") or [0.0]
        out.append(f"- **{database}**: sustained within the limits: **{rates}** (LSSTCam needs ~5.3 visit-detectors/s "
                   f"on average, 189 in a burst). Activator RSS {np.median(rss) / 2**20:.0f} MiB "
                   f"(median of {len(rss)}); "
                   f"started (spawned -> reading the stream) in {np.median(start):.1f} s median, {max(start):.1f} s "
                   f"the slowest ({len(start)} activators, {len(start) // len(VARIANTS)} started at once)."
                   )  # fmt: skip
    return out


def plot(steps: list[Step], path: Path) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"steps as task runs": "o-", "steps inline": "s--"}
    for database, colour in (("sqlite", "tab:orange"), ("postgresql", "tab:blue")):
        for variant, style in styles.items():
            mine = [s for s in steps if (s.database, s.variant) == (database, variant)]
            if not mine:
                continue
            rates = [s.offered_per_s for s in mine]
            label = f"{database}, {variant}"
            ax1.plot(rates, [s.p("overhead_s", 95) * 1e3 for s in mine], style, color=colour, label=f"{label}, p95")
            ax2.plot(rates, [s.sustained_per_s for s in mine], style, color=colour, label=label)
    ax1.axhline(OVERHEAD_LIMIT_S * 1e3, color="grey", ls=":", label="limit")
    ax1.set(xlabel="offered visit-detectors / s", ylabel="overhead per visit-detector (ms)", yscale="log")
    top = max((s.offered_per_s for s in steps), default=1.0)
    ax2.plot([0, top], [0, top], color="grey", ls=":", label="offered")
    ax2.axhline(5.3, color="tab:green", ls="--", label="LSSTCam average")
    ax2.set(xlabel="offered visit-detectors / s", ylabel="sustained visit-detectors / s")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Orchestration tier: overhead and throughput against the offered rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--activators", type=int, default=16)
    parser.add_argument("--rates", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7, 8, 9])
    parser.add_argument("--step-s", type=int, default=30)
    parser.add_argument("--compute-s", type=float, default=1.5)
    parser.add_argument("--io-s", type=float, default=0.19)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    started = time.monotonic()
    steps: list[Step] = []
    meta: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pp-bench-capacity-") as tmp:
        for database in args.databases:
            samples = Path(tmp) / f"{database}.json"
            subprocess.run([sys.executable, "-m", "bench.bench_capacity", *sys.argv[1:], "--child", database,
                            "--samples", str(samples)], check=True)  # fmt: skip
            data = json.loads(samples.read_text())
            steps += [Step(**s) for s in data.pop("steps")]
            meta[database] = data
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "capacity.json").write_text(json.dumps({"steps": [asdict(s) for s in steps], "meta": meta}, indent=1))
    plot(steps, RESULTS / "capacity.png")
    from bench.bench_fanout import _replace_section  # noqa: PLC0415

    section = render(steps, meta, args, time.monotonic() - started)
    _replace_section(args.output, section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
