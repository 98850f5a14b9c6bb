"""``pp butler-writer`` on the real stack: Kafka topic in, SQLite central repository out.

pp-output events are made the way an activator makes them (``tests.butler_helpers``), produced on the
test's own topic, and ingested by the service running its own loop in a thread.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from lsst.daf.butler import Butler
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

from prompt_processing.adapters import kafka
from prompt_processing.adapters.health import read_health
from prompt_processing.butler import repo
from prompt_processing.butler.output_event import OutputEvent
from prompt_processing.model import naming
from prompt_processing.model.instruments import LSSTCAM
from prompt_processing.services.butler_writer import EVENT_NAME, ButlerWriterService
from prompt_processing.settings import Settings
from tests.butler_helpers import Visit, count_outputs, export_visit_detector, local_repo, seed, with_central
from tests.helpers import consume_all, serving, wait_for

pytestmark = pytest.mark.stack
DETECTORS = (93, 94, 95)


class CrashesBeforeCommit(ButlerWriterService):
    """A writer that dies between its registry transaction and the offset commit, every time."""

    def commit(self) -> None:
        pass


@pytest.fixture
def writer_settings(settings: Settings, tmp_path: Path, prefect_server: str) -> Settings:
    central = with_central(settings, str(tmp_path / "central"))
    return central.model_copy(update={"butler": central.butler.model_copy(update={
        "writer_group_id": f"writer-{uuid.uuid4().hex[:6]}", "writer_name": f"writer-{uuid.uuid4().hex[:6]}",
        "writer_max_wait_s": 0.2})})  # fmt: skip


@pytest.fixture
def exported(writer_settings: Settings, tmp_path: Path) -> Iterator[tuple[Butler, Visit, list[OutputEvent]]]:
    central = repo.init_central(writer_settings.butler, writer_settings.s3)
    visit = Visit.make(LSSTCAM)
    seed(central, visit, DETECTORS)
    local = local_repo(tmp_path, writer_settings.butler, repo.open_central(writer_settings.butler, writer_settings.s3),
                       "LSSTCam")  # fmt: skip
    yield central, visit, [export_visit_detector(local, visit, d) for d in DETECTORS]
    local.close()


def _produce(settings: Settings, *values: bytes) -> None:
    producer = kafka.make_producer(settings.kafka)
    for value in values:
        producer.produce(settings.kafka.butler_writer_topic, value)
    assert producer.flush(10) == 0


def _health(service: ButlerWriterService) -> dict[str, int]:
    return read_health(service.redis, "butler-writer", service.config.name) or {}


def test_batches_are_ingested_and_a_bad_event_is_dead_lettered_while_the_next_is_ingested(
    writer_settings: Settings, exported: tuple[Butler, Visit, list[OutputEvent]]
) -> None:
    central, visit, events = exported
    first, second, third = (e.to_json() for e in events)
    _produce(writer_settings, first, b'{"type": "pp-output", "version": 1, "datasets": [', second, third)
    with serving(ButlerWriterService(writer_settings)) as service:
        wait_for(lambda: _health(service).get("events", 0) == 3, what="three events ingested")
        health = _health(service)
    assert health["datasets"] == 12 and health["dead_lettered_malformed"] == 1
    assert count_outputs(central, "LSSTCam", visit.next_visit.day_obs()) == 12
    (dead,) = consume_all(writer_settings, writer_settings.kafka.butler_dead_letter_topic, 1)
    headers = dict(dead.headers() or [])
    assert headers[naming.DLQ_HEADER_KIND] == b"malformed" and b"not JSON" in headers[naming.DLQ_HEADER_REASON]
    with get_client(sync_client=True) as client:
        wanted = EventFilter(event=EventNameFilter(name=[EVENT_NAME]),
                             resource=EventResourceFilter(id=[f"pp.butler-writer.{service.config.name}"]))  # fmt: skip
        wait_for(lambda: bool(client.read_events(wanted, limit=10).events), what="the batch-ingested event")
        payloads = [e.payload for e in client.read_events(wanted, limit=10).events]
    assert sum(p["datasets"] for p in payloads) == 12


def test_a_writer_killed_between_ingest_and_commit_ingests_nothing_twice(
    writer_settings: Settings, exported: tuple[Butler, Visit, list[OutputEvent]]
) -> None:
    central, visit, events = exported
    _produce(writer_settings, *(e.to_json() for e in events))
    with serving(CrashesBeforeCommit(writer_settings)) as doomed:
        wait_for(lambda: _health(doomed).get("events", 0) == 3, what="the first writer's ingest")
    night = visit.next_visit.day_obs()
    assert count_outputs(central, "LSSTCam", night) == 12
    before = {ref.id for name in repo.OUTPUT_TYPES
              for ref in central.query_datasets(name, collections=repo.output_glob("LSSTCam", night), find_first=False)}
    with serving(ButlerWriterService(writer_settings)) as second:  # same group: gets the uncommitted batch again
        wait_for(lambda: _health(second).get("events", 0) == 3, what="the redelivered batch")
        health = _health(second)
    assert not any(key.startswith("dead_lettered") for key in health)
    after = {ref.id for name in repo.OUTPUT_TYPES
             for ref in central.query_datasets(name, collections=repo.output_glob("LSSTCam", night), find_first=False)}
    assert after == before and len(after) == 12


def test_an_event_whose_files_never_reached_the_datastore_is_dead_lettered(
    writer_settings: Settings, exported: tuple[Butler, Visit, list[OutputEvent]]
) -> None:
    central, visit, events = exported
    gone = events[0]
    for path, _ in gone.datasets:
        Path(repo.central_uri(writer_settings.butler), path).unlink()
    _produce(writer_settings, gone.to_json(), events[1].to_json())
    with serving(ButlerWriterService(writer_settings)) as service:
        wait_for(lambda: _health(service).get("dead_lettered_missing-file", 0) == 1, what="the dead letter")
        wait_for(lambda: _health(service).get("events", 0) == 1, what="the good event")
    assert count_outputs(central, "LSSTCam", visit.next_visit.day_obs()) == 4
    (dead,) = consume_all(writer_settings, writer_settings.kafka.butler_dead_letter_topic, 1)
    assert b"FileNotFoundError" in dict(dead.headers() or [])[naming.DLQ_HEADER_REASON]
