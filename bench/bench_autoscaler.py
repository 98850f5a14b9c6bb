"""Autoscaler reaction latency: `make bench` (python -m bench.bench_autoscaler --output BENCHMARKS.md).

Starts its own Redis, Kafka-protocol broker and Prefect server on free ports, registers the
deployments, then measures how long after an entry lands in a stream a flow run is **created**
(the run's ``created`` time in Prefect) and **Running** (its ``start_time``: a real Prefect
worker of a work pool of type `process` started it), for three scalers that differ only in how they notice
work: the autoscaler as shipped (wakes on a blocking XREAD of the stream tail, polls every 2 s),
and the same with ``wake_on_entries=false`` (KEDA's way) polling every 2 s (Rubin production)
and every 30 s (KEDA's default).

A lane is one autoscaler (eager, min 0, max 1, lagCount 1) with its own stream and its own copy
of the activator deployment; a sample is one entry, for which it creates one run. For a
polling lane the entry lands ``u`` seconds before one of its polls, ``u`` uniform over the
interval: the phase a real visit has, without waiting whole cycles. Phase 1 (to created): a work
pool no worker reads, every lane at once (the 30 s scaler spread over one lane per sample, polls
staggered), the entry taken and the run deleted after each sample. Phase 2 (to Running): the
worker's pool, runs created ``--spacing-s`` apart
so flow-run processes start one at a time on the 2 cores; the run reads the entry (not a valid
visit: dead-lettered) and exits after 0.5 s idle. The worker looks for work every second
(PREFECT_WORKER_QUERY_SECONDS=1; Prefect's default is 10 s).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import queue
import random
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from bench.bench_fanout import _replace_section
from pp_devkit.stack import Stack, free_port
from prompt_processing.adapters.redis_client import make_redis
from prompt_processing.settings import (
    FLOW_RUN_SECTIONS,
    ActivatorSettings,
    AutoscalerSettings,
    KafkaSettings,
    MetricsSettings,
    PrefectSettings,
    RedisSettings,
    Settings,
    StackSettings,
    export_env,
)

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

    from prompt_processing.autoscaler.loop import Autoscaler

WAKE = "eager + wake on XREAD (polls every 2 s)"
POLL_2 = "KEDA-like: polls every 2 s"
POLL_30 = "KEDA-like: polls every 30 s"
MODES = {WAKE: (True, 2.0), POLL_2: (False, 2.0), POLL_30: (False, 30.0)}
PLOT = Path("bench/results/autoscaler_reaction_latency.png")
NO_WORKER_POOL = "bench-no-worker"


@dataclass
class Lane:
    """One autoscaler (one spec) ticking in its own thread; it reports the runs it creates."""

    mode: str
    autoscaler: Autoscaler
    created: queue.Queue[str] = field(default_factory=queue.Queue)
    last_poll: float = 0.0  # unix time the latest poll started; 0 until the first
    thread: threading.Thread | None = None

    @property
    def interval_s(self) -> float:
        return MODES[self.mode][1]

    @property
    def stream(self) -> str:
        return self.autoscaler.specs[0].stream

    def next_poll(self, after: float) -> float:
        """The first poll of this (polling) lane at or after ``after`` (unix s)."""
        return self.last_poll + max(0, -(-(after - self.last_poll) // self.interval_s)) * self.interval_s

    def start(self, delay_s: float) -> None:
        """Start ticking after ``delay_s``: its first poll sets its polling phase."""

        def serve() -> None:
            time.sleep(delay_s)
            self.autoscaler.startup()
            try:
                while not self.autoscaler.should_exit:
                    for record in self.autoscaler.tick():
                        self.last_poll = record.at - record.measured_ms / 1e3
                        for run_id in record.created:
                            self.created.put(run_id)
            finally:
                self.autoscaler.shutdown()

        self.thread = threading.Thread(target=serve, name=f"lane-{self.autoscaler.name}", daemon=True)
        self.thread.start()

    def wait_for_first_poll(self) -> None:
        while not self.last_poll:
            time.sleep(0.05)

    def stop(self) -> None:
        self.autoscaler.request_exit()
        if self.thread is not None:
            self.thread.join(30)


@dataclass
class Sample:
    mode: str
    created_s: float
    running_s: float | None = None  # phase 2 only


@dataclass
class Planned:
    """A phase-2 sample: its entry lands at ``entry_at`` (``added_at`` once it did)."""

    lane: Lane
    entry_at: float
    added_at: float = 0.0
    added: threading.Event = field(default_factory=threading.Event)


class Bench:
    """The lanes, the Prefect client and Redis of one benchmark run."""

    def __init__(self, settings: Settings, client: SyncPrefectClient, rng: random.Random) -> None:
        self.settings, self.client, self.rng = settings, client, rng
        self.redis = make_redis(settings.redis, settings.retry, name="bench")
        self.base = client.read_deployment_by_name("activator/activator-latiss")
        self.lanes: list[Lane] = []

    def lane(self, mode: str, phase: int, index: int, *, delay_s: float = 0.0) -> Lane:
        """A lane of phase 1 (its pool has no worker) or phase 2 (the worker's pool)."""
        from prompt_processing.autoscaler.loop import Autoscaler  # noqa: PLC0415 (after PREFECT_API_URL is set)
        from prompt_processing.autoscaler.spec import parse_specs  # noqa: PLC0415

        wake, interval_s = MODES[mode]
        instrument = f"bench{phase}-{'wake' if wake else 'poll'}{interval_s:g}-{index}"
        self.client.create_deployment(
            flow_id=self.base.flow_id, name=instrument, entrypoint=self.base.entrypoint, path=self.base.path,
            work_pool_name=NO_WORKER_POOL if phase == 1 else self.settings.prefect.work_pool,
            pull_steps=self.base.pull_steps, parameter_openapi_schema=self.base.parameter_openapi_schema,
            parameters={"instrument": instrument, "idle_timeout_s": 0.5},
        )  # fmt: skip
        (spec,) = parse_specs({"scaledJobs": [{
            "instrument": instrument, "deployment": f"activator/{instrument}", "pollingInterval": interval_s,
            "minReplicaCount": 0, "maxReplicaCount": 1, "scalingStrategy": "eager",
            "triggers": [{"type": "redis-streams", "metadata": {"lagCount": 1}}],
        }]})  # fmt: skip
        self.redis.xgroup_create(spec.stream, spec.consumer_group, id="$", mkstream=True)
        config = AutoscalerSettings(wake_on_entries=wake, name=instrument)
        lane = Lane(mode, Autoscaler(self.settings.model_copy(update={"autoscaler": config}), [spec]))
        lane.start(delay_s)
        self.lanes.append(lane)
        return lane

    def add_entry(self, lane: Lane) -> float:
        added_at = time.time()
        self.redis.xadd(lane.stream, {"bench": "not a visit"})
        return added_at

    def created(self, lane: Lane, added_at: float) -> tuple[Any, float]:
        """The run ``lane`` created for the entry added at ``added_at``, and the latency."""
        run = self.client.read_flow_run(lane.created.get(timeout=lane.interval_s + 60))  # type: ignore[arg-type]
        assert run.created is not None
        return run, run.created.timestamp() - added_at

    def sample_created(self, lane: Lane) -> Sample:
        """Phase 1: one entry; then the entry is taken and the run deleted: nothing waits, no run."""
        lane.wait_for_first_poll()
        if lane.mode == WAKE:
            time.sleep(self.rng.uniform(0.1, 0.4))
        else:
            u = self.rng.uniform(0.0, lane.interval_s)
            time.sleep(max(0.0, lane.next_poll(time.time() + u + 0.01) - u - time.time()))
        run, latency_s = self.created(lane, self.add_entry(lane))
        group = lane.autoscaler.specs[0].consumer_group
        taken: Any = self.redis.xreadgroup(group, "bench", {lane.stream: ">"})
        self.redis.xack(lane.stream, group, *[entry_id for entry_id, _ in taken[0][1]])
        self.client.delete_flow_run(run.id)
        return Sample(lane.mode, latency_s)

    def sample_running(self, planned: Planned) -> Sample:
        """Phase 2: wait for the planned entry's run to be created, to run, and to finish."""
        planned.added.wait()
        run, latency_s = self.created(planned.lane, planned.added_at)
        deadline = time.monotonic() + 120
        while (run.state is None or not run.state.is_final()) and time.monotonic() < deadline:
            time.sleep(0.25)  # start_time is the server's: polling slowly costs no precision
            run = self.client.read_flow_run(run.id)
        running_s = None if run.start_time is None else run.start_time.timestamp() - planned.added_at
        return Sample(planned.lane.mode, latency_s, running_s)

    def close(self) -> None:
        for lane in self.lanes:
            lane.stop()
        self.redis.close()


def phase_created(bench: Bench, n: int) -> list[Sample]:
    """``n`` samples per scaler, all lanes at once: 1 wake lane, 2 lanes polling every 2 s, and one
    lane per sample polling every 30 s (polls staggered over the interval: no bursts at the API)."""
    jobs = [(bench.lane(WAKE, 1, 0), n), (bench.lane(POLL_2, 1, 0), n - n // 2), (bench.lane(POLL_2, 1, 1), n // 2)]
    jobs += [(bench.lane(POLL_30, 1, i, delay_s=i * 30.0 / n), 1) for i in range(n)]
    samples: list[Sample] = []

    def work(lane: Lane, count: int) -> None:
        samples.extend(bench.sample_created(lane) for _ in range(count))

    threads = [threading.Thread(target=work, args=job, daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return samples


def phase_running(bench: Bench, lanes: dict[str, list[Lane]], n: int, spacing_s: float) -> list[Sample]:
    """``n`` samples per scaler, modes in turn, runs created ``spacing_s`` apart. The 30 s lanes
    (used once each, polls staggered) get their entry ``u`` before a poll, up to 30 s ahead,
    while earlier samples run."""
    for lane in (lane for group in lanes.values() for lane in group):
        lane.wait_for_first_poll()
    plan: list[Planned] = []
    start = t = time.time() + 1.0
    slow = list(lanes[POLL_30])
    for _ in range(n):
        for mode in MODES:
            if mode == WAKE:
                lane, entry_at, create_at = lanes[WAKE][0], t, t
            else:
                u = bench.rng.uniform(0.0, MODES[mode][1])
                earliest = max(t, start + u)  # the entry must not land before the plan starts
                lane = lanes[mode][0] if mode == POLL_2 else min(slow, key=lambda la: la.next_poll(earliest))
                create_at = lane.next_poll(earliest)
                entry_at = create_at - u
                if mode == POLL_30:
                    slow.remove(lane)
            plan.append(Planned(lane, entry_at))
            t = create_at + spacing_s

    def add_entries() -> None:
        for planned in sorted(plan, key=lambda p: p.entry_at):
            time.sleep(max(0.0, planned.entry_at - time.time()))
            planned.added_at = bench.add_entry(planned.lane)
            planned.added.set()

    threading.Thread(target=add_entries, name="entries", daemon=True).start()
    return [bench.sample_running(planned) for planned in plan]


def _p50_p95(values: list[float]) -> str:
    return "{:.2f} / {:.2f}".format(*np.percentile(values, [50, 95])) if values else "-"


class Refusals(logging.Handler):
    """Counts log lines about Prefect answering 503 (SQLite: database is locked), the retries' included."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "503 Service Unavailable" in record.getMessage()


def render(samples: list[Sample], args: argparse.Namespace, elapsed_s: float, refusals: int) -> str:
    starts = [s.running_s - s.created_s for s in samples if s.running_s is not None]
    lines = [
        "## Autoscaler reaction latency (issue 4)",
        "",
        f"Command: `make bench` (`python -m bench.bench_autoscaler --output BENCHMARKS.md --created {args.created} "
        f"--running {args.running} --spacing-s {args.spacing_s:g} --seed {args.seed}`), run "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} cores, Python "
        f"{platform.python_version()}, Prefect server on SQLite, redis-server, all on loopback); {elapsed_s:.0f} s.",
        "",
        "From an entry landing in a stream (XADD) to a flow run of the activator deployment **created** "
        "(the run's `created` in Prefect) and **Running** (its `start_time`: a Prefect worker of a work pool of "
        "type `process`, polling every 1 s, started a Python process that loaded the flow). Every scaler is "
        "`pp autoscale`'s code (eager, min 0, max 1); only how it notices work differs. Entries for the polling "
        "scalers land at a uniformly random phase of the polling cycle. Phase 1 (created) runs without a Prefect "
        "worker; phase 2 (Running) starts one flow-run process at a time (see the docstring of "
        "`bench/bench_autoscaler.py`).",
        "",
        "| scaler | samples: created / Running | entry -> run created, p50 / p95 s | entry -> Running, p50 / p95 s |",
        "|---|---:|---:|---:|",
    ]
    for mode in MODES:
        created = [s.created_s for s in samples if s.mode == mode and s.running_s is None]
        running = [s.running_s for s in samples if s.mode == mode and s.running_s is not None]
        lines.append(f"| {mode} | {len(created)} / {len(running)} | {_p50_p95(created)} | {_p50_p95(running)} |")
    woke = [s.created_s for s in samples if s.mode == WAKE and s.running_s is None]
    p50 = float(np.percentile(woke, 50)) if woke else 0.0
    lines += [
        "",
        f"Target: p50 <= 0.5 s from entry to run created with the shipped scaler: **{p50 * 1e3:.0f} ms** "
        f"({'met' if p50 <= 0.5 else 'NOT met'}). A polling scaler first waits for its next poll, half the "
        "interval on average and up to all of it; waking on the stream tail removes that wait, and the run is "
        "requested within one tick (one Redis transaction, two run counts and the creation). From created to "
        f"Running ({_p50_p95(starts)} s p50 / p95 over all {len(starts)} phase-2 runs) is the work pool's share "
        "and the same for every scaler: the worker's own polling (1 s here) and a new Python process importing "
        f"Prefect and the flow (a pod start in production). With {args.running} samples per scaler, the Running "
        "p95 is close to the maximum; the created columns carry the comparison. The created tails are the "
        f"Prefect server's: {refusals} API calls of the autoscalers were refused with 503 (SQLite's `database "
        "is locked`, under this benchmark's ~60 autoscalers at once) and retried, costing 0.2 s to a few seconds "
        "each; production runs the server on PostgreSQL.",
        "",
        f"![reaction latency]({PLOT})",
        "",
    ]
    return "\n".join(lines)


def plot(samples: list[Sample], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels: list[tuple[str, Callable[[Sample], float | None]]] = [
        ("entry -> run created (phase 1)", lambda s: s.created_s if s.running_s is None else None),
        ("entry -> run Running (phase 2)", lambda s: s.running_s),
    ]
    for ax, (title, pick) in zip(axes, panels, strict=True):
        for mode in MODES:
            values = sorted(v for s in samples if s.mode == mode and (v := pick(s)) is not None)
            ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], marker=".", label=mode)
        ax.set_xscale("log")
        ax.set_xlabel("seconds after the entry landed (log scale)")
        ax.set_ylabel("fraction of samples")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--created", type=int, default=40, help="samples per scaler, to created")
    parser.add_argument("--running", type=int, default=7, help="samples per scaler, to Running")
    parser.add_argument("--spacing-s", type=float, default=9.0, help="phase 2: seconds between run creations")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    started = time.monotonic()
    refusals = Refusals()
    logging.getLogger("prompt_processing").addHandler(refusals)  # the autoscalers and their retry policy
    with tempfile.TemporaryDirectory(prefix="pp-bench-autoscaler-") as state:
        settings = Settings(
            redis=RedisSettings(port=free_port()), kafka=KafkaSettings(port=free_port()),
            prefect=PrefectSettings(port=free_port()), stack=StackSettings(state_dir=Path(state)),
            activator=ActivatorSettings(block_s=0.2),
            metrics=MetricsSettings(autoscaler_port=0),  # ~60 autoscalers in this process: each a free port
        )  # fmt: skip
        # Prefect reads its API URL once, at import; the autoscalers' events must reach this server.
        os.environ["PREFECT_API_URL"] = settings.prefect.url
        from prefect.context import refresh_global_settings_context  # noqa: PLC0415

        refresh_global_settings_context()
        stack = Stack(settings)
        stack.up(["redis", "kafka", "prefect"])
        try:
            samples = _measure(settings, args)
        finally:
            stack.down(["redis", "kafka", "prefect"])
    plot(samples, PLOT)
    section = render(samples, args, time.monotonic() - started, refusals.count)
    _replace_section(args.output, section)
    print(section)
    return 0


def _measure(settings: Settings, args: argparse.Namespace) -> list[Sample]:
    from prefect.client.orchestration import get_client  # noqa: PLC0415
    from prefect.client.schemas.actions import WorkPoolCreate  # noqa: PLC0415

    from prompt_processing.adapters import prefect_api  # noqa: PLC0415

    log = Path(settings.stack.state_dir) / "bench.log"
    prefect_api.deploy_all(settings, Path.cwd(), log=log)
    env = (prefect_api.prefect_env(settings) | export_env(settings, *FLOW_RUN_SECTIONS)
           | {"PREFECT_WORKER_QUERY_SECONDS": "1"})  # fmt: skip
    with get_client(sync_client=True) as client, log.open("ab") as out:
        client.create_work_pool(WorkPoolCreate(name=NO_WORKER_POOL, type="process"))
        bench = Bench(settings, client, random.Random(args.seed))
        worker = subprocess.Popen(prefect_api.prefect_worker_command(settings), env=env, stdout=out,
                                  stderr=subprocess.STDOUT)  # fmt: skip
        try:
            # Phase 2's lanes start now, so their staggered polls are known when phase 1 ends.
            later = {WAKE: [bench.lane(WAKE, 2, 0)], POLL_2: [bench.lane(POLL_2, 2, 0)],
                     POLL_30: [bench.lane(POLL_30, 2, i, delay_s=i * 15.0 / args.running)
                               for i in range(2 * args.running)]}  # fmt: skip (twice as many: one polls soon)
            print(f"phase 1: to created, {args.created} samples per scaler")
            samples = phase_created(bench, args.created)
            print(f"phase 2: to Running, {args.running} samples per scaler, runs {args.spacing_s:g} s apart")
            samples += phase_running(bench, later, args.running, args.spacing_s)
        finally:
            bench.close()
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
    return samples


if __name__ == "__main__":
    raise SystemExit(main())
