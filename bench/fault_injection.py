"""The faults of ``make faults`` (``bench.faults``): one small function each, injected into the running stack.

Each fault function takes the :class:`Rig` (the embedded stack, the services the harness runs, a Redis
client) and returns an :class:`Injected`: when the fault began and ended, what was hit, and a note.
A fault that cannot be injected on this stack has an ``applicable`` check that says why not.

How the services are found and brought back: the demo's services (fan-out, router, Butler writer,
Prefect worker, autoscaler, reporter) are children of the harness; :meth:`Rig.snapshot_services`
records each one's command line and environment once they run, so a killed one is started again
exactly as it was (as Kubernetes restarts a crashed container), with its log appended. The stack's
own servers (Redis, Tansu, moto, Prefect) are stopped and started through ``pp stack``'s
:class:`~pp_devkit.stack.Stack`, or paused with SIGSTOP / SIGCONT through their pid files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis
from confluent_kafka import Consumer, TopicPartition

from pp_devkit.processes import read_record
from pp_devkit.stack import Stack
from prompt_processing.adapters.redis_client import make_redis
from prompt_processing.adapters.results import read_entries
from prompt_processing.model import naming
from prompt_processing.reporting.outcomes import Outcome, parse
from prompt_processing.settings import Settings

INSTRUMENT = "LSSTCam"
VisitDetector = tuple[str, int]
RESTART_AFTER_S = 1.0
"""A killed service is started again this long after the kill (Kubernetes' first restart is immediate)."""
BUSY_WAIT_S = 30.0
"""Longest wait for an activator holding an entry (or a Butler writer behind), from the chosen moment."""
SERVICE_NAMES = {"fanout": "fanout", "router": "router", "butler-writer": "butler-writer",
                 "autoscale": "autoscaler", "reporter": "reporter"}  # fmt: skip
"""``pp <command>`` -> the service's name in the demo's logs."""


class NotApplicable(Exception):
    """The fault cannot be injected on this stack; the message says why."""


@dataclass(frozen=True)
class Injected:
    """One injected fault. ``start``/``end``: unix s of the outage (equal for an instantaneous kill).
    ``hit``: the visit-detector an activator held when killed. ``recovered_at``: set by faults whose
    recovery is not seen in the outcome records (another activator taking a killed one's entry, the fan-out
    fanning out again, the Butler writer catching up)."""

    start: float
    end: float
    note: str = ""
    hit: tuple[str, int] | None = None
    recovered_at: float | None = None


@dataclass(frozen=True)
class ServiceLaunch:
    """How a service of the demo was started: enough to start it again the same way."""

    argv: list[str]
    env: dict[str, str]
    cwd: str


@dataclass
class Rig:
    """What the faults act on. ``redis``: a client of the harness (short timeouts); ``before_redis_loss``:
    called (clients' writes paused) right before Redis loses or may lose data, so the harness reads the
    streams first."""

    settings: Settings
    stack: Stack
    redis: redis.Redis
    logs: Path
    before_redis_loss: Callable[[], None]
    launches: dict[str, ServiceLaunch] = field(default_factory=dict)
    processes: dict[str, psutil.Process] = field(default_factory=dict)
    respawned: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def snapshot_services(self) -> None:
        """Record the running services' processes and how each was started."""
        for child in psutil.Process().children():
            name = _service_name(child)
            if name is not None:
                with child.oneshot():
                    self.launches[name] = ServiceLaunch(child.cmdline(), child.environ(), child.cwd())
                self.processes[name] = child

    def restart_dead_services(self) -> list[str]:
        """Start again any service that exited (killed by a fault, or crashed); return their names."""
        dead = [name for name, process in self.processes.items() if not _alive(process)]
        for name in dead:
            self.start_service(name)
        return dead

    def start_service(self, name: str) -> None:
        """Start ``name`` as it was started first, its output appended to its log."""
        launch = self.launches[name]
        with (self.logs / f"{name}.log").open("ab") as log:
            popen = subprocess.Popen(launch.argv, env=launch.env, cwd=launch.cwd, stdout=log, stderr=subprocess.STDOUT)
        self.respawned.append(popen)
        self.processes[name] = psutil.Process(popen.pid)

    def kill_service(self, name: str) -> float:
        """SIGKILL ``name``; return when (unix s)."""
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        killed_at = time.time()
        with contextlib.suppress(psutil.Error):
            process.wait(10)  # collect it (it is our child)
        return killed_at

    def stop_respawned(self) -> None:
        """SIGTERM the services this module started again, SIGKILL after 30 s."""
        for popen in self.respawned:
            if popen.poll() is None:
                popen.terminate()
        for popen in self.respawned:
            try:
                popen.wait(30)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()

    def server_pid(self, name: str) -> int:
        """The pid of the stack's server ``name`` (redis, kafka, s3, prefect) from its pid file."""
        record = read_record(Path(self.settings.stack.state_dir) / f"{name}.pid")
        if record is None:
            raise RuntimeError(f"{name}: no pid file; is the stack up?")
        return record.pid


def _service_name(process: psutil.Process) -> str | None:
    """The demo's name for a child process of the harness, or None if it is not one of its services."""
    try:
        cmdline = process.cmdline()
    except psutil.Error:
        return None
    if cmdline[2:5] == ["prefect", "worker", "start"]:  # [python, -m, prefect, worker, start, ...]
        return "prefect-worker"
    if cmdline[1:3] == ["-m", "prompt_processing.cli"] and len(cmdline) > 3:  # [python, -m, ..., <command>]
        return SERVICE_NAMES.get(cmdline[3])
    return None


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


# --------------------------------------------------------------------------- what the harness sees


class Recorder(threading.Thread):
    """Copies the instrument's work stream, results stream and dead-letter stream into memory as they grow
    (every ``every_s``), so the harness keeps every entry and outcome record even when Redis loses its data."""

    def __init__(self, client: redis.Redis, every_s: float = 0.25) -> None:
        super().__init__(name="recorder", daemon=True)
        self._client, self._every_s = client, every_s
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._outcomes: dict[str, Outcome] = {}
        self._dead: dict[str, VisitDetector] = {}
        self._entries: dict[str, VisitDetector] = {}
        self._after = {"results": "0-0", "dead": "0-0", "work": "0-0"}

    def run(self) -> None:
        while not self._stopping.wait(self._every_s):
            with contextlib.suppress(redis.RedisError):
                self.poll()

    def stop(self) -> None:
        self._stopping.set()
        self.join(10)

    def poll(self) -> None:
        """Read what was added to the three streams since the last read."""
        with self._lock:
            for entry_id, fields in read_entries(self._client, INSTRUMENT, after=self._after["results"]):
                self._outcomes[entry_id] = parse(INSTRUMENT, entry_id, fields)
                self._after["results"] = entry_id
            for entry_id, vd in self._read("dead", naming.dead_letter_stream(INSTRUMENT)):
                self._dead[entry_id] = vd
            for entry_id, vd in self._read("work", naming.stream_name(INSTRUMENT)):
                self._entries[entry_id] = vd

    def _read(self, name: str, stream: str) -> list[tuple[str, VisitDetector]]:
        entries: Any = self._client.xrange(stream, min=f"({self._after[name]}")
        if entries:
            self._after[name] = _text(entries[-1][0])
        return [(_text(entry_id), _visit_detector(fields)) for entry_id, fields in entries]

    def outcomes(self) -> list[Outcome]:
        with self._lock:
            return sorted(self._outcomes.values(), key=lambda o: o.recorded_at)

    def dead_letters(self) -> list[VisitDetector]:
        with self._lock:
            return list(self._dead.values())

    def visit_detectors(self) -> set[VisitDetector]:
        """(group, detector) of every outcome record and dead-lettered entry."""
        with self._lock:
            return {(o.group, o.detector) for o in self._outcomes.values()} | set(self._dead.values())

    def entries(self, entry_ids: set[str]) -> set[VisitDetector]:
        """The visit-detectors of these work-stream entries (those seen)."""
        with self._lock:
            return {self._entries[i] for i in entry_ids if i in self._entries}

    def outcomes_of_night(self, since: float) -> int:
        """Outcome records of the visits first fanned out at or after ``since`` (unix s)."""
        with self._lock:
            groups = {vd[0] for entry_id, vd in self._entries.items() if _entry_time(entry_id) >= since}
            return sum(o.group in groups for o in self._outcomes.values())

    def first_entry_after(self, since: float, timeout_s: float, cancelled: threading.Event) -> float | None:
        """When the first work-stream entry added at or after ``since`` was (unix s: a night's first visit
        fanned out); None after ``timeout_s`` or once ``cancelled`` is set."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not cancelled.is_set():
            with self._lock:
                times = [t for t in map(_entry_time, self._entries) if t >= since]
            if times:
                return min(times)
            cancelled.wait(0.1)
        return None


def live_visit_detectors(client: redis.Redis, recorder: Recorder) -> set[VisitDetector]:
    """Visit-detectors whose work-stream entries are pending (held, or backing off) or not yet delivered: still
    to come. Empty if Redis does not answer or the stream or group is gone."""
    stream, group = naming.stream_name(INSTRUMENT), naming.consumer_group(INSTRUMENT)
    try:
        groups: Any = client.xinfo_groups(stream)
        last = next(_text(g["last-delivered-id"]) for g in groups if _text(g["name"]) == group)
        pending: Any = client.xpending_range(stream, group, "-", "+", 10_000)
        undelivered: Any = client.xrange(stream, min=f"({last}")
    except (redis.RedisError, StopIteration):
        return set()
    held = recorder.entries({_text(p["message_id"]) for p in pending})
    return held | {_visit_detector(fields) for _id, fields in undelivered}


def _visit_detector(fields: dict[Any, Any]) -> VisitDetector:
    text = {_text(k): _text(v) for k, v in fields.items()}
    return text.get("groupId", ""), int(text.get("detector", -1))


def _entry_time(entry_id: str) -> float:
    return int(entry_id.split("-", 1)[0]) / 1000


# --------------------------------------------------------------------------- the faults


def sigkill_activator(rig: Rig) -> Injected:
    """SIGKILL the activator flow run that holds an entry (mid-visit); the Prefect worker stays."""
    deadline = time.monotonic() + BUSY_WAIT_S
    while time.monotonic() < deadline:
        for consumer, entry_id in _held_entries(rig.redis):
            process = _activator_process(consumer)
            if process is not None:
                hit = _entry_visit_detector(rig.redis, entry_id)
                process.send_signal(signal.SIGKILL)
                killed_at = time.time()
                claimed_at = _claimed_from(rig, consumer, entry_id)
                return Injected(killed_at, killed_at, "SIGKILL of the flow-run process holding an entry", hit,
                                claimed_at)  # fmt: skip
        time.sleep(0.05)
    raise NotApplicable(f"no activator held an entry within {BUSY_WAIT_S:g} s")


def redis_restart_wiped(rig: Rig) -> Injected:
    """Redis stopped, its data directory emptied (no AOF, no RDB), started: streams, groups and keys gone."""
    start = _pause_redis_writes(rig)
    rig.stack.down(["redis"])
    data_dir = Path(rig.settings.stack.state_dir) / "redis"
    for path in data_dir.iterdir():
        if path.name != "auth.conf":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    rig.stack.up(["redis"])
    return Injected(start, time.time(), "SIGTERM, data dir emptied, started")


def redis_aof_applicable(rig: Rig) -> str | None:
    """Why Redis with AOF cannot be restarted here (it runs without AOF), else None."""
    appendonly = rig.redis.config_get("appendonly").get("appendonly")
    fsync = rig.redis.config_get("appendfsync").get("appendfsync")
    if appendonly != "yes":
        return "the embedded Redis runs without AOF (pp_devkit/stack_services.py: --appendonly no)"
    return None if fsync else "appendfsync unknown"


def redis_restart_aof(rig: Rig) -> Injected:
    """Redis crashed (SIGKILL) and started again from its AOF: with ``appendfsync everysec`` the last
    second of writes may be lost."""
    start = _pause_redis_writes(rig)
    server = psutil.Process(rig.server_pid("redis"))
    server.send_signal(signal.SIGKILL)
    server.wait(10)  # gone (and collected: the stack spawned it from this process) before it is started again
    rig.stack.up(["redis"])
    fsync = rig.redis.config_get("appendfsync").get("appendfsync")
    return Injected(start, time.time(), f"SIGKILL, started from the AOF (appendfsync {fsync})")


def redis_pause(rig: Rig, seconds: float = 20.0) -> Injected:
    """Redis frozen (SIGSTOP) for ``seconds``, then SIGCONT: connections hang, no data is lost."""
    return _paused(rig.server_pid("redis"), seconds, "SIGSTOP / SIGCONT: clients time out, data kept")


def s3_pause(rig: Rig, seconds: float = 30.0) -> Injected:
    """The S3 endpoint (moto) frozen for ``seconds``: moto keeps its objects in memory, so a stop would
    lose them; SIGSTOP / SIGCONT is an outage that keeps them."""
    return _paused(rig.server_pid("s3"), seconds, "moto SIGSTOP / SIGCONT (a stop would lose its in-memory objects)")


def kafka_pause(rig: Rig, seconds: float = 15.0) -> Injected:
    """The broker frozen (SIGSTOP) for ``seconds``, then SIGCONT: unreachable, its topics kept."""
    return _paused(rig.server_pid("kafka"), seconds, "Tansu SIGSTOP / SIGCONT: clients time out, topics kept")


def kafka_restart_applicable(rig: Rig) -> str | None:
    """Why the broker cannot be restarted here without losing its topics, else None."""
    if rig.settings.kafka.storage_engine.startswith("memory"):
        return ("not applicable here: the embedded Tansu keeps topics and committed offsets in memory "
                f"({rig.settings.kafka.storage_engine}), so a restart loses every message: not survivable")  # fmt: skip
    return None


def kafka_restart(rig: Rig, seconds: float = 15.0) -> Injected:
    """The broker stopped (SIGTERM) for ``seconds`` and started again on its durable storage."""
    start = time.time()
    rig.stack.down(["kafka"])
    time.sleep(max(0.0, start + seconds - time.time()))
    rig.stack.up(["kafka"])
    return Injected(start, time.time(), f"Tansu on {rig.settings.kafka.storage_engine}: topics and offsets kept")


def prefect_restart(rig: Rig) -> Injected:
    """The Prefect server stopped and started again (its SQLite database kept)."""
    start = time.time()
    rig.stack.down(["prefect"])
    rig.stack.up(["prefect"])
    return Injected(start, time.time(), "API unreachable while it restarts")


def router_kill(rig: Rig) -> Injected:
    """The arrival router SIGKILLed, started again a second later."""
    return _kill_and_restart(rig, "router", "SIGKILL, restarted by the harness")


def fanout_kill(rig: Rig) -> Injected:
    """The fan-out SIGKILLed the moment a visit's entries appear in the stream (a blocking XREAD wakes on
    them): after its Redis transaction, and before its Kafka offset commit if the kill wins the race (the
    commit follows the transaction by about a millisecond). Which one it was is read back from the group's
    committed offset before the fan-out starts again. Recovered when the next visit's entries appear.

    (Holding the fan-out between the two, by pausing Redis writes until its transaction waits on EXEC and
    freezing the broker, was tried: the fan-out's other writes come first and its calls time out meanwhile.)"""
    stream = naming.stream_name(INSTRUMENT)
    blocking = make_redis(rig.settings.redis, rig.settings.retry, name="faults-xread", socket_timeout_s=BUSY_WAIT_S + 5)
    try:
        killed_at, group = _kill_fanout_on_entries(rig, blocking, _last_entry(blocking))
        uncommitted = group in _uncommitted_groups(rig.settings)
        time.sleep(RESTART_AFTER_S)
        last = _last_entry(blocking)
        rig.start_service("fanout")
        restarted_at = time.time()
        following: Any = blocking.xread({stream: last}, count=1, block=int(BUSY_WAIT_S * 1000))
    finally:
        blocking.close()
    when = "before its offset commit: redelivered" if uncommitted else "after its offset commit"
    return Injected(killed_at, restarted_at, f"killed {when}", recovered_at=time.time() if following else None)


def _kill_fanout_on_entries(rig: Rig, blocking: redis.Redis, after: str) -> tuple[float, str]:
    """SIGKILL the fan-out as soon as entries follow ``after``; (when, their groupId)."""
    fanout = rig.processes["fanout"]
    reply: Any = blocking.xread({naming.stream_name(INSTRUMENT): after}, count=1, block=int(BUSY_WAIT_S * 1000))
    if not reply:
        raise NotApplicable(f"no visit fanned out within {BUSY_WAIT_S:g} s")
    os.kill(fanout.pid, signal.SIGKILL)  # first, before anything else: the commit is a millisecond away
    killed_at = time.time()
    with contextlib.suppress(psutil.Error):
        fanout.wait(10)
    return killed_at, _text(reply[0][1][0][1].get(b"groupId", b""))


def _last_entry(client: redis.Redis) -> str:
    last: Any = client.xrevrange(naming.stream_name(INSTRUMENT), count=1)
    return _text(last[0][0]) if last else "0-0"


def writer_kill(rig: Rig) -> Injected:
    """The Butler writer SIGKILLed while it has events not yet committed (mid-batch), started again;
    recovered when its committed offset reaches the end of the topic."""
    deadline = time.monotonic() + BUSY_WAIT_S
    while _writer_lag(rig.settings) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    lag = _writer_lag(rig.settings)
    injected = _kill_and_restart(rig, "butler-writer", f"SIGKILL with {lag} event(s) uncommitted")
    deadline = time.monotonic() + 120
    while _writer_lag(rig.settings) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    caught_up = time.time() if _writer_lag(rig.settings) == 0 else None
    return Injected(injected.start, injected.end, injected.note, recovered_at=caught_up)


def postgres_applicable(rig: Rig) -> str | None:
    """None if the stack uses PostgreSQL (the Prefect server's database or the APDB), else why not."""
    if _postgres_urls(rig.settings):
        return None
    return ("not applicable here: the embedded stack keeps Prefect, the APDB and the Butler registry on SQLite "
            "(set PP_APDB__DB_URL or PP_PREFECT__DATABASE_URL to a postgresql:// URL to include it)")  # fmt: skip


def postgres_drop(rig: Rig) -> Injected:
    """Every connection to the stack's PostgreSQL databases terminated (``pg_terminate_backend``)."""
    import psycopg  # noqa: PLC0415 - only when the stack uses PostgreSQL

    start, dropped = time.time(), 0
    for url in _postgres_urls(rig.settings):
        admin = url.split("+", 1)[0].split("://", 1)[1]
        database = admin.rsplit("/", 1)[1].split("?", 1)[0]
        with psycopg.connect(f"postgresql://{admin.rsplit('/', 1)[0]}/postgres", autocommit=True) as conn:
            rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = %s AND pid <> pg_backend_pid()", (database,)).fetchall()  # fmt: skip
            dropped += len(rows)
    return Injected(start, time.time(), f"{dropped} connection(s) terminated")


# --------------------------------------------------------------------------- helpers


def _paused(pid: int, seconds: float, note: str) -> Injected:
    start = time.time()
    os.killpg(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.killpg(pid, signal.SIGCONT)
    return Injected(start, time.time(), note)


def _kill_and_restart(rig: Rig, name: str, note: str) -> Injected:
    killed_at = rig.kill_service(name)
    time.sleep(RESTART_AFTER_S)
    rig.start_service(name)
    return Injected(killed_at, time.time(), note)


def _pause_redis_writes(rig: Rig) -> float:
    """Block every client's writes (CLIENT PAUSE WRITE), then let the harness read the results streams
    to their end, so nothing recorded is lost to the harness with Redis' data; return when it began."""
    start = time.time()
    rig.redis.client_pause(10_000, all=False)  # writes only
    rig.before_redis_loss()
    return start


def _claimed_from(rig: Rig, consumer: str, entry_id: str) -> float | None:
    """When another activator took ``entry_id`` from the killed ``consumer`` (its processing resumed): the
    first poll that finds it pending for someone else, or no longer pending; None if neither happened within
    ``claim_idle_s`` + 120 s."""
    stream, group = naming.stream_name(INSTRUMENT), naming.consumer_group(INSTRUMENT)
    deadline = time.monotonic() + rig.settings.queue.claim_idle_s + 120
    while time.monotonic() < deadline:
        try:
            pending: Any = rig.redis.xpending_range(stream, group, entry_id, entry_id, 1)
        except redis.RedisError:
            pending = None
        if pending is not None:
            owners = [_text(p["consumer"]) for p in pending]
            if not owners or owners[0] not in (consumer, naming.PARKING_CONSUMER):
                return time.time()
        time.sleep(0.1)
    return None


def _held_entries(client: redis.Redis) -> list[tuple[str, str]]:
    """(consumer, entry id) of every entry an activator holds (the parking consumer's excluded)."""
    try:
        pending: Any = client.xpending_range(naming.stream_name(INSTRUMENT), naming.consumer_group(INSTRUMENT),
                                             "-", "+", 100)  # fmt: skip
    except redis.RedisError:
        return []
    return [(_text(p["consumer"]), _text(p["message_id"])) for p in pending
            if _text(p["consumer"]) != naming.PARKING_CONSUMER]  # fmt: skip


def _activator_process(consumer: str) -> psutil.Process | None:
    """The flow-run process whose consumer name is ``consumer`` (``<host>-<flow run id[:8]>``)."""
    run_prefix = consumer.rsplit("-", 1)[-1]
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if process.environ().get("PREFECT__FLOW_RUN_ID", "").startswith(run_prefix):
                return process
    return None


def _entry_visit_detector(client: redis.Redis, entry_id: str) -> VisitDetector:
    entries: Any = client.xrange(naming.stream_name(INSTRUMENT), min=entry_id, max=entry_id)
    return _visit_detector(entries[0][1]) if entries else ("?", -1)


def _uncommitted_groups(settings: Settings) -> set[str]:
    """groupIds of the next-visit messages at or after the fan-out group's committed offset."""
    k = settings.kafka
    values = _read_from_committed(settings, settings.fanout.group_id, k.next_visit_topic)
    groups = set()
    for value in values:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            groups.add(str(json.loads(value).get("groupId")))
    return groups


def _read_from_committed(settings: Settings, group_id: str, topic: str, quiet_s: float = 1.0) -> list[bytes]:
    """The messages of ``topic`` (partition 0) from ``group_id``'s committed offset on, without joining the group."""
    consumer = Consumer({**settings.kafka.client_config(), "group.id": group_id, "enable.auto.commit": False})
    try:
        (committed,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        consumer.assign([TopicPartition(topic, 0, max(committed.offset, 0))])
        values = []
        while (message := consumer.poll(quiet_s)) is not None:
            if message.error() is None:
                values.append(message.value() or b"")
        return values
    finally:
        consumer.close()


def _writer_lag(settings: Settings) -> int:
    """pp-output events the Butler writer has not committed (0 if Kafka does not answer)."""
    topic = settings.kafka.butler_writer_topic
    consumer = Consumer({**settings.kafka.client_config(), "group.id": settings.butler.writer_group_id,
                         "enable.auto.commit": False})  # fmt: skip
    try:
        (committed,) = consumer.committed([TopicPartition(topic, 0)], timeout=5)
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)
    except Exception:  # a broker not answering: no lag known
        return 0
    finally:
        consumer.close()
    return max(0, high - max(committed.offset, 0))


def _postgres_urls(settings: Settings) -> list[str]:
    urls = [settings.prefect.database_url or "", settings.apdb.db_url or ""]
    return [url for url in urls if url.startswith("postgresql")]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
