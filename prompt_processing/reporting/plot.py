"""The night as a picture: latency against the 60 s requirement, activators and outcomes over time.

matplotlib comes with the ``report`` extra (``pip install 'prompt-processing[report]'``); without
it ``plot_night`` raises ImportError saying so, and ``pp report`` prints the figures only.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from prompt_processing.reporting.night import REQUIREMENT_S, STATUSES, Night

BIN_S = 60.0  # the time panels count per minute
if TYPE_CHECKING:
    from matplotlib.axes import Axes

COLORS = {"succeeded": "tab:green", "failed": "tab:red", "ignored": "tab:gray"}


def plot_night(night: Night, path: Path) -> Path:
    """Write the night's figure (PNG) to ``path``: latency histogram + CDF, activators and outcomes per minute."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("the night's plot needs matplotlib: pip install 'prompt-processing[report]'") from exc
    figure, (latency, activators, outcomes) = plt.subplots(3, 1, figsize=(9, 10), constrained_layout=True)
    figure.suptitle(f"{night.instrument} night {night.day_obs}: {len(night.latest)} visit-detectors")
    _latency(latency, night.latencies_s())
    start = min((o.recorded_at for o in night.latest.values()), default=0.0)
    minutes = {key: int((o.recorded_at - start) // BIN_S) for key, o in night.latest.items()}
    span = range(max(minutes.values(), default=0) + 1)
    working = [len({night.latest[k].processed_by for k, m in minutes.items() if m == minute}) for minute in span]
    activators.step(list(span), working, where="mid", color="tab:blue")
    activators.set(ylabel="activators with an outcome", xlabel="minutes into the night's outcomes", ylim=(0, None))
    bottom = np.zeros(len(span))
    for status in STATUSES:
        per_minute = Counter(m for k, m in minutes.items() if night.latest[k].status == status)
        heights = np.array([per_minute.get(minute, 0) for minute in span], dtype=float)
        outcomes.bar(list(span), heights, bottom=bottom, color=COLORS[status], label=status, width=0.9)
        bottom += heights
    outcomes.set(ylabel="visit-detectors", xlabel="minutes into the night's outcomes")
    outcomes.legend(loc="upper right")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _latency(ax: Axes, latencies: list[float]) -> None:
    if not latencies:
        ax.text(0.5, 0.5, "no succeeded visit-detector", ha="center", transform=ax.transAxes)
        return
    values = np.sort(np.asarray(latencies))
    ax.hist(values, bins=min(50, max(10, len(values) // 5)), color="tab:green", alpha=0.6)
    ax.set(xlabel="image landed -> alerts sent (s)", ylabel="visit-detectors")
    ax.axvline(REQUIREMENT_S, color="tab:red", linestyle="--", label=f"{REQUIREMENT_S:.0f} s requirement")
    cdf = ax.twinx()
    cdf.plot(values, np.arange(1, len(values) + 1) / len(values), color="black", label="cumulative share")
    cdf.set(ylabel="share of visit-detectors", ylim=(0, 1.02))
    ax.legend(loc="center right")
