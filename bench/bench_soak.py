"""Memory soak (issue 12, item 9): `make bench` (python -m bench.bench_soak --visits 2000 --output BENCHMARKS.md).

One activator flow run (``max_visits`` = ``--visits``) processes ``--visits`` LATISS visit-detectors on its
own embedded stack (``bench.workers_harness.Harness``: Redis, Tansu, moto S3 and a Prefect server on SQLite on
free ports, the arrival router in a thread), each through the whole path at the workers benchmark's small
image size (512 x 512, 4 transients): preload, wait for the image, raw ingest, Alert Production, publish
(outputs exported, APDB, alerts on Kafka). The science step is the real pipeline, not a sleep: whatever
the middleware, the Butler or the pipeline keeps between visits counts.

The activator runs in a child process of its own (this module with ``--run-activator``), so the RSS sampled
is the activator's alone: psutil reads the child's current RSS from this process each time the results
stream shows ``--sample-every`` more outcomes (blocking XREAD on the stream, so the sample is taken within
a millisecond or so of the outcome being recorded), and after the first one. The feeder (this process)
keeps ``--backlog`` visit-detectors landed and announced ahead of the activator so it never idles; they
all look at one field, so the APDB's history there grows with the run, as a field revisited all night does.

Growth is measured from the warm-up sample (``--warmup`` visit-detectors) to the last one, and the
recycling rule (``PP_ACTIVATOR__MAX_VISITS``) read off the samples: the largest count up to which every
sample stays within 10% of the warm-up RSS, capped by the least-squares line's 10% crossing.

``--diagnose [FROM TO]``: after FROM and TO visit-detectors (default: the warm-up sample and the last
sample before the end, while the run is still in its loop) the child counts gc-tracked objects by type
and Prefect's per-flow-run bookkeeping (``EngineContext.run_results``); tracemalloc starts at the first
point and is dumped at the second, so the snapshot holds exactly what was allocated between them and is
still alive. Both are printed. tracemalloc slows the run (several times) and costs memory of its own: a
diagnose run's numbers are not the benchmark's, and it does not write BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import psutil
from rich.progress import Progress

from bench.prefect_env import isolate_prefect

if TYPE_CHECKING:
    from bench.workers_harness import Harness

PLOT = Path("bench/results/soak_rss.png")  # relative to the directory of --output
LIMIT = 0.10  # growth after warm-up the target allows
MIB = 2**20
TRACE_FRAMES = 8


@dataclass(frozen=True)
class Sample:
    visits: int  # visit-detectors with a recorded outcome when the sample was taken
    rss_bytes: int
    elapsed_s: float  # since the first visit-detector was announced


@dataclass
class Soak:
    samples: list[Sample] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    wall_s: float = 0.0


@dataclass(frozen=True)
class Growth:
    warmup: Sample
    end: Sample
    pct: float  # (end - warm-up) / warm-up, percent
    fit_bytes_per_visit: float  # least-squares slope over the samples from warm-up on
    safe_visits: int  # largest sampled count up to which every sample is within LIMIT of the warm-up RSS
    fit_crossing: float  # where the fitted line crosses warm-up + LIMIT (inf if it never does)
    max_visits: int  # the recycling rule


def growth(samples: list[Sample], warmup_visits: int) -> Growth:
    """Growth from the first sample at or after ``warmup_visits`` to the last, and the recycling rule."""
    after = [s for s in samples if s.visits >= warmup_visits]
    base, end = after[0], after[-1]
    ceiling = base.rss_bytes * (1 + LIMIT)
    safe = base.visits
    for s in after:
        if s.rss_bytes > ceiling:
            break
        safe = s.visits
    slope = float(np.polyfit([s.visits for s in after], [s.rss_bytes for s in after], 1)[0]) if len(after) > 1 else 0.0
    crossing = base.visits + LIMIT * base.rss_bytes / slope if slope > 0 else math.inf
    rule = safe if math.isinf(crossing) else min(safe, _round_down(crossing))
    return Growth(base, end, 100 * (end.rss_bytes - base.rss_bytes) / base.rss_bytes, slope, safe, crossing, rule)


def _round_down(x: float) -> int:
    """``x`` rounded down to two significant digits (at least 1): 98.7 -> 98, 1_234 -> 1_200."""
    step = 10 ** max(0, math.floor(math.log10(max(x, 1))) - 1)
    return max(1, int(x // step * step))


# --- the child: one activator flow run ---------------------------------------------------------------


def run_activator(visits: int, diagnose: Path | None) -> int:
    """The child process: one activator run of ``visits``; with ``diagnose``, serve diagnostic requests
    (one label a line on stdin) until stdin closes."""
    from flows.activator import activator  # noqa: PLC0415 - the parent set Prefect's environment first

    server = None
    if diagnose is not None:
        server = threading.Thread(target=_serve_diagnostics, args=(diagnose,), name="soak-diagnose", daemon=True)
        server.start()
    activator("LATISS", max_visits=visits)
    if server is not None:
        server.join(600)
    return 0


def _serve_diagnostics(directory: Path) -> None:
    for line in sys.stdin:
        label = line.strip()
        if label:
            _diagnose(directory, label)


def _diagnose(directory: Path, label: str) -> None:
    """gc-tracked objects by type and Prefect's run_results size, as ``label``; the first call starts
    tracemalloc, the next ones dump a snapshot: what was allocated since the first and is still alive."""
    from prefect.context import EngineContext  # noqa: PLC0415 - child only

    gc.collect()
    objects = gc.get_objects()
    by_type = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objects)
    run_results = [len(o.run_results) for o in objects if isinstance(o, EngineContext)]
    del objects
    counts = {"label": label, "by_type": dict(by_type), "run_results": run_results,
              "traced_bytes": tracemalloc.get_traced_memory()[0]}  # fmt: skip
    (directory / f"{label}.json").write_text(json.dumps(counts))
    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(str(directory / f"{label}.snapshot"))
        tracemalloc.stop()  # the rest of the run at full speed
    else:
        tracemalloc.start(TRACE_FRAMES)
    (directory / f"{label}.done").touch()


# --- the parent: feed, sample, report ----------------------------------------------------------------


class Soaker:
    """Feeds one activator child process and samples its RSS as outcomes are recorded."""

    def __init__(self, harness: Harness, args: argparse.Namespace, state: Path) -> None:
        from prompt_processing.adapters.redis_client import make_redis  # noqa: PLC0415 - after Prefect's env
        from prompt_processing.model import naming  # noqa: PLC0415

        self.harness, self.args, self.state = harness, args, state
        self.redis = make_redis(harness.settings.redis, harness.settings.retry, name="bench-soak", socket_timeout_s=10)
        self.stream, self.last_id = naming.results_stream("LATISS"), "0-0"
        self.announced, self.done, self.soak = 0, 0, Soak()
        self.diagnose_dir = state / "diagnose" if args.diagnose is not None else None
        self.diagnose_at = tuple(args.diagnose or (args.warmup, args.visits - args.sample_every))
        self.log = state / "activator.log"
        self.child = self._spawn()
        self.process = psutil.Process(self.child.pid)
        self.start = time.monotonic()

    def _spawn(self) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "bench.bench_soak", "--run-activator", str(self.args.visits)]
        if self.diagnose_dir is not None:
            self.diagnose_dir.mkdir(parents=True)
            command += ["--diagnose-dir", str(self.diagnose_dir)]
        # Idle long enough to outlast a slow moment of the feeder; outcomes kept for the whole run.
        env = os.environ | {"PP_ACTIVATOR__IDLE_TIMEOUT_S": "600", "PP_VISIT__RESULTS_RETENTION_S": "259200"}
        with self.log.open("w") as log:
            return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    text=True, cwd=Path(__file__).resolve().parents[1])  # fmt: skip

    def run(self, progress: Progress) -> Soak:
        task = progress.add_task("soak", total=self.args.visits)
        stalled_at = time.monotonic()
        while self.done < self.args.visits:
            self._top_up()
            before = self.done
            self._collect()
            if self.done > before:
                stalled_at = time.monotonic()
                rss = self.soak.samples[-1].rss_bytes / MIB if self.soak.samples else 0
                progress.update(task, completed=self.done, description=f"soak (RSS {rss:.0f} MiB)")
            self._check_alive(stalled_at)
        self.soak.wall_s = time.monotonic() - self.start
        return self.soak

    def finish(self, *, failed: bool) -> None:
        """Close the child's stdin (its diagnostics end) and wait for it (after a failure, ask it to stop:
        SIGTERM hands back the visit in hand); kill it if it hangs."""
        if self.child.stdin is not None:
            self.child.stdin.close()
        if failed and self.child.poll() is None:
            self.child.terminate()
        try:
            self.child.wait(900)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait(30)
        self.redis.close()

    def _top_up(self) -> None:
        while self.announced < min(self.args.visits, self.done + self.args.backlog):
            body = self.harness.visit(f"soak-{self.announced:05d}-{uuid.uuid4().hex[:6]}")
            self.harness.land(body)
            self.harness.announce(body)
            self.announced += 1

    def _collect(self) -> None:
        reply: Any = self.redis.xread({self.stream: self.last_id}, count=100, block=1000)
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self.last_id = entry_id.decode()
                self.soak.statuses[fields[b"status"].decode()] += 1
                self.done += 1
                if self.done == 1 or self.done % self.args.sample_every == 0 or self.done == self.args.visits:
                    self._sample()
                if self.diagnose_dir is not None and self.done in self.diagnose_at:
                    self._request_diagnosis()

    def _sample(self) -> None:
        rss = self.process.memory_info().rss
        self.soak.samples.append(Sample(self.done, rss, time.monotonic() - self.start))

    def _request_diagnosis(self) -> None:
        assert self.child.stdin is not None
        self.child.stdin.write(f"at{self.done:05d}\n")
        self.child.stdin.flush()

    def _check_alive(self, progressed_at: float) -> None:
        if self.child.poll() is not None:
            raise RuntimeError(f"the activator exited ({self.child.returncode}) after {self.done} visit-detectors; "
                               f"see {self.log}")  # fmt: skip
        if time.monotonic() - progressed_at > 600:
            raise TimeoutError(f"no outcome for 600 s after {self.done} visit-detectors; see {self.log}")


def diagnosis(directory: Path, top: int = 15) -> str:
    """The two diagnostic points diffed: object types whose count grew, and the allocations made since the
    first point that are still alive at the second (tracemalloc ran from the first), by site."""
    labels = sorted(p.stem for p in directory.glob("*.done"))
    if len(labels) < 2:
        return f"diagnosis: fewer than two diagnostic points in {directory}"
    first, last = labels[0], labels[-1]
    counts = [json.loads((directory / f"{label}.json").read_text()) for label in (first, last)]
    grown = Counter(counts[1]["by_type"])
    grown.subtract(counts[0]["by_type"])
    entries = " -> ".join(str(c["run_results"]) for c in counts)
    lines = [f"Diagnosis, {first} -> {last}: EngineContext.run_results entries {entries}; allocated since {first} "
             f"and still alive (tracemalloc): {counts[1]['traced_bytes'] / MIB:.1f} MiB", "",
             "gc-tracked objects that grew:"]  # fmt: skip
    lines += [f"  {n:+8d}  {name}" for name, n in grown.most_common(top) if n > 0]
    snapshot = tracemalloc.Snapshot.load(str(directory / f"{last}.snapshot"))
    alive = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    lines += ["", f"still alive at {last}, allocated since {first}, by line:"]
    lines += [f"  {stat.size / 1024:10.1f} KiB {stat.count:7d} blocks  {stat.traceback[0]}"
              for stat in alive.statistics("lineno")[:top]]  # fmt: skip
    lines += ["", "by traceback, the largest five:"]
    for stat in alive.statistics("traceback")[:5]:
        lines.append(f"  {stat.size / 1024:10.1f} KiB {stat.count:7d} blocks")
        lines += [f"      {frame}" for frame in stat.traceback.format()]
    return "\n".join(lines)


def plot(soak: Soak, result: Growth, path: Path) -> None:
    visits = [s.visits for s in soak.samples]
    fig, (ax, pace) = plt.subplots(2, 1, figsize=(9, 6.2), sharex=True, height_ratios=[3, 1.3])
    ax.plot(visits, [s.rss_bytes / MIB for s in soak.samples], marker="o", label="activator RSS")
    base = result.warmup
    ax.axhline(base.rss_bytes * (1 + LIMIT) / MIB, color="tab:red", linestyle=":", label="warm-up RSS + 10%")
    ax.axvline(base.visits, color="grey", linestyle=":", label=f"warm-up ({base.visits})")
    fit_x = np.array([base.visits, result.end.visits])
    fit_y = base.rss_bytes + result.fit_bytes_per_visit * (fit_x - base.visits)
    ax.plot(fit_x, fit_y / MIB, color="tab:orange", linestyle="--",
            label=f"fit: {result.fit_bytes_per_visit * 1000 / MIB:+.1f} MiB per 1000")  # fmt: skip
    ax.set_ylabel("RSS, MiB")
    ax.set_title(f"One activator run, {result.end.visits} visit-detectors (512 x 512): RSS")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    pairs = list(zip(soak.samples, soak.samples[1:], strict=False))
    pace.plot([b.visits for _a, b in pairs], [(b.elapsed_s - a.elapsed_s) / (b.visits - a.visits) for a, b in pairs],
              marker=".", color="tab:green")  # fmt: skip
    pace.set_ylabel("s per visit-detector")
    pace.set_xlabel("visit-detectors processed")
    pace.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rule_text(result: Growth, default_max_visits: int) -> str:
    slope_mib = result.fit_bytes_per_visit * 1000 / MIB
    if math.isinf(result.fit_crossing):
        crossing = "the fitted line never reaches it"
    else:
        crossing = f"the fitted line ({slope_mib:+.1f} MiB per 1000) reaches it at {result.fit_crossing:,.0f}"
    every = "every sample" if result.safe_visits == result.end.visits else "the samples"
    if default_max_visits <= result.max_visits:
        verdict = f"the default ({default_max_visits}) is within it"
    else:
        verdict = f"the default ({default_max_visits}) is above it: lower it"
    return (
        f"**Recycling rule: `PP_ACTIVATOR__MAX_VISITS` <= {result.max_visits:,}** ({every} stayed within 10% of "
        f"the warm-up RSS up to {result.safe_visits:,}; {crossing}; the rule is the smaller, rounded down to two "
        f"significant digits, and never more than this run measured); {verdict}."
    )


def render(soak: Soak, result: Growth, args: argparse.Namespace, plot_link: str, default_max_visits: int) -> str:
    base, end = result.warmup, result.end
    met = "met" if result.pct < LIMIT * 100 else "NOT met"
    statuses = ", ".join(f"{n} {status}" for status, n in soak.statuses.most_common())
    lines = [
        "## Memory soak (issue 12)",
        "",
        f"Command: `make bench` (`python -m bench.bench_soak --visits {args.visits} --output {args.output}`), run "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} cores, Python "
        f"{platform.python_version()}); {soak.wall_s / 60:.0f} min. One activator flow run (`max_visits` "
        f"{args.visits}) in a process of its own; Prefect server on SQLite, Redis, Tansu and moto S3 on loopback; "
        f"LATISS, 512 x 512 images, 4 transients, one field, the real pipeline (no sleep in its place); "
        f"{args.backlog} visit-detectors kept queued ahead of it. RSS: the activator process's current resident "
        f"memory (psutil, from the benchmark's process) when the results stream shows the outcome of the first "
        f"visit-detector and of every {args.sample_every}th.",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| visit-detectors processed | {sum(soak.statuses.values()):,} ({statuses}) |",
        f"| RSS at warm-up ({base.visits:,} visit-detectors) | {base.rss_bytes / MIB:.0f} MiB |",
        f"| RSS at the end ({end.visits:,}) | {end.rss_bytes / MIB:.0f} MiB |",
        f"| growth after warm-up | {result.pct:+.1f}% |",
        f"| growth per 1000 visit-detectors (least squares from warm-up on) | "
        f"{result.fit_bytes_per_visit * 1000 / MIB:+.1f} MiB |",
        "",
        f"Target: under 10% growth after warm-up: **{result.pct:+.1f}%** ({met}).",
        "",
        _rule_text(result, default_max_visits),
        "",
        "| visit-detectors | RSS MiB | vs warm-up | minutes | s per visit-detector since the previous sample |",
        "|---:|---:|---:|---:|---:|",
    ]
    previous: Sample | None = None
    for s in soak.samples:
        pace = f"{(s.elapsed_s - previous.elapsed_s) / (s.visits - previous.visits):.2f}" if previous else ""
        versus = f"{100 * (s.rss_bytes - base.rss_bytes) / base.rss_bytes:+.1f}%"
        lines.append(f"| {s.visits:,} | {s.rss_bytes / MIB:.0f} | {versus} | {s.elapsed_s / 60:.1f} | {pace} |")
        previous = s
    lines += ["", f"![activator RSS]({plot_link})", ""]
    return "\n".join(lines)


def _replace_section(path: Path, section: str) -> None:
    """The section helper every bench module uses (``bench.bench_fanout``), looked up at run time so that
    type-checking this file does not re-check that module."""
    importlib.import_module("bench.bench_fanout")._replace_section(path, section)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--visits", type=int, default=2000, help="visit-detectors, all in one activator run")
    parser.add_argument("--sample-every", type=int, default=100, help="visit-detectors between RSS samples")
    parser.add_argument("--warmup", type=int, default=200, help="growth is measured from this sample on")
    parser.add_argument("--backlog", type=int, default=3, help="visit-detectors kept queued ahead of the activator")
    parser.add_argument("--diagnose", nargs="*", type=int, metavar="N",
                        help="FROM TO: tracemalloc and gc counts between two points; no BENCHMARKS.md")  # fmt: skip
    parser.add_argument("--run-activator", type=int, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--diagnose-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_activator is None and (args.warmup % args.sample_every or args.warmup >= args.visits):
        parser.error("--warmup must be a multiple of --sample-every and below --visits")
    if args.diagnose and (len(args.diagnose) != 2 or not 0 < args.diagnose[0] < args.diagnose[1] < args.visits):
        parser.error("--diagnose takes nothing or FROM TO, 0 < FROM < TO < --visits")
    return args


def main() -> int:
    args = _arguments()
    if args.run_activator is not None:
        return run_activator(args.run_activator, args.diagnose_dir)
    state = Path(tempfile.mkdtemp(prefix="pp-bench-soak-"))
    prefect_port = isolate_prefect(state)
    from bench.workers_harness import Harness  # noqa: PLC0415 - only now may prefect be imported
    from prompt_processing.settings import ActivatorSettings  # noqa: PLC0415

    harness = Harness.start(state, prefect_port)
    try:
        harness.seed(512)
        soaker = Soaker(harness, args, state)
        failed = True
        try:
            with Progress() as progress:
                soak = soaker.run(progress)
            failed = False
        finally:
            soaker.finish(failed=failed)
    finally:
        harness.stop()
    result = growth(soak.samples, args.warmup)
    plot_path = args.output.resolve().parent / PLOT
    plot(soak, result, plot_path)
    section = render(soak, result, args, str(PLOT), ActivatorSettings.model_fields["max_visits"].default)
    print(section)
    if soaker.diagnose_dir is not None:
        print(diagnosis(soaker.diagnose_dir))
        print(f"(diagnose run: BENCHMARKS.md left as it was; the activator's log is {soaker.log})")
    else:
        _replace_section(args.output, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
