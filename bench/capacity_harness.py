"""The stack, activator pool and counters that the capacity benchmarks share (imported after Prefect is set up).

A ``CapacityStack`` runs Redis, the Kafka-protocol broker and a Prefect server (SQLite, or PostgreSQL in a
throwaway database), the alerts ledger on a throwaway PostgreSQL database, and a pool of activator
processes (``bench.capacity_activator``: the real flow, image work replaced by a calibrated sleep). It
feeds LSSTCam visits through the real fan-out script and reads the outcomes back from the results stream.
What the Prefect server wrote is counted in its own database, table by table.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import sqlalchemy

from bench.cpu import cpu_s, tree_cpu_s, wait_quiet
from pp_devkit.postgres import fresh_database
from pp_devkit.sim import next_visit_message, plan_visits
from pp_devkit.stack import Stack, free_port
from prompt_processing.adapters.redis_client import make_redis
from prompt_processing.adapters.results import read_results
from prompt_processing.adapters.streams import StreamFanOut
from prompt_processing.model.events import NextVisit
from prompt_processing.model.instruments import LSSTCAM
from prompt_processing.settings import (
    FLOW_RUN_SECTIONS,
    ApdbSettings,
    InstrumentSettings,
    KafkaSettings,
    MetricsSettings,
    PrefectSettings,
    QueueSettings,
    RedisSettings,
    Settings,
    StackSettings,
    export_env,
)  # fmt: skip

INSTRUMENT = "LSSTCam"
SERVICES = ["redis", "kafka", "prefect"]
TABLES = {  # what the Prefect server stores, by kind of API write
    "task runs": "task_run",
    "task run states": "task_run_state",
    "flow run states": "flow_run_state",
    "logs": "log",
    "events": "events",
    "artifacts": "artifact",
}


@dataclass(frozen=True)
class Calibration:
    """The sleep that stands for a visit-detector's image work (see ``bench.capacity_activator``)."""

    compute_s: float = 1.5
    io_s: float = 0.19

    @property
    def per_visit_s(self) -> float:
        return self.compute_s + self.io_s


