"""CPU time of processes, for the benchmarks that charge work to the Prefect server or the activators."""

from __future__ import annotations

import time

import psutil


def cpu_s(process: psutil.Process) -> float:
    """User + system CPU seconds ``process`` has used so far; 0 if it has exited."""
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def tree_cpu_s(process: psutil.Process) -> float:
    """CPU seconds ``process`` and its live descendants have used so far (e.g. the Prefect server's tree)."""
    return sum(cpu_s(p) for p in [process, *process.children(recursive=True)])


def wait_quiet(process: psutil.Process, idle_cores: float = 0.1, timeout_s: float = 180.0) -> float:
    """Wait until ``process``'s tree uses under ``idle_cores`` over a second (a server's background services
    done with what was sent to it), or ``timeout_s``; return when that second began (unix s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        began, before = time.time(), tree_cpu_s(process)
        time.sleep(1.0)
        if tree_cpu_s(process) - before < idle_cores or time.monotonic() > deadline:
            return began
