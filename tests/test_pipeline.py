"""Activators end to end on the real stack: Redis, the Kafka-protocol broker, moto S3, Prefect server.

The fan-out and the router run in threads; activators run as real Prefect flow runs (in a
thread, or in a child process where a test kills one). Most tests put the work entry in the
stream the way the fan-out does (``StreamFanOut``) with a start time of now, so they do not
wait the summit's 20 s lead; one test goes through the whole chain from the simulator.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from lsst.resources import ResourcePath
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

from flows.activator import activator
from pp_devkit.night import NightPlan, run_night, seed_central_repo, upload_raw
from pp_devkit.sim import plan_visits
from prompt_processing.adapters import kafka, s3
from prompt_processing.adapters.resp import RespConnection
from prompt_processing.adapters.results import read_results
from prompt_processing.adapters.streams import StreamFanOut
from prompt_processing.butler import repo
from prompt_processing.butler.output_event import OutputEvent
from prompt_processing.model import naming
from prompt_processing.model.events import TAI_MINUS_UTC_S, NextVisit
from prompt_processing.model.instruments import LATISS
from prompt_processing.services.router import RouterService
from prompt_processing.settings import ActivatorSettings, InstrumentSettings, QueueSettings, Settings, VisitSettings
from tests.helpers import Running, RunningFanOut, consume_all, flow_run_env, visit_body, wait_for

SHAPE_PX = (128, 128)


@dataclass
class Pipeline:
    settings: Settings
    redis: redis.Redis
    plan: NightPlan

    def announce(self, group: str, *, duration_s: float = 1.0) -> dict[str, Any]:
        """Fan out a LATISS visit starting now, as the fan-out would."""
        seeded = plan_visits(LATISS, 1)[0]  # the pointing whose template the fixture seeded
        now_tai = time.time() + TAI_MINUS_UTC_S
        body = visit_body("LATISS", group) | {
            "startTime": now_tai,
            "duration": duration_s,
            "nimages": 1,
            "position": [seeded.ra_deg, seeded.dec_deg],
            "filters": seeded.filters,
        }
        connection = RespConnection(self.settings.redis)
        writer = StreamFanOut(connection, dedup_ttl_s=3600, stream_maxlen=10_000)
        try:
            assert writer.write(NextVisit.from_json(json.dumps(body)), "LATISS", (0,)) == 1
        finally:
            connection.close()
        return body

    def land(self, body: dict[str, Any], *, corrupt: bool = False, sidecar: bool = True) -> None:
        """The camera writes the raw and S3 notifies the router."""
        producer, client = kafka.make_producer(self.settings.kafka), s3.make_client(self.settings.s3)
        upload_raw(self.settings, self.plan, body, 0, 0, int(time.time() * 1000) % 1_000_000,
                   producer, client, corrupt=corrupt, sidecar=sidecar)  # fmt: skip
        client.close()
        assert producer.flush(10) == 0

    def results(self) -> list[dict[str, str]]:
        return read_results(self.redis, "LATISS")

    def alerts(self, n: int, timeout_s: float = 15) -> list[dict[str, Any]]:
        return [
            json.loads(m.value())
            for m in consume_all(self.settings, self.settings.kafka.alerts_topic, n, timeout_s=timeout_s)
        ]


@pytest.fixture
def pipeline(
    settings: Settings, redis_client: redis.Redis, prefect_server: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Pipeline]:
    settings = settings.model_copy(update={
        "instruments": {"LATISS": InstrumentSettings()},
        "queue": QueueSettings(claim_idle_s=1.0),
        "activator": ActivatorSettings(idle_timeout_s=4.0, block_s=0.2),
        "visit": VisitSettings(image_timeout_s=2.0, step_retries=0),
    })  # fmt: skip
    for name, value in flow_run_env(settings).items():
        monkeypatch.setenv(name, value)  # what the flow runs' Settings() will read
    plan = NightPlan(LATISS, (0,), 1, 1.0, 20.0, 1.0, SHAPE_PX, 4)
    client = s3.make_client(settings.s3)
    s3.ensure_buckets(client, [settings.s3.raw_bucket, settings.s3.truth_bucket])
    seed_central_repo(settings, plan, plan_visits(LATISS, 1))
    client.close()
    with Running(RouterService(settings)):
        yield Pipeline(settings, redis_client, plan)


def _activator_in_thread(**kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    counts: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: counts.update(activator("LATISS", **kwargs)), daemon=True)
    thread.start()
    return thread, counts


def test_one_visit_end_to_end_from_the_simulator(pipeline: Pipeline) -> None:
    plan = NightPlan(LATISS, (0,), 1, 1.0, 20.0, 1.0, SHAPE_PX, 4)
    with RunningFanOut(pipeline.settings):
        # Long enough for the fan-out to join its consumer group (1-3 s, more on a loaded machine) and write
        # the entry: an activator that finds no work for this long exits before the visit is announced.
        thread, counts = _activator_in_thread(idle_timeout_s=10.0)
        (sent,) = run_night(pipeline.settings, plan, show_progress=False)
        thread.join(60)
    assert counts["succeeded"] == 1
    (result,) = pipeline.results()
    assert (result["group"], result["status"]) == (sent["groupId"], "succeeded")
    alerts = pipeline.alerts(int(result["n_alerts"]))
    assert len(alerts) == int(result["n_alerts"]) >= 3  # 4 injected transients
    assert {a["groupId"] for a in alerts} == {sent["groupId"]}
    (message,) = consume_all(pipeline.settings, pipeline.settings.kafka.butler_writer_topic, 1)
    central = repo.open_central(pipeline.settings.butler, pipeline.settings.s3)
    event = OutputEvent.from_json(message.value(), central.dimensions)
    assert {ref.datasetType.name for _, ref in event.datasets} == set(repo.OUTPUT_TYPES)
    assert event.runs == {f"LATISS/prompt/output-{NextVisit.from_json(json.dumps(sent)).day_obs()}/{sent['groupId']}-"
                          f"{event.about['run'].rsplit('-', 1)[1]}"}  # fmt: skip
    root = ResourcePath(pipeline.settings.butler.central_repo, forceDirectory=True)
    assert all(root.join(path).exists() for path, _ in event.datasets)  # exported; the writer's to ingest
    assert {r.definition.name for r in event.records} >= {"day_obs", "group", "exposure", "visit",
                                                           "visit_detector_region"}  # fmt: skip


def test_image_already_there_before_the_activator_starts(pipeline: Pipeline) -> None:
    body = pipeline.announce("early-image")
    pipeline.land(body)
    wait_for(lambda: pipeline.redis.exists(naming.presence_key("LATISS", "early-image", 0, 0)) == 1, what="presence")
    thread, counts = _activator_in_thread()
    thread.join(60)
    assert counts["succeeded"] == 1
    assert pipeline.results()[0]["status"] == "succeeded"


def test_image_never_arrives_fails_clearly_and_is_final(pipeline: Pipeline) -> None:
    pipeline.announce("no-image", duration_s=0.5)  # wait ends 2 x 0.5 + 2 s after the shutter opened
    thread, counts = _activator_in_thread()
    thread.join(60)
    assert counts["failed"] == 1
    (result,) = pipeline.results()
    assert result["status"] == "failed"
    assert "no raw image for LATISS visit no-image detector 0 snap 0 within 3 s" in result["reason"]
    stream, group = naming.stream_name("LATISS"), naming.consumer_group("LATISS")
    assert pipeline.redis.xpending(stream, group)["pending"] == 0  # final: acknowledged, not retried
    name_filter = TaskRunFilter(name=TaskRunFilterName(any_=["LATISS-no-image-det000"]))
    with get_client(sync_client=True) as client:  # task-run states arrive through events: wait for them
        wait_for(lambda: any(_final(r) for r in client.read_task_runs(task_run_filter=name_filter)), what="run")
        (run,) = client.read_task_runs(task_run_filter=name_filter)
    assert run.state is not None and run.state.is_failed()
    assert "no raw image for LATISS visit no-image" in (run.state.message or "")


def test_a_raw_whose_sidecar_never_came_fails_saying_so(pipeline: Pipeline) -> None:
    body = pipeline.announce("no-sidecar", duration_s=0.5)
    pipeline.land(body, sidecar=False)
    unpaired = naming.unpaired_raws_key("LATISS", NextVisit.from_json(json.dumps(body)).day_obs(), 0)
    wait_for(lambda: pipeline.redis.scard(unpaired) == 1, what="the router to note the image")
    thread, counts = _activator_in_thread()
    thread.join(60)
    assert counts["failed"] == 1
    (result,) = pipeline.results()
    assert result["stopped_at"] == "wait_for_images"
    assert "landed, but its sidecar" in result["reason"] and "never did within 3 s" in result["reason"], result


def test_corrupt_fits_is_a_non_retriable_failure(pipeline: Pipeline) -> None:
    body = pipeline.announce("corrupt")
    pipeline.land(body, corrupt=True)
    thread, counts = _activator_in_thread()
    thread.join(60)
    assert counts["failed"] == 1
    (result,) = pipeline.results()
    assert result["status"] == "failed" and "(snap 0) is unusable: truncated FITS" in result["reason"]
    assert result["deliveries"] == "1"


@pytest.mark.timeout(180)
def test_killed_activator_is_replaced_and_no_alert_is_sent_twice(pipeline: Pipeline) -> None:
    body = pipeline.announce("killed", duration_s=30.0)  # the first activator will wait for this image
    code = "from flows.activator import activator; activator('LATISS', idle_timeout_s=60)"
    doomed = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy())
    try:
        stream, group = naming.stream_name("LATISS"), naming.consumer_group("LATISS")
        wait_for(lambda: pipeline.redis.xpending(stream, group)["pending"] == 1, timeout_s=60, what="first activator")
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
    finally:
        if doomed.poll() is None:
            doomed.kill()
    pipeline.land(body)
    thread, counts = _activator_in_thread()  # reclaims after claim_idle_s
    thread.join(90)
    assert counts["succeeded"] == 1
    (result,) = pipeline.results()
    assert result["deliveries"] == "2"
    n = int(result["n_alerts"])
    alerts = pipeline.alerts(n + 1, timeout_s=5)  # ask for one more than expected: none may come
    assert len(alerts) == n and len({a["alertId"] for a in alerts}) == n


def _final(run: Any) -> bool:
    return run.state is not None and run.state.is_final()
