"""A night read back from where the outcomes are, and written out as Prefect artifacts.

``read_night`` folds an instrument's results stream into a ``Night`` (every visit-detector's
latest outcome of that dayObs). ``count_alerts`` counts the alerts actually on the alerts topic
for the night's visits, so a report compares what the activators recorded with what subscribers
received. ``NightArtifacts`` writes the night's table (``<instrument>-night-<dayObs>``) and its
summary (``...-summary``); writing again makes a new version under the same key.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import redis
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import ArtifactCreate

from prompt_processing.adapters import kafka, prefect_api
from prompt_processing.adapters.results import read_entries
from prompt_processing.model import naming
from prompt_processing.reporting.night import Night
from prompt_processing.reporting.outcomes import Outcome, parse
from prompt_processing.settings import KafkaSettings, Settings


def night_start_utc(day_obs: str) -> float:
    """When the night ``day_obs`` begins: 12:00 UTC of that date (dayObs is UTC - 12 h)."""
    return datetime.strptime(day_obs, "%Y%m%d").replace(tzinfo=UTC, hour=12).timestamp()


def read_night(client: redis.Redis, instrument: str, day_obs: str) -> Night:
    """Every outcome of ``instrument``'s night ``day_obs`` in its results stream."""
    night = Night(instrument, day_obs)
    since = night_start_utc(day_obs) - timedelta(hours=1).total_seconds()  # a visit announced early still counts
    for entry_id, fields in read_entries(client, instrument, since_utc=since):
        outcome = parse(instrument, entry_id, fields)
        if outcome.day_obs == day_obs:
            night.add(outcome)
    return night


def count_alerts(kafka_settings: KafkaSettings, night: Night) -> Counter[tuple[str, int]]:
    """Alerts on the alerts topic for the night's visits, per (group, detector), read to the topic's end."""
    groups = {group for (_instrument, group, _detector) in night.latest}
    counts: Counter[tuple[str, int]] = Counter()
    since = night_start_utc(night.day_obs) - timedelta(hours=1).total_seconds()
    for record in kafka.read_records(kafka_settings, kafka_settings.alerts_topic, since_utc=since):
        # The headers say where an alert came from (tasks/publish.py): no Avro decoding needed to count.
        instrument, group = record.headers.get("instrument", b"").decode(), record.headers.get("group", b"").decode()
        if instrument == night.instrument and group in groups:
            counts[(group, int(record.headers.get("detector", b"-1")))] += 1
    return counts


class NightArtifacts:
    """Writes nights as Prefect artifacts through ``client``; the rerun links need the rerun deployment."""

    def __init__(self, settings: Settings, client: SyncPrefectClient, *, table_rows: int) -> None:
        self._ui = settings.prefect.ui
        self._client = client
        self._table_rows = table_rows
        self._rerun_deployment: str | None = None

    def write(self, night: Night) -> None:
        """A new version of the night's table and of its summary."""
        key = naming.night_artifact_key(night.instrument, night.day_obs)
        rows = night.table_rows(self._table_rows, self._rerun_url)
        shown = f"{len(rows)} of {len(night.latest)} visit-detectors, failures first"
        self._client.create_artifact(ArtifactCreate(
            key=key, type="table", data=json.dumps(rows),
            description=f"{night.instrument} night {night.day_obs}: {shown}",
        ))  # fmt: skip
        self._client.create_artifact(ArtifactCreate(
            key=f"{key}-summary", type="markdown", data=night.markdown(),
            description=f"{night.instrument} night {night.day_obs}: summary",
        ))  # fmt: skip

    def _rerun_url(self, outcome: Outcome) -> str | None:
        if self._rerun_deployment is None:
            try:
                self._rerun_deployment = str(self._client.read_deployment_by_name(naming.RERUN_DEPLOYMENT).id)
            except Exception:  # not deployed yet: no links this time
                return None
        parameters = {"instrument": outcome.instrument, "group": outcome.group, "detector": outcome.detector,
                      "rerun_of": outcome.run_id}  # fmt: skip
        return prefect_api.run_form_url(self._ui, self._rerun_deployment, parameters)
