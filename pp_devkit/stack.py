"""The embedded stack behind ``pp stack up | down | status``: Redis, Kafka, S3 and Prefect on one machine.

Guarantees:

* ``up`` starts every selected embedded service in parallel and returns only once each one
  answers its health check; a service that exits or stays unhealthy for
  ``settings.stack.start_timeout_s`` is stopped again and reported in a :class:`StackError` with
  the tail of its log. ``up`` is idempotent: a healthy service it started earlier is left alone.
* A port held by a process ``up`` did not start is never fought over: ``up`` raises before
  starting anything and names the ``PP_`` setting to change.
* ``down`` only signals processes recorded in this stack's pid files *and* verified to be those
  very processes (same boot, same creation time and a matching command line, see
  :mod:`pp_devkit.processes`), so a recycled pid or a service started some other way is never
  killed. It sends SIGTERM (to the process group if the service leads one), SIGKILL after
  ``settings.stack.stop_timeout_s``, and raises :class:`StackError` if a service survives SIGKILL;
  exited services that are children of the calling process are collected, never left as zombies.
* Services marked ``embedded=False`` are external: ``up`` and ``status`` only health-check them,
  ``down`` never touches them.

State lives under ``settings.stack.state_dir``: ``<name>.pid`` (JSON), ``logs/<name>.log`` and
data directories. Services run in their own session, so they outlive the ``pp`` command.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tenacity
from rich.table import Table

from pp_devkit.processes import PidRecord, exit_detail, is_ours, read_record, spawn, stop_process, write_record
from pp_devkit.stack_services import (
    SERVICE_NAMES,
    Launch,
    ServiceSpec,
    StackError,
    free_port,
    port_open,
    port_taken,
    redis_server_binary,
    service_spec,
)
from prompt_processing.settings import Settings

__all__ = [
    "SERVICE_NAMES",
    "ServiceState",
    "ServiceStatus",
    "Stack",
    "StackError",
    "free_port",
    "redis_server_binary",
    "render_statuses",
]

ServiceState = Literal["running", "stopped", "external", "unhealthy"]

LOG_TAIL_LINES = 20
PROBE_TIMEOUT_S = 2.0
"""Longest single health probe (``up`` repeats probes until ``start_timeout_s``)."""
POLL_INTERVAL_S = 0.05
"""First pause between health checks in ``up``; it doubles up to ``POLL_MAX_INTERVAL_S``."""
POLL_MAX_INTERVAL_S = 0.5


@dataclass(frozen=True)
class ServiceStatus:
    """One service as seen by ``up``, ``down`` or ``status``.

    ``state`` is ``running`` (ours and healthy), ``stopped``, ``external`` (not managed here and
    healthy) or ``unhealthy`` (ours but failing its check, or an unreachable external service).
    """

    name: str
    state: ServiceState
    pid: int | None
    address: str
    detail: str


class Stack:
    """Starts, stops and inspects the embedded services configured by ``settings``.

    Holds no processes itself: everything it knows across calls is in the state directory, so
    separate ``Stack`` objects (and separate ``pp`` commands) see the same stack.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._state_dir = settings.stack.state_dir.absolute()

    # ----------------------------------------------------------------------- public API

    def up(self, only: Sequence[str] | None = None) -> list[ServiceStatus]:
        """Start the selected services (all by default) and wait until every one is healthy.

        Raises :class:`StackError` if a port is taken by a foreign process or a running service
        of ours listens on another port than configured (nothing is started then), if a binary
        is missing, or if a service exits or is not healthy within
        ``start_timeout_s`` (the services that did come up stay up). ``ValueError`` for unknown
        names.
        """
        specs = [service_spec(name, self._settings) for name in _select(only)]
        with self._locked():
            plans = self._plan_up(specs)
            launches = {p.spec.name: p.spec.launch(self._state_dir) for p in plans if p.action == "start"}
            for plan in plans:
                if plan.spec.name in launches:
                    plan.record = self._start(plan.spec, launches[plan.spec.name])
            with ThreadPoolExecutor(max_workers=max(1, len(plans))) as pool:
                errors = list(pool.map(self._await_healthy, plans))
            return self._finish_up(plans, errors)

    def down(self, only: Sequence[str] | None = None) -> list[ServiceStatus]:
        """Stop the selected services that ``up`` started: SIGTERM to the process group, SIGKILL after
        ``stop_timeout_s``. Removes their pid files (and stale ones). Never signals any other
        process and never touches external services.
        """
        specs = [service_spec(name, self._settings) for name in _select(only)]
        with self._locked(), ThreadPoolExecutor(max_workers=max(1, len(specs))) as pool:
            return list(pool.map(self._down_one, specs))

    def status(self, only: Sequence[str] | None = None) -> list[ServiceStatus]:
        """Report the selected services (one health probe each); changes nothing."""
        specs = [service_spec(name, self._settings) for name in _select(only)]
        with ThreadPoolExecutor(max_workers=max(1, len(specs))) as pool:
            return list(pool.map(self._status_one, specs))

    # ----------------------------------------------------------------------- up

    def _plan_up(self, specs: list[ServiceSpec]) -> list[_Plan]:
        plans: list[_Plan] = []
        conflicts: list[str] = []
        for spec in specs:
            if not spec.embedded:
                plans.append(_Plan(spec, "external"))
                continue
            record = self._live_record(spec.name, remove_stale=True)
            if record is not None and record.port != spec.port:
                conflicts.append(_moved_message(spec, record))
            elif record is not None:
                plans.append(_Plan(spec, "adopt", record))
            elif port_taken(spec.host, spec.port):
                conflicts.append(_conflict_message(spec))
            else:
                plans.append(_Plan(spec, "start"))
        if conflicts:
            raise StackError("\n".join(conflicts))
        return plans

    def _start(self, spec: ServiceSpec, launch: Launch) -> PidRecord:
        for directory in launch.data_dirs:
            directory.mkdir(parents=True, exist_ok=True)
        log_path = self._log_path(spec.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        record = spawn(spec.name, spec.port, launch, log_path)
        write_record(self._pid_path(spec.name), record)
        return record

    def _await_healthy(self, plan: _Plan) -> str | None:
        """None once ``plan``'s service is healthy; else why it is not.

        Checks (first whether a process we started has exited, then a health probe) repeat with
        pauses from ``POLL_INTERVAL_S`` doubling to ``POLL_MAX_INTERVAL_S``, the last one cut short
        so that a final check happens at ``start_timeout_s``. Stops early when the process exited,
        or when a probe raises :class:`StackError` (a permanent problem; its message is returned).
        """
        timeout_s = self._settings.stack.start_timeout_s
        deadline = time.monotonic() + timeout_s
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(timeout_s),
            wait=_poll_wait(timeout_s),
            retry=tenacity.retry_if_result(lambda check: check.reason is not None and not check.final),
        )
        try:
            check = retrying(_check_health, plan, deadline)
        except tenacity.RetryError as exc:
            last: _Check = exc.last_attempt.result()
            return f"not healthy within {timeout_s:g} s (last check: {last.reason})"
        except StackError as exc:
            return str(exc)
        return check.reason

    def _finish_up(self, plans: list[_Plan], errors: list[str | None]) -> list[ServiceStatus]:
        statuses: list[ServiceStatus] = []
        failures: list[str] = []
        for plan, error in zip(plans, errors, strict=True):
            if error is None:
                statuses.append(_up_status(plan))
                continue
            failures.append(self._failure_message(plan, error))
            if plan.action == "start" and plan.record is not None:
                stop_process(plan.record, self._settings.stack.stop_timeout_s)
                self._pid_path(plan.spec.name).unlink(missing_ok=True)
        if failures:
            raise StackError("\n\n".join(failures))
        return statuses

    def _failure_message(self, plan: _Plan, error: str) -> str:
        spec = plan.spec
        message = f"{spec.name} ({spec.address}): {error}"
        if plan.action == "external":
            return f"{message}\n(external service: check it, or set {spec.embedded_variable}=true)"
        log_path = self._log_path(spec.name)
        tail = _log_tail(log_path, LOG_TAIL_LINES)
        if plan.action == "adopt":
            message += f"\n(it was already running; `pp stack down {spec.name}` stops it)"
        return f"{message}\nlast {LOG_TAIL_LINES} lines of {log_path}:\n{tail}"

    # ----------------------------------------------------------------------- down / status

    def _down_one(self, spec: ServiceSpec) -> ServiceStatus:
        if not spec.embedded:
            return ServiceStatus(spec.name, "external", None, spec.address, "external; not touched")
        path = self._pid_path(spec.name)
        had_pid_file = path.exists()
        record = self._live_record(spec.name, remove_stale=True)
        if record is None:
            detail = "removed stale pid file" if had_pid_file else "not running"
            return ServiceStatus(spec.name, "stopped", None, spec.address, detail)
        outcome = stop_process(record, self._settings.stack.stop_timeout_s)
        path.unlink(missing_ok=True)
        return ServiceStatus(spec.name, "stopped", None, spec.address, f"{outcome} (was pid {record.pid})")

    def _status_one(self, spec: ServiceSpec) -> ServiceStatus:
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        if not spec.embedded:
            reason = _safe_probe(spec, deadline)
            if reason is None:
                return ServiceStatus(spec.name, "external", None, spec.address, "external; healthy")
            return ServiceStatus(spec.name, "unhealthy", None, spec.address, f"external; {reason}")
        record = self._live_record(spec.name, remove_stale=False)
        if record is None:
            return ServiceStatus(spec.name, "stopped", None, spec.address, self._stopped_detail(spec))
        reason = _safe_probe(spec, deadline)
        if reason is None:
            return ServiceStatus(spec.name, "running", record.pid, spec.address, f"since {record.started_at}")
        return ServiceStatus(spec.name, "unhealthy", record.pid, spec.address, reason)

    def _stopped_detail(self, spec: ServiceSpec) -> str:
        if self._pid_path(spec.name).exists():
            return "not running (stale pid file)"
        if port_taken(spec.host, spec.port):
            return f"not running; {spec.host}:{spec.port} is used by another process"
        return "not running"

    # ----------------------------------------------------------------------- state files

    def _pid_path(self, name: str) -> Path:
        return self._state_dir / f"{name}.pid"

    def _log_path(self, name: str) -> Path:
        return self._state_dir / "logs" / f"{name}.log"

    def _live_record(self, name: str, *, remove_stale: bool) -> PidRecord | None:
        """The pid record of ``name`` if it names a live process we started; optionally drop stale files."""
        path = self._pid_path(name)
        record = read_record(path)
        if record is not None and is_ours(record):
            return record
        if remove_stale:
            path.unlink(missing_ok=True)
        return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialize ``up``/``down`` of this state dir across processes (flock, freed on close)."""
        self._state_dir.mkdir(parents=True, exist_ok=True)
        with (self._state_dir / "stack.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield


def render_statuses(statuses: Sequence[ServiceStatus]) -> Table:
    """A rich table of ``statuses``, one row each, in the given order."""
    colors = {"running": "green", "stopped": "dim", "external": "cyan", "unhealthy": "red"}
    table = Table(title="pp stack")
    for column in ("service", "state", "pid", "address", "detail"):
        table.add_column(column, no_wrap=column != "detail")
    for status in statuses:
        state = f"[{colors[status.state]}]{status.state}[/]"
        pid = "" if status.pid is None else str(status.pid)
        table.add_row(status.name, state, pid, status.address, status.detail)
    return table


# --------------------------------------------------------------------------- plans and messages


@dataclass
class _Plan:
    """What ``up`` does with one service: start it, adopt a running one, or only check it."""

    spec: ServiceSpec
    action: Literal["start", "adopt", "external"]
    record: PidRecord | None = None


def _select(only: Sequence[str] | None) -> tuple[str, ...]:
    """The selected names in :data:`SERVICE_NAMES` order; ``ValueError`` naming the known ones."""
    if only is None:
        return SERVICE_NAMES
    wanted = {only} if isinstance(only, str) else set(only)
    unknown = sorted(wanted - set(SERVICE_NAMES))
    if unknown:
        raise ValueError(f"unknown service(s): {', '.join(unknown)}; known: {', '.join(SERVICE_NAMES)}")
    return tuple(name for name in SERVICE_NAMES if name in wanted)


def _conflict_message(spec: ServiceSpec) -> str:
    return (
        f"{spec.name}: {spec.host}:{spec.port} is already in use by a process `pp stack` did not start; "
        f"stop that process, pick another port with {spec.port_variable}=<port>, or use it as an "
        f"external service with {spec.embedded_variable}=false"
    )


def _moved_message(spec: ServiceSpec, record: PidRecord) -> str:
    return (
        f"{spec.name}: already running (pid {record.pid}) on port {record.port}, but the settings say "
        f"{spec.port}; stop it first with `pp stack down {spec.name}`"
    )


def _up_status(plan: _Plan) -> ServiceStatus:
    spec = plan.spec
    if plan.action == "external":
        return ServiceStatus(spec.name, "external", None, spec.address, "external; healthy")
    pid = plan.record.pid if plan.record else None
    detail = "started" if plan.action == "start" else "already running"
    return ServiceStatus(spec.name, "running", pid, spec.address, detail)


@dataclass(frozen=True)
class _Check:
    """One health check in ``up``: ``reason`` is None when healthy; ``final`` if waiting cannot help."""

    reason: str | None
    final: bool = False


def _check_health(plan: _Plan, deadline: float) -> _Check:
    """Whether the process we started for ``plan`` has exited; if not, one probe bounded by ``deadline``."""
    if plan.record is not None:
        ended = exit_detail(plan.record)
        if ended is not None:
            return _Check(f"{ended} before becoming healthy", final=True)
    return _Check(_probe(plan.spec, deadline))


def _poll_wait(timeout_s: float) -> Callable[[tenacity.RetryCallState], float]:
    """Pause between health checks: exponential backoff, cut to what is left of ``timeout_s``."""
    backoff = tenacity.wait_exponential(multiplier=POLL_INTERVAL_S, max=POLL_MAX_INTERVAL_S)

    def wait_s(retry_state: tenacity.RetryCallState) -> float:
        left_s = timeout_s - (retry_state.seconds_since_start or 0.0)
        return max(0.0, min(backoff(retry_state), left_s))

    return wait_s


def _probe(spec: ServiceSpec, deadline: float) -> str | None:
    """One health check bounded by ``deadline``; a cheap TCP connect first for embedded services."""
    timeout_s = max(0.1, min(PROBE_TIMEOUT_S, deadline - time.monotonic()))
    if spec.embedded and not port_open(spec.host, spec.port, timeout_s):
        return f"nothing listens on {spec.host}:{spec.port}"
    return spec.probe(timeout_s)


def _safe_probe(spec: ServiceSpec, deadline: float) -> str | None:
    try:
        return _probe(spec, deadline)
    except StackError as exc:
        return str(exc)


def _log_tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])
