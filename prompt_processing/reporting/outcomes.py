"""Result records as typed outcomes, and each visit-detector's latest one.

Pure functions over what ``adapters.results`` reads (and ``failed_since``, which reads). A
visit-detector may have several records (a failure, then a rerun): the latest one is its outcome.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import redis

from prompt_processing.adapters.results import read_entries

VisitDetector = tuple[str, str, int]
"""(instrument, group, detector)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The fields of one result record an operator or a report needs."""

    instrument: str
    group: str
    detector: int
    status: str  # succeeded | ignored | failed
    recorded_at: float  # unix s, from the stream entry id
    day_obs: str = ""
    reason: str = ""
    error: str = ""
    stopped_at: str = ""
    deliveries: int = 1
    n_alerts: int = 0
    latency_s: float | None = None  # image landed -> alerts sent, for a success
    pipeline: str = ""
    processed_by: str = ""
    run_id: str = ""  # the task run (activator) or flow run (rerun) that holds it
    rerun_of: str = ""
    max_rss_bytes: int = 0  # peak memory of the process that recorded it

    @property
    def key(self) -> VisitDetector:
        return (self.instrument, self.group, self.detector)


def parse(instrument: str, entry_id: str, fields: dict[str, str]) -> Outcome:
    """One results-stream entry as an ``Outcome`` (records of older versions lack some fields)."""
    status = fields.get("status", "failed")
    latency_s = None
    if status == "succeeded" and fields.get("landed_at") and fields.get("alerts_sent_at"):
        landed = datetime.fromisoformat(fields["landed_at"].replace("Z", "+00:00")).timestamp()
        latency_s = float(fields["alerts_sent_at"]) - landed
    return Outcome(
        instrument=instrument,
        group=fields.get("group", ""),
        detector=int(fields.get("detector", -1)),
        status=status,
        recorded_at=int(entry_id.split("-", maxsplit=1)[0]) / 1000,
        day_obs=fields.get("day_obs", ""),
        reason=fields.get("reason", ""),
        error=fields.get("error", ""),
        stopped_at=fields.get("stopped_at", ""),
        deliveries=int(fields.get("deliveries", 1)),
        n_alerts=int(fields.get("n_alerts", 0)),
        latency_s=latency_s,
        pipeline=fields.get("pipeline", ""),
        processed_by=fields.get("processed_by", ""),
        run_id=fields.get("task_run_id") or fields.get("flow_run_id", ""),
        rerun_of=fields.get("rerun_of", ""),
        max_rss_bytes=int(fields.get("max_rss_bytes", 0)),
    )


def latest(outcomes: Iterable[Outcome]) -> dict[VisitDetector, Outcome]:
    """Each visit-detector's latest outcome (the last recorded wins)."""
    found: dict[VisitDetector, Outcome] = {}
    for outcome in sorted(outcomes, key=lambda o: o.recorded_at):
        found[outcome.key] = outcome
    return found


def still_failed(outcomes: Iterable[Outcome], *, group: str | None = None) -> list[Outcome]:
    """Visit-detectors whose latest outcome is a failure (optionally of one visit), oldest first."""
    failed = [o for o in latest(outcomes).values() if o.status == "failed" and (group is None or o.group == group)]
    return sorted(failed, key=lambda o: o.recorded_at)


def failed_since(
    client: redis.Redis, instruments: Sequence[str], since_utc: float, *, group: str | None = None
) -> list[Outcome]:
    """Visit-detectors of ``instruments`` with outcomes recorded since ``since_utc`` whose latest is a failure."""
    found: list[Outcome] = []
    for instrument in instruments:
        outcomes = [parse(instrument, i, f) for i, f in read_entries(client, instrument, since_utc=since_utc)]
        found += still_failed(outcomes, group=group)
    return found
