"""One LSSTCam visit's 189 entries -> 189 activator runs: `make bench` (python -m bench.bench_burst).

For each Prefect database, SQLite (the embedded default) and PostgreSQL (production's, a throwaway
database on the machine's server), a child process starts its own Redis and Prefect server on free
ports, registers the deployments and a work pool no worker reads (runs stay Scheduled), then, per
repeat and per way of creating runs, lands 189 entries in a fresh stream in one MULTI/EXEC (a visit's
fan-out) and measures from EXEC's return to each run's ``created`` time as Prefect recorded it:

- **one POST at a time**: a plain loop of ``create_flow_run_from_deployment`` starting as the
  entries land, each request what the autoscaler sent before this change (its parameters, tags and
  idempotency key): the baseline, in the same run;
- **pp autoscale, N in flight**: the ``Autoscaler`` (eager, min 0, max 189, woken by the entries)
  with ``create_concurrency`` N. A second instrument (max 1)
  served by the same autoscaler gets one entry at the same moment: its run's latency says whether
  the burst holds it up.

Each repeat also checks the count: exactly 189 runs (none missing, none twice). The Prefect
server's CPU (its process tree) and PostgreSQL's (every ``postgres`` process) are measured over
each burst. Written: its section of the output file, ``bench/results/burst_*.png`` and a JSON of
the samples for the night simulation (``bench/results/burst.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.cpu import tree_cpu_s, wait_quiet
from bench.prefect_env import isolate_prefect

DETECTORS = 189
RESULTS = Path("bench/results")
SEQUENTIAL = "one POST at a time"
NO_WORKER_POOL = "bench-burst-no-worker"


@dataclass
class Burst:
    """One repeat of one way of creating runs on one database."""

    database: str
    mode: str  # SEQUENTIAL or "pp autoscale, N in flight"
    repeat: int
    created_s: list[float]  # each run's created - entries landed, sorted
    runs: int  # runs of the deployment once it settled (must be DETECTORS)
    other_s: float | None  # the other instrument's run, created - landed (autoscaler modes)
    server_cpu_s: float  # the Prefect server's process tree, from the burst's start until it is quiet again
    quiet_s: float  # entries landed -> the server quiet again (its follow-up work on the runs' events done)

    @property
    def last_s(self) -> float:
        return self.created_s[-1]


# --------------------------------------------------------------------------- child: one database


def _mode(level: str) -> str:
    return f"pp autoscale, {level} in flight"


def child(database: str, levels: list[str], repeats: int, out: Path) -> int:
    state = Path(tempfile.mkdtemp(prefix=f"pp-bench-burst-{database}-"))
    port = isolate_prefect(state)
    from pp_devkit.postgres import fresh_database  # noqa: PLC0415 - prefect may be imported from here on

    if database == "postgresql":
        with fresh_database("pp_bench_prefect") as url:
            return _child_on(state, port, url.replace("+psycopg", "+asyncpg"), database, levels, repeats, out)
    return _child_on(state, port, None, database, levels, repeats, out)


def _child_on(state: Path, port: int, db_url: str | None, database: str, levels: list[str], repeats: int,
              out: Path) -> int:  # fmt: skip
    from pp_devkit.stack import Stack, free_port  # noqa: PLC0415
    from prompt_processing.settings import PrefectSettings, RedisSettings, Settings, StackSettings  # noqa: PLC0415

    settings = Settings(redis=RedisSettings(port=free_port()), prefect=PrefectSettings(port=port, database_url=db_url),
                        stack=StackSettings(state_dir=state))  # fmt: skip
    stack = Stack(settings)
    statuses = stack.up(["redis", "prefect"])
    server_pid = next(s.pid for s in statuses if s.name == "prefect")
    try:
        bursts = Bursts(settings, database, psutil.Process(server_pid))
        try:
            for repeat in range(repeats):
                order = ["sequential", *levels]
                for level in order[repeat % len(order) :] + order[: repeat % len(order)]:  # each first in turn
                    burst = bursts.run(level, repeat)
                    print(f"{database} #{repeat} {burst.mode}: 189th run after {burst.last_s:.2f} s, "
                          f"{burst.runs} runs, server CPU {burst.server_cpu_s:.1f} s", flush=True)  # fmt: skip
                    out.write_text(json.dumps([asdict(b) for b in bursts.done]))
        finally:
            bursts.close()
    finally:
        stack.down(["redis", "prefect"])
    return 0


class Bursts:
    """The deployments, clients and measurements of one child."""

    def __init__(self, settings: Any, database: str, server: psutil.Process) -> None:
        from prefect.client.orchestration import get_client  # noqa: PLC0415
        from prefect.client.schemas.actions import WorkPoolCreate  # noqa: PLC0415

        from prompt_processing.adapters import prefect_api  # noqa: PLC0415
        from prompt_processing.adapters.redis_client import make_redis  # noqa: PLC0415

        self.settings, self.database, self.server = settings, database, server
        prefect_api.deploy_all(settings, Path.cwd(), log=Path(settings.stack.state_dir) / "deploy.log")
        self.client = get_client(sync_client=True).__enter__()
        self.client.create_work_pool(WorkPoolCreate(name=NO_WORKER_POOL, type="process"))
        self.base = self.client.read_deployment_by_name("activator/activator-latiss")
        self.redis = make_redis(settings.redis, settings.retry, name="bench-burst")
        self.done: list[Burst] = []

    def deployment(self, instrument: str) -> tuple[str, Any]:
        name = f"burst-{instrument}"
        deployment_id = self.client.create_deployment(
            flow_id=self.base.flow_id, name=name, entrypoint=self.base.entrypoint, path=self.base.path,
            work_pool_name=NO_WORKER_POOL, pull_steps=self.base.pull_steps, parameters={"instrument": instrument},
            parameter_openapi_schema=self.base.parameter_openapi_schema,
        )  # fmt: skip
        return f"activator/{name}", deployment_id

    def run(self, level: str, repeat: int) -> Burst:
        """One burst: ``level`` "sequential" (the baseline) or the autoscaler's creations in flight."""
        from prompt_processing.model import naming  # noqa: PLC0415
        from prompt_processing.model.queue_contract import QueueContract  # noqa: PLC0415

        tag = uuid.uuid4().hex[:8]
        big, big_id = self.deployment(f"burst{tag}")
        self._quiesce()
        cpu = self._cpu()
        if level == "sequential":
            mode = SEQUENTIAL
            contract = QueueContract.for_instrument(f"burst{tag}", self.settings.queue)
            parameters = {"queue": contract.model_dump()}
            landed = self._land(f"burst{tag}", DETECTORS)
            for i in range(DETECTORS):
                self.client.create_flow_run_from_deployment(
                    big_id, parameters=parameters, idempotency_key=f"pp-autoscaler/burst{tag}/{tag}/1/{i}",
                    tags=["autoscaler", naming.instrument_tag(f"burst{tag}")],
                )  # fmt: skip
            other_s = None
        else:
            mode = _mode(level)
            other, other_id = self.deployment(f"other{tag}")
            with self._autoscaler([(f"burst{tag}", big, DETECTORS), (f"other{tag}", other, 1)], int(level)) as serving:
                landed = self._land(f"burst{tag}", DETECTORS, also=f"other{tag}")
                serving.wait_until_created(f"burst{tag}", DETECTORS)  # its decisions, not polling the API
                serving.wait_until_created(f"other{tag}", 1)
                time.sleep(2.0)  # would it create more? the count below says
            (other_run,) = self._runs(other_id)
            other_s = other_run.created.timestamp() - landed
        runs = self._runs(big_id)
        created = sorted(r.created.timestamp() - landed for r in runs)
        quiet_s = self._quiesce() - landed
        burst = Burst(self.database, mode, repeat, created, len(runs), other_s, self._cpu() - cpu, quiet_s)
        self.done.append(burst)
        return burst

    def _land(self, instrument: str, n: int, *, also: str | None = None) -> float:
        """``n`` entries in ``instrument``'s stream (and one in ``also``'s) in one MULTI/EXEC; when EXEC returned."""
        from prompt_processing.model import naming  # noqa: PLC0415

        with self.redis.pipeline(transaction=True) as pipe:
            for detector in range(n):
                pipe.xadd(naming.stream_name(instrument), {"detector": detector})
            if also is not None:
                pipe.xadd(naming.stream_name(also), {"detector": 0})
            pipe.execute()
        return time.time()

    def _autoscaler(self, targets: list[tuple[str, str, int]], in_flight: int) -> Any:
        from prompt_processing.autoscaler.loop import Autoscaler  # noqa: PLC0415
        from prompt_processing.autoscaler.spec import parse_specs  # noqa: PLC0415
        from prompt_processing.settings import AutoscalerSettings  # noqa: PLC0415

        specs = parse_specs({"scaledJobs": [{
            "instrument": instrument, "deployment": deployment, "pollingInterval": 2, "minReplicaCount": 0,
            "maxReplicaCount": most, "scalingStrategy": "eager",
            "triggers": [{"type": "redis-streams", "metadata": {"lagCount": 1}}],
        } for instrument, deployment, most in targets]})  # fmt: skip
        for spec in specs:
            self.redis.xgroup_create(spec.stream, spec.consumer_group, id="$", mkstream=True)
        config = AutoscalerSettings(create_concurrency=in_flight, name=f"burst-{in_flight}")
        return _Serving(Autoscaler(self.settings.model_copy(update={"autoscaler": config}), specs))

    def _runs(self, deployment_id: Any) -> list[Any]:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId  # noqa: PLC0415

        wanted = FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]))
        runs: list[Any] = []
        while page := self.client.read_flow_runs(flow_run_filter=wanted, limit=200, offset=len(runs)):
            runs += page
        return runs

    def _cpu(self) -> float:
        """CPU seconds the Prefect server's process tree has used so far."""
        return tree_cpu_s(self.server)

    def _quiesce(self) -> float:
        """Wait until the server is quiet again (its background services done with the last burst's events);
        return when (unix s)."""
        return wait_quiet(self.server)

    def close(self) -> None:
        self.redis.close()
        self.client.__exit__(None, None, None)


