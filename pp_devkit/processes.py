"""Process bookkeeping of the embedded stack: pid files, spawning a service, recognising it again, stopping it.

Guarantees:

* A :class:`PidRecord` names one process, not just a pid: :func:`is_ours` accepts it only if the
  pid is alive during the same boot (``psutil.boot_time()``), was created at the same instant
  (``psutil.Process.create_time()``) and runs a matching command line (:func:`_cmdline_matches`),
  so a recycled pid, a pid from an earlier boot or a pid file written for another program is never
  taken for ours. A wall-clock step moves psutil's boot and creation times alike; records written
  before one no longer match, so their services count as stopped and are never signalled.
* :func:`stop_process` signals only the verified process, or its whole process group when it leads
  one (a service runs in its own session): SIGTERM, SIGKILL after the timeout, and
  :class:`~pp_devkit.stack_services.StackError` if the process or a member of its group still runs
  ``KILL_WAIT_S`` after SIGKILL.
* An exited child of this process is collected (reaped) by :func:`is_ours`, :func:`exit_detail` and
  :func:`stop_process`, so a ``pp`` command that starts and stops services leaves no zombie. A
  zombie that is not our child counts as gone: it runs no more, and only its parent can collect it.

:mod:`pp_devkit.stack` uses these for ``up``/``down``/``status``; which services exist and how they
are launched and probed is :mod:`pp_devkit.stack_services`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

from pp_devkit.stack_services import Launch, StackError

KILL_WAIT_S = 5.0
"""How long to wait for a process (and its group) to vanish after SIGKILL."""
REAP_WAIT_S = 1.0
"""How long to wait for an exiting child of ours to become collectable."""
EXIT_CHECK_S = 0.1
"""Longest single :func:`psutil.wait_procs` call while stopping: it cannot tell a zombie of another
parent (e.g. an orphaned group member under an init that never reaps) from a running process, so
the processes still running are looked up again at least this often."""

_EXITED_STATUSES = frozenset({psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD})


# --------------------------------------------------------------------------- pid files


@dataclass(frozen=True)
class PidRecord:
    """Contents of ``<state>/<name>.pid``.

    ``create_time`` (:meth:`psutil.Process.create_time`) and ``boot_time`` (:func:`psutil.boot_time`),
    both in seconds since the epoch, identify the process beyond its pid: a pid recycled by another
    process, or one from an earlier boot, never matches.
    """

    pid: int
    argv: tuple[str, ...]
    port: int
    started_at: str
    create_time: float
    boot_time: float


def write_record(path: Path, record: PidRecord) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a pid file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(asdict(record), indent=2) + "\n")
    os.replace(temporary, path)


def read_record(path: Path) -> PidRecord | None:
    """The record in ``path``; None if missing, unreadable or not naming a plausible pid.

    A pid file in the old format (``start_ticks``/``boot_id`` instead of ``create_time``/``boot_time``)
    is unreadable too: its process cannot be verified, so it is treated as stale, never signalled,
    and ``down``/``up`` remove the file.
    """
    try:
        data = json.loads(path.read_text())
        record = PidRecord(
            pid=int(data["pid"]),
            argv=tuple(str(arg) for arg in data["argv"]),
            port=int(data["port"]),
            started_at=str(data["started_at"]),
            create_time=float(data["create_time"]),
            boot_time=float(data["boot_time"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # pid 0 / -1 would address our own process group / every process in kill().
    return record if record.pid > 1 and record.argv else None


# --------------------------------------------------------------------------- spawning


class _DetachedPopen(subprocess.Popen[bytes]):
    """A Popen that does not own its child once dropped: the service is meant to outlive it (and
    the ``pp`` command); the pid file tracks it and this module reaps it when it is our child.
    Plain Popen would warn "subprocess is still running" on garbage collection."""

    def __del__(self) -> None:
        return


def spawn(name: str, port: int, launch: Launch, log_path: Path) -> PidRecord:
    """Start ``launch`` in a new session with stdout+stderr to ``log_path`` (truncated first).

    Raises :class:`StackError` if the program cannot be run at all.
    """
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
    return PidRecord(
        pid=process.pid, argv=launch.argv, port=port, started_at=started_at,
        create_time=_create_time(process.pid), boot_time=float(psutil.boot_time()),
    )  # fmt: skip


def _create_time(pid: int) -> float:
    """psutil's creation time of ``pid``; -1.0 (which no process has) if it is already gone."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return -1.0


# --------------------------------------------------------------------------- recognising


def _process(record: PidRecord) -> psutil.Process | None:
    """The process ``record`` describes (running or exited but not yet collected), else None.

    Same boot, same pid and same creation time; the command line is not checked here.
    """
    try:
        process = psutil.Process(record.pid)
        same = float(process.create_time()) == record.create_time and float(psutil.boot_time()) == record.boot_time
    except psutil.Error:
        return None
    return process if same else None


def _has_exited(process: psutil.Process) -> bool:
    """True if ``process`` is a zombie, gone, or its pid now belongs to another process."""
    try:
        return not process.is_running() or process.status() in _EXITED_STATUSES
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False


