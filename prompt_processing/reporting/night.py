"""One instrument's night: every visit-detector's latest outcome, and what an operator reads of it.

Pure: fed with ``Outcome`` records (``add``), it keeps each visit-detector's latest one and
derives the counts by outcome, the failures grouped by error and step, the latency percentiles
and the share of alerts within Rubin's 60 s, and the rows of the night's table artifact. The
reporter service feeds it as outcomes arrive; ``pp report`` reads a whole night at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from prompt_processing.reporting.outcomes import Outcome, VisitDetector

REQUIREMENT_S = 60.0
"""Rubin's requirement: 98% of alerts out within 60 s of the end of readout."""
STATUSES = ("succeeded", "failed", "ignored")


@dataclass
class Night:
    """The latest outcome of each visit-detector of one instrument's night (``day_obs``)."""

    instrument: str
    day_obs: str
    latest: dict[VisitDetector, Outcome] = field(default_factory=dict)
    records: int = 0  # outcome records read, reruns and redeliveries included

    def add(self, outcome: Outcome) -> None:
        self.records += 1
        known = self.latest.get(outcome.key)
        if known is None or outcome.recorded_at >= known.recorded_at:
            self.latest[outcome.key] = outcome

    def counts(self) -> dict[str, int]:
        """Visit-detectors by their latest outcome (every status present, zeros included)."""
        found = Counter(o.status for o in self.latest.values())
        return {status: found.get(status, 0) for status in STATUSES} | {
            s: n for s, n in found.items() if s not in STATUSES
        }

    def failures_by_error(self) -> list[tuple[str, int, str]]:
        """(``<error> in <step>``, how many, one reason as an example), most frequent first, then by name."""
        groups: dict[str, list[Outcome]] = {}
        for outcome in self.latest.values():
            if outcome.status == "failed":
                label = f"{outcome.error or 'failure'} in {outcome.stopped_at or 'an unknown step'}"
                groups.setdefault(label, []).append(outcome)
        return sorted(((label, len(g), g[0].reason) for label, g in groups.items()), key=lambda row: (-row[1], row[0]))

    def latencies_s(self) -> list[float]:
        """Image landed -> alerts sent of every succeeded visit-detector."""
        return [o.latency_s for o in self.latest.values() if o.latency_s is not None]

    def summary(self) -> dict[str, Any]:
        """The night's figures, flat (the report's table, the summary artifact, the tests)."""
        latencies = self.latencies_s()
        figures: dict[str, Any] = {
            "instrument": self.instrument, "day_obs": self.day_obs, "visit_detectors": len(self.latest),
            "records": self.records, **self.counts(), "alerts_recorded": sum(o.n_alerts for o in self.latest.values()),
        }  # fmt: skip
        if latencies:
            p50, p95 = np.percentile(latencies, [50, 95])
            figures |= {"latency_p50_s": float(p50), "latency_p95_s": float(p95), "latency_max_s": max(latencies),
                        "within_60s": sum(v <= REQUIREMENT_S for v in latencies) / len(latencies)}  # fmt: skip
        return figures

    def table_rows(self, limit: int, rerun_url: Callable[[Outcome], str | None]) -> list[dict[str, Any]]:
        """Rows of the night's table artifact: every failure first, then the latest outcomes, at most ``limit``."""
        ordered = sorted(self.latest.values(), key=lambda o: (o.status != "failed", -o.recorded_at))
        rows = []
        for outcome in ordered[:limit]:
            link = rerun_url(outcome) if outcome.status == "failed" else None
            rows.append({
                "visit": outcome.group, "detector": outcome.detector, "status": outcome.status,
                "landed -> alerts (s)": None if outcome.latency_s is None else round(outcome.latency_s, 2),
                "deliveries": outcome.deliveries,
                "recorded": datetime.fromtimestamp(outcome.recorded_at, tz=UTC).strftime("%H:%M:%S"),
                "pipeline": outcome.pipeline, "reason": outcome.reason[:200], "rerun form": link or "",
            })  # fmt: skip
        return rows

    def markdown(self) -> str:
        """The night's summary as markdown: counts, latency, failures by error."""
        s = self.summary()
        lines = [f"### {self.instrument} night {self.day_obs}", "",
                 f"{s['visit_detectors']} visit-detectors ({s['records']} outcome records, reruns included): "
                 f"{s['succeeded']} succeeded, {s['failed']} failed, {s['ignored']} ignored.", ""]  # fmt: skip
        if "latency_p50_s" in s:
            lines += [f"Image landed -> alerts sent: p50 {s['latency_p50_s']:.2f} s, p95 {s['latency_p95_s']:.2f} s, "
                      f"max {s['latency_max_s']:.2f} s; {s['within_60s']:.1%} within {REQUIREMENT_S:.0f} s.",
                      ""]  # fmt: skip
        failures = self.failures_by_error()
        if failures:
            lines += ["| failure | visit-detectors | for example |", "|---|---:|---|"]
            lines += [f"| {label} | {n} | {example[:120]} |" for label, n, example in failures]
        return "\n".join(lines) + "\n"