class _Serving:
    """An autoscaler served in a thread (``lifecycle.serve``'s loop, without its signal handlers)."""

    def __init__(self, autoscaler: Any) -> None:
        self.autoscaler = autoscaler
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.ready = threading.Event()
        self.created: dict[str, int] = {}
        self.changed = threading.Condition()

    def _serve(self) -> None:
        self.autoscaler.startup()
        try:
            while not self.autoscaler.should_exit:
                records = self.autoscaler.tick()
                with self.changed:
                    for record in records:
                        self.created[record.instrument] = self.created.get(record.instrument, 0) + len(record.created)
                    self.changed.notify_all()
                self.ready.set()
        finally:
            self.autoscaler.shutdown()

    def wait_until_created(self, instrument: str, n: int, timeout_s: float = 600.0) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: self.created.get(instrument, 0) >= n, timeout_s):
                raise TimeoutError(f"{instrument}: {self.created.get(instrument, 0)} of {n} runs after {timeout_s} s")

    def __enter__(self) -> _Serving:
        self.thread.start()
        self.ready.wait(30)  # its loops are started and blocked on the streams' tails
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.autoscaler.request_exit()
        self.thread.join(30)


# --------------------------------------------------------------------------- parent: report


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def render(bursts: list[Burst], args: argparse.Namespace, elapsed_s: float) -> str:
    levels = " ".join(args.levels)
    lines = [
        "## 189 runs from one visit's entries (issue 13)",
        "",
        f"Command: `make bench` (`python -m bench.bench_burst --output BENCHMARKS.md --repeats {args.repeats} "
        f"--sqlite-repeats {args.sqlite_repeats} --levels {levels}`), run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
        f"on {platform.node()} ({os.cpu_count()} cores, Python {platform.python_version()}; Prefect server 1 "
        f"process, on SQLite or on PostgreSQL {_pg_version()} on the same machine; Redis on loopback); "
        f"{elapsed_s:.0f} s.",
        "",
        "One LSSTCam visit's 189 entries land in a stream in one MULTI/EXEC; the time is from EXEC's return to "
        "the run's `created` in Prefect (the server's clock, same machine). **One POST at a time** is a plain "
        "loop creating the 189 runs as the entries land (the autoscaler's way before this change; no detection "
        "time). **pp autoscale** is the shipped service (eager, max 189, woken by the entries), its creations N "
        "in flight; a second instrument (max 1) gets one entry at the same moment and its run's latency is the last "
        "column. Every repeat ended with exactly 189 runs unless the table says otherwise. CPU: the Prefect "
        "server's process tree per run created, from the burst's start until the server is quiet again (its "
        "background services done with the runs' events); the time to that is the last column.",
        "",
        "| database | creation | repeats | 189th run created p50 / p95 s | first run p50 s | vs one at a time "
        "(p50) | other instrument's run p50 / max s | runs != 189 | server CPU ms per run | quiet again p50 s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for database in ("sqlite", "postgresql"):
        mine = [b for b in bursts if b.database == database]
        baseline = [b.last_s for b in mine if b.mode == SEQUENTIAL]
        for mode in [SEQUENTIAL, *map(_mode, args.levels)]:
            rows = [b for b in mine if b.mode == mode]
            if not rows:
                continue
            last = [b.last_s for b in rows]
            first = [b.created_s[0] for b in rows]
            ratio = f"{_pct(last, 50) / _pct(baseline, 50):.2f}x" if baseline else "-"
            others = [b.other_s for b in rows if b.other_s is not None]
            other = f"{_pct(others, 50):.2f} / {max(others):.2f}" if others else "-"
            cpu = sum(b.server_cpu_s for b in rows) / len(rows) / DETECTORS * 1e3
            quiet = _pct([b.quiet_s for b in rows], 50)
            wrong = sum(b.runs != DETECTORS for b in rows)
            lines.append(f"| {database} | {mode} | {len(rows)} | {_pct(last, 50):.2f} / {_pct(last, 95):.2f} | "
                         f"{_pct(first, 50):.2f} | {ratio} | {other} | {wrong} | {cpu:.0f} | "
                         f"{quiet:.1f} |")  # fmt: skip
    lines += ["", *_verdict(bursts, args), "", f"![runs created over time]({RESULTS / 'burst_runs.png'})", ""]
    return "\n".join(lines)


def _verdict(bursts: list[Burst], args: argparse.Namespace) -> list[str]:
    pg = [b for b in bursts if b.database == "postgresql"]
    shipped = _mode(args.shipped)
    ours = [b.last_s for b in pg if b.mode == shipped]
    base = [b.last_s for b in pg if b.mode == SEQUENTIAL]
    if not ours or not base:
        return [f"(no PostgreSQL rows for the shipped setting, {shipped})"]
    p50, ratio = _pct(ours, 50), _pct(ours, 50) / _pct(base, 50)
    return [
        f"Targets, on PostgreSQL with the shipped settings ({shipped}): all 189 created within 2 s "
        f"(p50): **{p50:.2f} s ({'met' if p50 <= 2 else 'NOT met'})**; at most half the time of one POST at a "
        f"time on the same server in the same run: **{ratio:.2f}x ({'met' if ratio <= 0.5 else 'NOT met'})**."
    ]


def plot(bursts: list[Burst], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, database in zip(axes, ("sqlite", "postgresql"), strict=True):
        for mode in dict.fromkeys(b.mode for b in bursts if b.database == database):
            rows = [b for b in bursts if b.database == database and b.mode == mode]
            median = sorted(rows, key=lambda b: b.last_s)[len(rows) // 2]  # the median repeat
            ax.step(median.created_s, range(1, len(median.created_s) + 1), where="post", label=mode)
        ax.set_title(f"Prefect on {database}: the median repeat")
        ax.set_xlabel("seconds after the 189 entries landed")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("runs created")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pg_version() -> str:
    import psycopg  # noqa: PLC0415

    from pp_devkit.postgres import ADMIN_URL  # noqa: PLC0415

    with psycopg.connect(ADMIN_URL) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]).split()[0] if row else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--levels", nargs="+", default=["4", "16"], help="create_concurrency values to run")
    parser.add_argument("--sqlite-repeats", type=int, default=2, help="repeats on SQLite (~6 min each here)")
    parser.add_argument("--shipped", default="4", help="the settings' default create_concurrency")
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.levels, args.repeats, args.samples)
    started = time.monotonic()
    bursts: list[Burst] = []
    with tempfile.TemporaryDirectory(prefix="pp-bench-burst-") as tmp:
        for database in args.databases:
            samples = Path(tmp) / f"{database}.json"
            argv = [sys.executable, "-m", "bench.bench_burst", "--child", database, "--samples", str(samples),
                    "--repeats", str(args.sqlite_repeats if database == "sqlite" else args.repeats),
                    "--levels", *args.levels]  # fmt: skip
            subprocess.run(argv, check=True)
            bursts += [Burst(**b) for b in json.loads(samples.read_text())]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "burst.json").write_text(json.dumps([asdict(b) for b in bursts], indent=1))
    plot(bursts, RESULTS / "burst_runs.png")
    from bench.bench_fanout import _replace_section  # noqa: PLC0415

    section = render(bursts, args, time.monotonic() - started)
    _replace_section(args.output, section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