def _cmdline(process: psutil.Process) -> list[str] | None:
    try:
        return [str(arg) for arg in process.cmdline()]
    except psutil.Error:
        return None


def _cmdline_matches(cmdline: list[str], argv: Sequence[str]) -> bool:
    """Whether ``cmdline`` (:meth:`psutil.Process.cmdline`) is that of the process started with ``argv``.

    Accepts the exact argv, a script run through its ``#!`` interpreter (``[python, script, *args]``)
    and a server that rewrote its process title (``redis-server 127.0.0.1:16379``, which psutil may
    also report split at the spaces).
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

    Same boot, same pid and same creation time identify the process; the command line must match
    too, so a record written for some other program is never taken as ours. An exited child of
    ours that the record names is collected here.
    """
    process = _process(record)
    if process is None:
        return False
    if _has_exited(process):
        _reap_exiting(process)
        return False
    cmdline = _cmdline(process)
    return cmdline is not None and _cmdline_matches(cmdline, record.argv)


def exit_detail(record: PidRecord) -> str | None:
    """None while the recorded process runs (or is still exiting); else how it ended.

    An exited child of ours is collected here, and its exit status or signal reported; of any
    other process only "exited" is known.
    """
    process = _process(record)
    if process is None:
        return "exited"
    if not _has_exited(process):
        return None
    our_child, code = _reap(record.pid)
    if not our_child:
        return "exited"  # its parent (init, once `pp` has exited) collects it
    if code is None:
        return None  # still exiting: collectable in a moment
    return f"exited with status {code}" if code >= 0 else f"killed by signal {-code}"


# --------------------------------------------------------------------------- reaping


def _reap(pid: int) -> tuple[bool, int | None]:
    """(is ``pid`` a child of this process, its exit code if it could be collected now).

    A zombie whose other threads are still exiting shows as a zombie but is not collectable yet.
    The caller has verified that ``pid`` is the process it means (an uncollected pid is not reused).
    """
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False, None
    return True, (os.waitstatus_to_exitcode(status) if done else None)


def _reap_exiting(process: psutil.Process) -> None:
    """Collect ``process`` within ``REAP_WAIT_S`` if it is an exiting child of ours; no-op for others."""
    with contextlib.suppress(psutil.Error):
        if process.is_running() and process.ppid() == os.getpid():
            process.wait(timeout=REAP_WAIT_S)


# --------------------------------------------------------------------------- stopping


def stop_process(record: PidRecord, timeout_s: float) -> str:
    """SIGTERM the recorded process (its whole group if it leads one), SIGKILL after ``timeout_s``.

    The caller has checked that ``record`` names our live process. Returns what happened; raises
    :class:`StackError` if the process or a member of its group survives SIGKILL by ``KILL_WAIT_S``.
    """
    leader = _process(record)
    if leader is None:
        return "stopped"  # exited (and was collected) since the caller checked
    as_group = _leads_group(record.pid)
    _signal(leader, signal.SIGTERM, as_group=as_group)
    if _wait_gone(leader, timeout_s, as_group=as_group):
        return "stopped"
    _signal(leader, signal.SIGKILL, as_group=as_group)
    if _wait_gone(leader, KILL_WAIT_S, as_group=as_group):
        return f"killed (still running {timeout_s:g} s after SIGTERM)"
    raise StackError(f"pid {record.pid} ({shlex.join(record.argv)}) survived SIGKILL")


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _signal(leader: psutil.Process, signum: signal.Signals, *, as_group: bool) -> None:
    """Send ``signum`` to ``leader``'s group (``leader`` leads it) or to ``leader`` alone.

    The group id cannot be reused while any member is left, and psutil refuses to signal a
    recycled pid, so only the verified process or its group is ever hit.
    """
    with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
        if as_group:
            os.killpg(leader.pid, signum)
        else:
            leader.send_signal(signum)


def _group_members(pgid: int) -> list[psutil.Process]:
    """The running (not exited) processes of process group ``pgid``."""
    members = []
    for pid in psutil.pids():
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getpgid(pid) == pgid and not _has_exited(member := psutil.Process(pid)):
                members.append(member)
    return members


def _still_running(leader: psutil.Process, *, as_group: bool) -> list[psutil.Process]:
    """``leader`` unless it has exited (then it is collected if it is our child), plus, ``as_group``,
    the running members of its group."""
    running = [leader]
    if _has_exited(leader):
        _reap_exiting(leader)
        running = []
    if as_group:
        running += [member for member in _group_members(leader.pid) if member.pid != leader.pid]
    return running


def _wait_gone(leader: psutil.Process, timeout_s: float, *, as_group: bool) -> bool:
    """Wait up to ``timeout_s`` for ``leader`` (and, ``as_group``, its whole group) to exit; True if so.

    :func:`psutil.wait_procs` returns as soon as the processes are gone and collects ``leader`` if
    it is our child; it is called for at most ``EXIT_CHECK_S`` at a time so that a zombie of another
    parent, which it would wait for in vain, is seen to have exited.
    """
    deadline = time.monotonic() + timeout_s
    while running := _still_running(leader, as_group=as_group):
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            return False
        psutil.wait_procs(running, timeout=min(left_s, EXIT_CHECK_S))
    return True
