"""Activators end to end on the real stack: Redis, the Kafka-protocol broker, moto S3, Prefect server.

The fan-out and the router run in threads; activators run as real Prefect flow runs (in a
thread, or in a child process where a test kills one). Most tests put the work entry in the
stream the way the fan-out does (``StreamFanOut``) with a start time of now, so they do not
wait the summit's 20 s lead; one test goes through the whole chain from the simulator.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import astropy.time
import pytest
import redis
import sqlalchemy.exc
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from lsst.resources import ResourcePath
from lsst.sphgeom import LonLat, UnitVector3d
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, TaskRunFilter, TaskRunFilterName
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort

from flows.activator import activator
from pp_devkit.night import NightPlan, run_night, seed_central_repo, upload_raw
from pp_devkit.sim import plan_visits
from prompt_processing.activator.context import ProcessingContext
from prompt_processing.adapters import kafka, s3
from prompt_processing.adapters.redis_client import make_redis
from prompt_processing.adapters.results import read_results
from prompt_processing.adapters.streams import StreamFanOut
from prompt_processing.apdb.db import open_apdb, open_ledger
from prompt_processing.butler import repo
from prompt_processing.butler.output_event import OutputEvent
from prompt_processing.model import naming, sky
from prompt_processing.model.events import TAI_MINUS_UTC_S, NextVisit
from prompt_processing.model.instruments import LATISS
from prompt_processing.services.router import RouterService
from prompt_processing.settings import ActivatorSettings, InstrumentSettings, QueueSettings, Settings, VisitSettings
from tasks.outcome import VisitOutcome, landed_to_alerts_s
from tasks.visit import run_visit_detector
from tests.helpers import Running, RunningFanOut, consume_all, decode_alerts, flow_run_env, visit_body, wait_for

SHAPE_PX = (384, 384)  # enough stars for the PSF, the astrometric fit and the zero point


@dataclass
class Pipeline:
    settings: Settings
    redis: redis.Redis
    plan: NightPlan

    def announce(self, group: str, *, duration_s: float = 1.0, **changes: Any) -> dict[str, Any]:
        """Fan out a LATISS visit starting now, as the fan-out would (``changes`` to its NextVisit fields)."""
        seeded = plan_visits(LATISS, 1)[0]  # the pointing whose template the fixture seeded
        now_tai = time.time() + TAI_MINUS_UTC_S
        body = visit_body("LATISS", group) | {
            "startTime": now_tai,
            "duration": duration_s,
            "nimages": 1,
            "position": [seeded.ra_deg, seeded.dec_deg],
            "filters": seeded.filters,
        } | changes
        client = make_redis(self.settings.redis, self.settings.retry, name="test-announce")  # the services' user
        try:
            writer = StreamFanOut(client, dedup_ttl_s=3600, stream_maxlen=10_000)
            assert writer.write(NextVisit.from_json(json.dumps(body)), "LATISS", (0,)) == 1
        finally:
            client.close()
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
        """Up to ``n`` alerts from the topic, decoded and validated against the schema."""
        return decode_alerts(self.settings, consume_all(self.settings, self.settings.kafka.alerts_topic, n,
                                                        timeout_s=timeout_s))  # fmt: skip


@pytest.fixture
def pipeline(
    settings: Settings, redis_client: redis.Redis, prefect_server: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Pipeline]:
    settings = settings.model_copy(update={
        "instruments": {"LATISS": InstrumentSettings()},
        "queue": QueueSettings(claim_idle_s=1.0),
        "activator": ActivatorSettings(idle_timeout_s=4.0, block_s=0.2),
        "visit": VisitSettings(image_wait_exposures=4.0, image_timeout_s=2.0, step_retries=0),
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
    _check_alerts(pipeline, alerts, sent)
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


def _check_alerts(pipeline: Pipeline, alerts: list[dict[str, Any]], sent: dict[str, Any]) -> None:
    """Every alert: keyed by its diaSourceId, headed with its visit, its DiaObject and three FITS cutouts
    of the configured size, at a position on the detector's sky; all of them in the APDB."""
    assert {a["_headers"]["group"] for a in alerts} == {sent["groupId"]}
    assert all(a["_key"] == str(a["diaSourceId"]) == str(a["diaSource"]["diaSourceId"]) for a in alerts)
    assert len({a["diaSourceId"] for a in alerts}) == len(alerts)
    size = pipeline.settings.alerts.cutout_size_px
    for alert in alerts:
        assert alert["diaObject"]["diaObjectId"] == alert["diaSource"]["diaObjectId"]
        for name in ("cutoutScience", "cutoutTemplate", "cutoutDifference"):
            with fits.open(io.BytesIO(alert[name])) as hdus:
                assert hdus[0].data.shape == (size, size)
                wcs = WCS(hdus[0].header)
            centre = wcs.pixel_to_world(size // 2, size // 2)
            source = SkyCoord(alert["diaSource"]["ra"], alert["diaSource"]["dec"], unit="deg")
            scale = wcs.proj_plane_pixel_scales()[0]
            assert centre.separation(source) < 0.75 * scale  # the source is in the stamp's centre pixel
    region = sky.detector_region(LATISS, 0, *sent["position"], sent["cameraAngle"], 1.0)
    assert all(region.contains(UnitVector3d(LonLat.fromDegrees(a["diaSource"]["ra"], a["diaSource"]["dec"])))
               for a in alerts)  # fmt: skip
    apdb = open_apdb(pipeline.settings.apdb)
    (visit,) = {a["diaSource"]["visit"] for a in alerts}
    assert apdb.containsVisitDetector(visit, 0)
    stored = apdb.getDiaSources(region, None, astropy.time.Time.now())
    assert stored is not None and sorted(stored["diaSourceId"]) == sorted(a["diaSourceId"] for a in alerts)


def test_image_already_there_before_the_activator_starts(pipeline: Pipeline) -> None:
    body = pipeline.announce("early-image")
    pipeline.land(body)
    wait_for(lambda: pipeline.redis.exists(naming.presence_key("LATISS", "early-image", 0, 0)) == 1, what="presence")
    thread, counts = _activator_in_thread()
    thread.join(60)
    assert counts["succeeded"] == 1
    assert pipeline.results()[0]["status"] == "succeeded"


def test_image_never_arrives_fails_clearly_and_is_final(pipeline: Pipeline) -> None:
    pipeline.announce("no-image", duration_s=0.5)  # wait ends 4 x 0.5 + 2 s after the shutter opened
    thread, counts = _activator_in_thread()
    thread.join(60)
    assert counts["failed"] == 1
    (result,) = pipeline.results()
    assert result["status"] == "failed"
    assert "no raw image for LATISS visit no-image detector 0 snap 0 within 4 s" in result["reason"]
    stream, group = naming.stream_name("LATISS"), naming.consumer_group("LATISS")
    assert pipeline.redis.xpending(stream, group)["pending"] == 0  # final: acknowledged, not retried
    name_filter = TaskRunFilter(name=TaskRunFilterName(any_=["LATISS-no-image-det000"]))
    with get_client(sync_client=True) as client:  # task-run states arrive through events: wait for them
        wait_for(lambda: any(_final(r) for r in client.read_task_runs(task_run_filter=name_filter)), what="run")
        (run,) = client.read_task_runs(task_run_filter=name_filter)
    assert run.state is not None and run.state.is_failed()
    assert "no raw image for LATISS visit no-image" in (run.state.message or "")


@pytest.mark.timeout(180)
def test_a_final_failure_redelivered_is_not_processed_again_until_rerun_by_hand(pipeline: Pipeline) -> None:
    """A visit-detector that failed for good and comes back (its acknowledgement lost, or re-fanned after Redis
    lost its stream) is recognised from the ledger: "already failed", not waited for again, not processed twice.
    A rerun by hand does process it, and once it succeeded the failure is forgotten."""
    body = pipeline.announce("failed-once", duration_s=0.5)
    thread, counts = _activator_in_thread()
    thread.join(60)
    assert counts["failed"] == 1
    visit = NextVisit.from_json(json.dumps(body))
    ctx = ProcessingContext(pipeline.settings, name="redelivery-test")
    try:
        again = run_visit_detector(ctx, visit, 0)
        assert (again.status, again.error) == ("failed", "ImageTimeout"), again
        assert again.reason.startswith("already failed: no raw image for LATISS visit failed-once detector 0"), again
        assert again.steps_s == {}  # neither preloaded nor waited for
        pipeline.land(body)
        rerun = run_visit_detector(ctx, visit, 0, rerun=True)
        assert rerun.status == "succeeded", rerun
        after = run_visit_detector(ctx, visit, 0)
        assert (after.status, after.reason.split(":")[0]) == ("succeeded", "already done"), after
    finally:
        ctx.close()


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
    assert "landed, but its sidecar" in result["reason"] and "never did within 4 s" in result["reason"], result


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
    _signal_once_it_holds_the_visit(pipeline, doomed, signal.SIGKILL)
    pipeline.land(body)
    thread, counts = _activator_in_thread()  # reclaims after claim_idle_s
    thread.join(90)
    assert counts["succeeded"] == 1
    (result,) = pipeline.results()
    assert result["deliveries"] == "2"
    n = int(result["n_alerts"])
    alerts = pipeline.alerts(n + 1, timeout_s=5)  # ask for one more than expected: none may come
    assert len(alerts) == n and len({a["diaSourceId"] for a in alerts}) == n


@pytest.mark.timeout(180)
def test_sigterm_hands_back_the_visit_in_hand_and_ends_the_run_cancelled(pipeline: Pipeline) -> None:
    """What a Prefect worker sends when the run is cancelled in the UI, and Kubernetes when the pod is deleted."""
    body = pipeline.announce("sigterm", duration_s=30.0)  # the activator waits for this image
    code = "from flows.activator import activator; activator('LATISS', idle_timeout_s=60)"
    _signal_once_it_holds_the_visit(pipeline, subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy()))
    _assert_handed_back(pipeline)
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["activator"])),
                                       sort=FlowRunSort.START_TIME_DESC, limit=1)  # fmt: skip
    assert run.state is not None and run.state.type == StateType.CANCELLED, run.state
    assert "stopped by signal 15" in (run.state.message or "") and "1 handed back" in (run.state.message or "")
    pipeline.land(body)
    thread, counts = _activator_in_thread()  # takes it at once: a handed-back entry needs no claim_idle_s
    thread.join(90)
    assert counts["succeeded"] == 1 and pipeline.results()[0]["deliveries"] == "2"


