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

BIN_S = 60.0  # the time panels count per minute,
SHORT_BIN_S = 10.0  # or per 10 s for a night shorter than
SHORT_NIGHT_S = 600.0  # ten minutes (a demo), which would otherwise be one bar
if TYPE_CHECKING:
    from matplotlib.axes import Axes

COLORS = {"succeeded": "tab:green", "failed": "tab:red", "ignored": "tab:gray"}


def plot_night(night: Night, path: Path) -> Path:
    """Write the night's figure (PNG) to ``path``: latency histogram + CDF, activators and outcomes per minute
    (per 10 s when the outcomes span less than ten minutes)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("the night's plot needs matplotlib: pip install 'prompt-processing[report]'") from exc
    figure, (latency, activators, outcomes) = plt.subplots(3, 1, figsize=(9, 10), constrained_layout=True)
    figure.suptitle(f"{night.instrument} night {night.day_obs}: {len(night.latest)} visit-detectors")
    _latency(latency, night.latencies_s())
    times = [o.recorded_at for o in night.latest.values()]
    start = min(times, default=0.0)
    bin_s = BIN_S if max(times, default=0.0) - start >= SHORT_NIGHT_S else SHORT_BIN_S
    bins = {key: int((o.recorded_at - start) // bin_s) for key, o in night.latest.items()}
    span = range(max(bins.values(), default=0) + 1)
    x_min = [i * bin_s / 60 for i in span]
    working = [len({night.latest[k].processed_by for k, b in bins.items() if b == i}) for i in span]
    activators.step(x_min, working, where="mid", color="tab:blue", marker="o")  # a marker: one bin shows too
    xlabel = f"minutes into the night's outcomes ({bin_s:.0f} s bins)"
    activators.set(ylabel="activators with an outcome", xlabel=xlabel, ylim=(0, None))
    bottom = np.zeros(len(span))
    for status in STATUSES:
        per_bin = Counter(b for k, b in bins.items() if night.latest[k].status == status)
        heights = np.array([per_bin.get(i, 0) for i in span], dtype=float)
        outcomes.bar(x_min, heights, bottom=bottom, color=COLORS[status], label=status, width=0.9 * bin_s / 60)
        bottom += heights
    outcomes.set(ylabel="visit-detectors", xlabel=xlabel)
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
