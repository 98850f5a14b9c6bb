"""One LSSTCam visit at 189 detectors, end to end: python -m bench.bench_visit189 --output BENCHMARKS.md.

In a child process with its own stack (Redis, the Kafka-protocol broker, a Prefect server on PostgreSQL,
the alerts ledger on PostgreSQL): N warm activators (``bench.capacity_activator``: the real flow, image
work replaced by the calibrated sleep) wait on the work stream; one visit is fanned out to all 189
detectors through the fan-out's script, and the time from the fan-out to each visit-detector's outcome is
measured, for N up to what memory allows, with the steps as task runs and inline. The ideal is
ceil(189 / N) x the calibrated time per visit-detector. Samples: bench/results/visit189.json; plot:
bench/results/visit189.png.
"""

from __future__ import annotations

import argparse
import json
import math
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
import psutil

from bench.bench_capacity import VARIANTS, warm_up
from bench.prefect_env import isolate_prefect

RESULTS = Path("bench/results")
DETECTORS = 189
RESERVE_BYTES = 6 * 2**30  # left to the stack, the page cache and the rest of the machine


@dataclass
class Burst:
    variant: str
    activators: int
    done_s: list[float]  # fanned out -> each outcome recorded, sorted
    failed: int
    ideal_s: float
    server_cpu_s: float  # the Prefect server's, fanned out -> the server quiet again (its recorders done)
    activators_cpu_s: float  # fanned out -> the 189th outcome
    rss_bytes: list[int]
    db_bytes_per_vd: float  # the Prefect database's growth per visit-detector (PostgreSQL)
    postgres_cpu_s: float  # PostgreSQL's (the Prefect database and the ledger), until the server is quiet again

    @property
    def last_s(self) -> float:
        return self.done_s[-1] if self.done_s else float("nan")