def _signal_once_it_holds_the_visit(
    pipeline: Pipeline, activator: subprocess.Popen[Any], signum: int = signal.SIGTERM
) -> None:
    """``signum`` to ``activator`` (a process) once it has taken the one visit (SIGTERM: as a pod deletion
    would); waits for it to exit."""
    stream, group = naming.stream_name("LATISS"), naming.consumer_group("LATISS")
    try:
        wait_for(lambda: pipeline.redis.xpending(stream, group)["pending"] == 1, timeout_s=90, what="the activator")
        activator.send_signal(signum)
        activator.wait(60)
    finally:
        if activator.poll() is None:
            activator.kill()


def _assert_handed_back(pipeline: Pipeline) -> None:
    """The one visit was handed back (parked for any activator), not left to time out."""
    stream, group = naming.stream_name("LATISS"), naming.consumer_group("LATISS")
    (pending,) = pipeline.redis.xpending_range(stream, group, "-", "+", 10)
    assert pending["consumer"].decode() == naming.PARKING_CONSUMER


def _final(run: Any) -> bool:
    return run.state is not None and run.state.is_final()


@pytest.mark.timeout(180)
def test_a_worker_dead_between_the_apdb_and_the_alerts_gets_the_same_alerts_sent(pipeline: Pipeline) -> None:
    """The APDB holds the visit-detector but its alerts are not marked sent (the worker died between the two):
    the next run sends the very same alerts from the APDB's rows and stores nothing; the one after ignores it."""
    body = pipeline.announce("resume")
    pipeline.land(body)
    visit = NextVisit.from_json(json.dumps(body))
    ctx = ProcessingContext(pipeline.settings, name="resume-test")
    try:
        done = run_visit_detector(ctx, visit, 0)
        assert done.status == "succeeded", done
        n = done.n_alerts
        first = pipeline.alerts(n)
        assert len(first) == n >= 3
        forget_alerts_sent(pipeline.settings)  # as if the worker died before the ledger heard of them
        # The same activator again (as after a Redis loss): the read-back association has a config of its own,
        # so it goes to a RUN of its own, not the first one's (a RUN holds one config per task).
        resumed = run_visit_detector(ctx, visit, 0)
        assert (resumed.status, resumed.n_alerts) == ("succeeded", n), resumed
        again = run_visit_detector(ctx, visit, 0)  # redelivered once more: already done, nothing sent
        assert (again.status, again.n_alerts) == ("succeeded", 0), again
        assert again.reason == f"already done: {n} alerts confirmed by resume-test (none sent again)"
        assert again.alerts_sent_at == pytest.approx(resumed.alerts_sent_at, abs=1.0)
        assert again.steps_s == {}  # known from the ledger's outcome record: neither preloaded nor waited for
        assert landed_to_alerts_s(again) == pytest.approx(landed_to_alerts_s(resumed), abs=1.0)  # the first latency
        forget_alerts_sent(pipeline.settings, tables=("final_table",))  # the outcome record lost, the alerts' kept
        late = run_visit_detector(ctx, visit, 0)  # known once the raws are in, by the alerts' completion record
        assert (late.status, late.n_alerts, late.reason) == ("succeeded", 0, again.reason), late
        assert "preload" in late.steps_s
    finally:
        ctx.close()
    both = pipeline.alerts(2 * n + 1, timeout_s=5)  # one more than expected: none may come
    assert len(both) == 2 * n
    by_key: dict[str, list[dict[str, Any]]] = {}
    for alert in both:
        by_key.setdefault(alert["_key"], []).append(alert)
    assert len(by_key) == n and all(a["diaSource"] == b["diaSource"] for a, b in by_key.values())
    region = sky.detector_region(LATISS, 0, *body["position"], body["cameraAngle"], 1.0)
    stored = open_apdb(pipeline.settings.apdb).getDiaSources(region, None, astropy.time.Time.now())
    assert stored is not None and len(stored) == n  # stored once