class CapacityStack:
    """One database's stack and its activator pool; ``with CapacityStack.running(...) as stack``."""

    def __init__(self, settings: Settings, prefect_db_url: str, server: psutil.Process) -> None:
        self.settings = settings
        self.server = server
        self.engine = sqlalchemy.create_engine(prefect_db_url.replace("+asyncpg", "+psycopg").replace(
            "+aiosqlite", ""))  # fmt: skip
        self.redis = make_redis(settings.redis, settings.retry, name="bench-capacity")
        self.activators: list[subprocess.Popen[bytes]] = []
        self.start_s: list[float] = []  # process spawned -> its first read of the work stream
        self._pointing = plan_visits(LSSTCAM, 1)[0]
        self._log = open(Path(settings.stack.state_dir) / "activators.log", "ab")  # noqa: SIM115 - closed in close()

    @classmethod
    @contextmanager
    def running(cls, state: Path, prefect_port: int, database: str) -> Iterator[CapacityStack]:
        with fresh_database("pp_bench_ledger") as ledger_url:
            if database == "postgresql":
                with fresh_database("pp_bench_prefect") as url:
                    async_url = url.replace("+psycopg", "+asyncpg")
                    with cls._up(state, prefect_port, async_url, ledger_url) as stack:
                        yield stack
            else:
                with cls._up(state, prefect_port, None, ledger_url) as stack:
                    yield stack

    @classmethod
    @contextmanager
    def _up(cls, state: Path, port: int, db_url: str | None, ledger_url: str) -> Iterator[CapacityStack]:
        settings = Settings(
            redis=RedisSettings(port=free_port()), kafka=KafkaSettings(port=free_port()),
            prefect=PrefectSettings(port=port, database_url=db_url), apdb=ApdbSettings(db_url=ledger_url),
            queue=QueueSettings(claim_idle_s=120), instruments={INSTRUMENT: InstrumentSettings()},
            metrics=MetricsSettings(router_port=0), stack=StackSettings(state_dir=state),
        )  # fmt: skip
        os.environ |= export_env(settings, *FLOW_RUN_SECTIONS) | {"PREFECT_LOGGING_LEVEL": "INFO"}
        stack = Stack(settings)
        statuses = stack.up(SERVICES)
        try:
            server = psutil.Process(next(s.pid for s in statuses if s.name == "prefect"))
            sqlite = f"sqlite:///{state / 'prefect' / 'prefect.db'}"  # the stack's server home
            capacity = cls(settings, db_url or sqlite, server)
            try:
                yield capacity
            finally:
                capacity.close()
        finally:
            stack.down(SERVICES)

    # ------------------------------------------------------------------ activators

    def start_activators(self, n: int, calibration: Calibration, env: dict[str, str] | None = None,
                         timeout_s: float = 300.0) -> None:  # fmt: skip
        """Start activators until ``n`` run, each waiting on the work stream. Their start times (spawned ->
        reading the work stream: imports, the flow run, the clients) are kept, in the order they joined."""
        before, spawned_at = self._joined(), time.monotonic()
        for _ in range(n - len(self.activators)):
            argv = [sys.executable, "-m", "bench.capacity_activator", INSTRUMENT,
                    "--compute-s", str(calibration.compute_s), "--io-s", str(calibration.io_s)]  # fmt: skip
            self.activators.append(subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                                    env=os.environ | (env or {})))  # fmt: skip
        deadline, seen = time.monotonic() + timeout_s, before
        while seen < n:
            joined = self._joined()
            self.start_s += [time.monotonic() - spawned_at] * (joined - seen)
            seen = max(seen, joined)
            dead = [p.pid for p in self.activators if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"activators did not start (exited: {dead}); see {self._log.name}")
            time.sleep(0.05)

    def _joined(self) -> int:
        """Activators that reached their loop: their Redis client (``pp-activator-*``) has issued XREADGROUP.
        (A consumer blocked on an empty stream is not yet listed by XINFO CONSUMERS.)"""
        return sum(str(c["name"]).startswith("pp-activator-") and c["cmd"] == "xreadgroup"
                   for c in self.redis.client_list())  # fmt: skip

    def stop_activators(self, timeout_s: float = 60.0) -> None:
        """SIGTERM (the pod's deletion): each hands back what it holds and its run ends Cancelled."""
        for process in self.activators:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.activators:
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.activators.clear()

    def activators_rss_bytes(self) -> list[int]:
        return [psutil.Process(p.pid).memory_info().rss for p in self.activators if p.poll() is None]

    def activators_cpu_s(self) -> float:
        return sum(cpu_s(psutil.Process(p.pid)) for p in self.activators if p.poll() is None)

    def server_cpu_s(self) -> float:
        return tree_cpu_s(self.server)

    # ------------------------------------------------------------------ work and what came of it

    def announce(self, group: str, detectors: Sequence[int]) -> float:
        """Fan one visit out to ``detectors`` (the fan-out's script); return when (unix s)."""
        body = next_visit_message(LSSTCAM, self._pointing, now_utc_s=time.time(), lead_s=20, seq_num=1)
        visit = NextVisit.from_json(json.dumps(body | {"groupId": group}))
        writer = StreamFanOut(self.redis, dedup_ttl_s=3600, stream_maxlen=1_000_000)
        at = time.time()
        if writer.write(visit, INSTRUMENT, detectors) != len(detectors):
            raise RuntimeError(f"fan-out of {group} did not add {len(detectors)} entries")
        return at

    def outcomes(self, prefix: str) -> list[dict[str, str]]:
        return [r for r in read_results(self.redis, INSTRUMENT) if r["group"].startswith(prefix)]

    def wait_outcomes(self, prefix: str, n: int, timeout_s: float, tick: Callable[[int], None] | None = None
                      ) -> list[dict[str, str]]:  # fmt: skip
        """The outcomes of groups starting with ``prefix`` once there are ``n`` (or at the timeout)."""
        deadline = time.monotonic() + timeout_s
        while True:
            done = self.outcomes(prefix)
            if tick is not None:
                tick(len(done))
            if len(done) >= n or time.monotonic() > deadline:
                return done
            time.sleep(0.2)

    def rows(self) -> dict[str, int]:
        """Rows in the Prefect server's tables, by kind of API write."""
        with self.engine.connect() as conn:
            return {kind: int(conn.execute(sqlalchemy.text(f"SELECT count(*) FROM {table}")).scalar_one())
                    for kind, table in TABLES.items()}  # fmt: skip

    def postgres_cpu_s(self) -> float:
        """CPU seconds of the machine's PostgreSQL so far: the postmaster, its live backends, and the backends
        that have exited (the kernel adds a reaped child's time to its parent's). That is the Prefect
        database's and the ledger's work, and any other client's: the benchmark runs alone."""
        for process in psutil.process_iter(["name"]):
            if process.info["name"] == "postgres" and process.parent() is not None and \
                    process.parent().name() != "postgres":  # fmt: skip
                times = process.cpu_times()
                live = sum(cpu_s(child) for child in process.children())
                return float(times.user + times.system + times.children_user + times.children_system) + live
        return 0.0

    def db_bytes(self) -> int:
        """The Prefect database's size on disk (PostgreSQL's pg_database_size; SQLite's file with its WAL)."""
        if self.engine.dialect.name == "postgresql":
            with self.engine.connect() as conn:
                return int(conn.execute(sqlalchemy.text("SELECT pg_database_size(current_database())")).scalar_one())
        path = Path(str(self.engine.url.database))
        return sum(f.stat().st_size for f in (path, path.with_name(path.name + "-wal")) if f.exists())

    def quiesce(self) -> None:
        """Wait until the server is quiet again (its recorders have caught up with what was sent)."""
        wait_quiet(self.server, timeout_s=120.0)

    def close(self) -> None:
        self.stop_activators()
        self.redis.close()
        self.engine.dispose()
        self._log.close()


def new_prefix(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:6]}-"