def memory_allows(rss_bytes: float) -> int:
    """Activators that fit in the memory available now, less ``RESERVE_BYTES``."""
    return max(1, int((psutil.virtual_memory().available - RESERVE_BYTES) // rss_bytes))


def child(args: argparse.Namespace) -> int:
    state = Path(tempfile.mkdtemp(prefix="pp-bench-visit189-"))
    port = isolate_prefect(state)
    from bench.capacity_harness import Calibration, CapacityStack, new_prefix  # noqa: PLC0415

    calibration = Calibration(args.compute_s, args.io_s)
    bursts: list[Burst] = []
    solo_start_s: list[float] = []
    with CapacityStack.running(state, port, "postgresql") as stack:
        for variant, env in VARIANTS.items():
            for _ in range(args.solo_starts):  # one alone: a start without others competing for the CPU
                stack.stop_activators()
                stack.start_activators(1, calibration, env)
                solo_start_s.append(stack.start_s[-1])
            counts, fill = list(args.activators), not args.no_fill
            while counts:
                n = counts.pop(0)
                stack.start_activators(n, calibration, env)
                warm_up(stack, n)
                rss = stack.activators_rss_bytes()
                most = min(args.max_activators, n + memory_allows(float(np.median(rss))))
                if not counts and fill and most > n:  # after the listed counts, as many as memory allows
                    counts.append(most)
                    fill = False
                prefix = new_prefix(f"v189n{n}")
                server, clients, db_bytes = stack.server_cpu_s(), stack.activators_cpu_s(), stack.db_bytes()
                postgres = stack.postgres_cpu_s()
                fanned = stack.announce(f"{prefix}0", range(DETECTORS))
                done = stack.wait_outcomes(prefix, DETECTORS, timeout_s=900)
                clients = stack.activators_cpu_s() - clients
                stack.quiesce()  # the server's recorders have written what the burst sent: its whole cost
                burst = Burst(variant, n, sorted(float(r["started_at"]) + float(r["wall_s"]) - fanned for r in done),
                              sum(r["status"] != "succeeded" for r in done),
                              math.ceil(DETECTORS / n) * calibration.per_visit_s, stack.server_cpu_s() - server,
                              clients, rss, (stack.db_bytes() - db_bytes) / DETECTORS,
                              stack.postgres_cpu_s() - postgres)  # fmt: skip
                bursts.append(burst)
                print(f"{variant}, {n} activators: 189th outcome after {burst.last_s:.1f} s (ideal "
                      f"{burst.ideal_s:.1f} s), RSS median {np.median(rss) / 2**20:.0f} MiB", flush=True)  # fmt: skip
            stack.stop_activators()
    args.samples.write_text(json.dumps({"bursts": [asdict(b) for b in bursts], "solo_start_s": solo_start_s,
                                        "start_s": stack.start_s}))  # fmt: skip
    return 0


def render(bursts: list[Burst], solo_start_s: list[float], args: argparse.Namespace, elapsed_s: float) -> str:
    lines = [
        "## One LSSTCam visit at 189 detectors, end to end (issue 13)",
        "",
        f"Command: `python -m bench.bench_visit189 {' '.join(sys.argv[1:])}` (in `make bench`), run "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}), "
        f"{elapsed_s / 60:.0f} min. "
        "Prefect server and alerts ledger on PostgreSQL. N warm activators (started and through one "
        f"visit-detector each beforehand) wait on the stream; one visit is fanned out to its {DETECTORS} detectors "
        f"by the fan-out's script. Image work is the calibrated sleep ({args.compute_s} s compute + {args.io_s} s "
        "I/O, `bench/capacity_activator.py`). Time = fanned out -> the outcome recorded; ideal = "
        "ceil(189 / N) x the sleep. The largest N is what the memory left allows at the measured RSS.",
        "",
        "| steps | activators | RSS per activator (median) | 189th outcome | ideal | median outcome | server CPU "
        "| PostgreSQL CPU | activators' CPU | Prefect database growth / vd |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in bursts:
        failed = f" ({b.failed} failed)" if b.failed else ""
        lines.append(
            f"| {b.variant.removeprefix('steps ')} | {b.activators} | {np.median(b.rss_bytes) / 2**20:.0f} MiB | "
            f"{b.last_s:.1f} s{failed} | {b.ideal_s:.1f} s | {b.done_s[len(b.done_s) // 2]:.1f} s | "
            f"{b.server_cpu_s:.1f} s | {b.postgres_cpu_s:.1f} s | {b.activators_cpu_s:.1f} s | "
            f"{b.db_bytes_per_vd / 1024:.1f} KiB |"
        )
    starts = ", ".join(f"{x:.1f} s" for x in solo_start_s)
    lines += ["", *_bends(bursts), *_night(bursts),
              f"- An activator started alone (spawned -> reading the stream: imports, its flow run, its clients): "
              f"{starts}; started together, they share the 2 cores (BENCHMARKS.md, capacity section).", "",
              f"![189 detectors]({RESULTS / 'visit189.png'})", ""]  # fmt: skip
    return "\n".join(lines)


def _night(bursts: list[Burst], visits: int = 1000, per_s: float = DETECTORS / 36.0) -> list[str]:
    """A full LSSTCam night (``visits`` x 189 visit-detectors, ``per_s`` on average), extrapolated from the
    measured per-visit-detector server CPU and database growth (median over the bursts of each variant)."""
    out = []
    for variant in VARIANTS:
        mine = [b for b in bursts if b.variant == variant]
        if not mine:
            continue
        cpu_s = float(np.median([b.server_cpu_s / DETECTORS for b in mine]))
        pg_s = float(np.median([b.postgres_cpu_s / DETECTORS for b in mine]))
        db = float(np.median([b.db_bytes_per_vd for b in mine]))
        cores = cpu_s * per_s
        out.append(f"- A full night with the {variant} ({visits} visits x {DETECTORS} = {visits * DETECTORS:,} "
                   f"visit-detectors, {per_s:.2f}/s): Prefect server CPU {cpu_s * 1e3:.0f} ms per visit-detector -> "
                   f"**{cores:.1f} cores** busy on average (a visit's 189 inside its 36 s needs the same), so "
                   f"**{math.ceil(cores / 0.5)} server process(es)** at 50 % utilisation; Prefect database growth "
                   f"{db / 1024:.1f} KiB per visit-detector -> **{db * visits * DETECTORS / 2**30:.1f} GiB a "
                   f"night** (before retention deletes it); PostgreSQL {pg_s * 1e3:.0f} ms CPU per visit-detector "
                   f"(with the ledger's) -> {pg_s * per_s:.1f} cores.")  # fmt: skip
    return out


def _bends(bursts: list[Burst]) -> list[str]:
    """Where the time stops following the ideal: the first N at more than twice it, per variant."""
    out = []
    for variant in VARIANTS:
        mine = [b for b in bursts if b.variant == variant]
        if not mine:
            continue
        best = min(mine, key=lambda b: b.last_s)
        bent = next((b for b in mine if b.last_s > 2 * b.ideal_s), None)
        where = (f"it bends at {bent.activators} activators ({bent.last_s:.1f} s against {bent.ideal_s:.1f} s ideal)"
                 if bent else "it follows the ideal within 2x at every N")  # fmt: skip
        out.append(f"- **{variant}**: fastest {best.last_s:.1f} s with {best.activators} activators; {where}. "
                   f"CPU for the burst: server {best.server_cpu_s:.0f} s + activators {best.activators_cpu_s:.0f} s "
                   f"on {os.cpu_count()} cores.")  # fmt: skip
    return out


def plot(bursts: list[Burst], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = plt.get_cmap("viridis")
    ns = sorted({b.activators for b in bursts})
    for b in bursts:
        style = "-" if b.variant == "steps as task runs" else "--"
        colour = colours(ns.index(b.activators) / max(1, len(ns) - 1))
        ax.plot(b.done_s, range(1, len(b.done_s) + 1), style, color=colour,
                label=f"{b.activators} activators, {b.variant}")  # fmt: skip
    ax.set(xlabel="seconds since the visit was fanned out", ylabel="visit-detectors done",
           title="One LSSTCam visit (189 detectors): outcomes against time")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--activators", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--no-fill", action="store_true", help="do not add a run with as many as memory allows")
    parser.add_argument("--max-activators", type=int, default=64)
    parser.add_argument("--solo-starts", type=int, default=3, help="activators started alone, one after the other")
    parser.add_argument("--compute-s", type=float, default=1.5)
    parser.add_argument("--io-s", type=float, default=0.19)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pp-bench-visit189-") as tmp:
        samples = Path(tmp) / "bursts.json"
        subprocess.run([sys.executable, "-m", "bench.bench_visit189", *sys.argv[1:], "--child", "--samples",
                        str(samples)], check=True)  # fmt: skip
        data: dict[str, Any] = json.loads(samples.read_text())
    bursts = [Burst(**b) for b in data["bursts"]]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "visit189.json").write_text(json.dumps(data, indent=1))
    plot(bursts, RESULTS / "visit189.png")
    from bench.bench_fanout import _replace_section  # noqa: PLC0415

    section = render(bursts, data["solo_start_s"], args, time.monotonic() - started)
    _replace_section(args.output, section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