def test_a_visit_where_nothing_was_seeded_falls_back_to_isr_and_says_why(pipeline: Pipeline) -> None:
    """5 degrees from the seeded field there is no template and no reference catalogue: ApPipe and
    SingleFrame (which calibrates against the refcat) cannot be built; Isr runs."""
    seeded = plan_visits(LATISS, 1)[0]
    body = pipeline.announce("unseeded", position=[(seeded.ra_deg + 5.0) % 360.0, seeded.dec_deg])
    pipeline.land(body)
    thread, counts = _activator_in_thread()
    thread.join(60)
    assert counts["succeeded"] == 1
    (result,) = pipeline.results()
    assert (result["status"], result["pipeline"], result["n_alerts"]) == ("succeeded", "Isr", "0")
    ap_pipe, single_frame = json.loads(result["not_built"])
    assert ap_pipe.startswith("ApPipe: cannot build: ") and single_frame.startswith("SingleFrame: cannot build: ")
    assert "calibrate" in single_frame
    assert set(json.loads(result["pipeline_s"])) >= {"graph", "execute", "task:isr"}


def test_a_survey_without_pipelines_is_ignored_before_anything_is_loaded(pipeline: Pipeline) -> None:
    pipeline.announce("engineering", survey="")
    thread, counts = _activator_in_thread()
    thread.join(60)
    assert counts["ignored"] == 1
    (result,) = pipeline.results()
    assert result["status"] == "ignored" and "gives no pipeline" in result["reason"]
    assert json.loads(result["steps_s"]) == {}  # not preloaded, not waited for


