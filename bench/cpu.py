"""CPU time of a process, for the benchmarks that charge work to the Prefect server or the activators."""

from __future__ import annotations

import psutil


def cpu_s(process: psutil.Process) -> float:
    """User + system CPU seconds ``process`` has used so far; 0 if it has exited."""
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)
