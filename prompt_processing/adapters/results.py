"""The results streams: one record per final visit-detector outcome, per instrument.

``pp:results:<instrument>`` holds what the activators and reruns record (``tasks.outcome.VisitOutcome``
as string fields, JSON where not text), oldest first; records older than the retention are
trimmed as new ones arrive. Night reports, ``pp rerun --failed`` and the reporter's metrics read it.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import redis
from redis.client import Pipeline

from prompt_processing.model import naming


def append_result(
    client: redis.Redis | Pipeline, instrument: str, outcome: dict[str, Any], *, retention_s: float
) -> None:
    """Add one outcome record to the instrument's results stream (values JSON unless already text);
    records older than ``retention_s`` are trimmed (approximately) as new ones arrive."""
    record: dict[Any, Any] = result_fields(outcome)
    client.xadd(naming.results_stream(instrument), record, minid=results_minid(retention_s), approximate=True)


def result_fields(outcome: dict[str, Any]) -> dict[str, str]:
    """An outcome as a results-stream record: values JSON unless already text."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in outcome.items()}


def results_minid(retention_s: float) -> str:
    """The oldest entry id a results stream keeps with ``retention_s``."""
    return f"{int((time.time() - retention_s) * 1000)}-0"


def read_results(client: redis.Redis, instrument: str) -> list[dict[str, str]]:
    """Every outcome record in the instrument's results stream, oldest first."""
    return [fields for _id, fields in read_entries(client, instrument)]


def read_entries(
    client: redis.Redis, instrument: str, *, after: str | None = None, since_utc: float | None = None,
    count: int | None = None,
) -> list[tuple[str, dict[str, str]]]:  # fmt: skip
    """(entry id, record) pairs, oldest first: after the entry id ``after``, or recorded since
    ``since_utc`` (unix s), or all; at most ``count``. An entry id is ``<unix ms>-<n>``."""
    start = f"({after}" if after else f"{int(since_utc * 1000)}-0" if since_utc is not None else "-"
    entries: Any = client.xrange(naming.results_stream(instrument), min=start, count=count)
    return [(_text(entry_id), {_text(k): _text(v) for k, v in fields.items()}) for entry_id, fields in entries]


def landed_to_alerts_s(result: dict[str, str]) -> float:
    """A succeeded outcome record's latency: raw image landed (S3 event time) -> alerts sent, seconds."""
    landed = datetime.fromisoformat(result["landed_at"].replace("Z", "+00:00")).timestamp()
    return float(result["alerts_sent_at"]) - landed


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