def forget_alerts_sent(settings: Settings, tables: tuple[str, ...] = ("sent", "done_table", "final_table")) -> None:
    """Empty the alerts ledger's ``tables`` (``apdb.ledger``; default all: as if no confirmation and no
    outcome had been recorded)."""
    ledger = open_ledger(settings.apdb)
    try:
        with ledger._engine.begin() as connection:
            for table in tables:
                connection.execute(getattr(ledger, table).delete())
    finally:
        ledger.close()


@flow(name="publish-boundary-test", validate_parameters=False)
def _in_a_flow(ctx: ProcessingContext, visit: NextVisit) -> VisitOutcome:
    return run_visit_detector(ctx, visit, 0)


def _fail_once(target: Any, name: str, monkeypatch: pytest.MonkeyPatch, error: Exception) -> list[int]:
    """``target.name`` raises ``error`` on its first call, then works; returns the list of calls."""
    calls: list[int] = []
    original = getattr(target, name)

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, flaky)
    return calls


@pytest.mark.timeout(180)
@pytest.mark.parametrize("boundary", ["apdb-store", "ledger-after-kafka"])
def test_a_failure_at_a_publish_boundary_sends_each_alert_once(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, boundary: str
) -> None:
    """The APDB store fails before any alert went out, or the ledger insert fails after Kafka confirmed them:
    publish is retried, and each alert is on the topic once (the second try waits for none and sends none
    that Kafka confirmed)."""
    body = pipeline.announce(f"boundary-{boundary}")
    pipeline.land(body)
    settings = pipeline.settings.model_copy(update={"visit": pipeline.settings.visit.model_copy(
        update={"step_retries": 1, "step_retry_delay_s": 0.1})})  # fmt: skip
    ctx = ProcessingContext(settings, name=f"boundary-{boundary}")
    outage = sqlalchemy.exc.OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))
    try:
        target = (ctx.apdb, "store") if boundary == "apdb-store" else (ctx.ledger, "record")
        calls = _fail_once(*target, monkeypatch, outage)
        outcome = _in_a_flow(ctx, NextVisit.from_json(json.dumps(body)))  # step retries log to their flow run
        assert (outcome.status, len(calls)) == ("succeeded", 2), outcome
        assert outcome.n_alerts >= 3
    finally:
        ctx.close()
    alerts = pipeline.alerts(outcome.n_alerts + 1, timeout_s=5)  # one more than expected: none may come
    assert len(alerts) == outcome.n_alerts == len({a["_key"] for a in alerts})


@pytest.mark.timeout(240)
def test_a_pod_activator_is_a_run_of_the_deployment_and_a_deleted_pod_hands_its_visit_back(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """`pp run-activator` (a KEDA ScaledJob's pod): the run belongs to the activator deployment and no
    worker starts it; SIGTERM to the pod's process hands the waiting visit back and ends the run
    Cancelled. The Kubernetes worker's SIGTERM behaviour (reschedule, for backoffLimit 0) is set as in
    its pods: under `prefect flow-run execute` it hard-killed the activator and rescheduled the run."""
    from prompt_processing.adapters import prefect_api

    prefect_api.deploy_all(pipeline.settings, Path.cwd())
    pipeline.announce("pod", duration_s=30.0)  # the activator waits for this image
    env = os.environ | {"PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR": "reschedule",
                        "PP_PREFECT__API_URL": pipeline.settings.prefect.url}  # fmt: skip
    log = tmp_path / "pod.log"
    with log.open("w") as out:
        _signal_once_it_holds_the_visit(pipeline, subprocess.Popen(
            [sys.executable, "-m", "prompt_processing.cli", "run-activator", "LATISS"], env=env, stdout=out,
            stderr=subprocess.STDOUT))  # fmt: skip
    _assert_handed_back(pipeline)
    run_id = UUID(log.read_text().split("activator flow run ", 1)[1].split(":", 1)[0])
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        deployment = client.read_deployment_by_name(naming.activator_deployment("LATISS"))
        states = [state.type for state in client.read_flow_run_states(run_id)]
    assert run.deployment_id == deployment.id and "run-activator" in run.tags
    assert states == [StateType.PENDING, StateType.RUNNING, StateType.CANCELLED]  # never Scheduled: no worker's
    assert run.state is not None and "1 handed back" in (run.state.message or ""), run.state
