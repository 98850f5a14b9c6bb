"""What an operator sees in Prefect, on the real stack: states, tags, names, events, artifacts, reruns."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterTags,
    LogFilter,
    LogFilterTaskRunId,
    TaskRunFilter,
    TaskRunFilterName,
)
from prefect.client.schemas.objects import StateType
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

from prompt_processing.adapters import prefect_api
from prompt_processing.cli import main
from prompt_processing.model import naming
from tests.helpers import consume_all, stop_prefect_worker, wait_for
from tests.test_pipeline import Pipeline, _activator_in_thread, pipeline  # noqa: F401 (a fixture)


def task_runs(client: SyncPrefectClient, group: str) -> dict[str, Any]:
    """The group's task runs by name (as the UI's search finds them), once every one reached a final state."""
    runs_filter = TaskRunFilter(name=TaskRunFilterName(like_=f"LATISS-{group}-det"))

    def final() -> bool:
        runs = client.read_task_runs(task_run_filter=runs_filter)
        return bool(runs) and all(r.state is not None and r.state.is_final() for r in runs)

    wait_for(final, what=f"the task runs of {group}")  # states arrive through events
    return {r.name: r for r in client.read_task_runs(task_run_filter=runs_filter)}


def events(client: SyncPrefectClient, name: str, group: str) -> list[Any]:
    wanted = EventFilter(event=EventNameFilter(name=[name]),
                         resource=EventResourceFilter(id=[f"pp.visit.latiss.{group}.000"]))  # fmt: skip
    return client.read_events(wanted, limit=10).events


def artifact(client: SyncPrefectClient, group: str) -> Any:
    key = naming.visit_artifact_key("LATISS", group, 0)
    found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return max(found, key=lambda a: a.created) if found else None


def test_a_failed_visit_detector_shows_once_with_its_reason_tags_event_and_artifact(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PP_VISIT__TAG_TASK_RUNS", "true")
    pipeline.announce("op-fail", duration_s=0.5)  # the image never comes
    thread, counts = _activator_in_thread()
    thread.join(60)
    assert not thread.is_alive() and counts["failed"] == 1
    with get_client(sync_client=True) as client:
        runs = task_runs(client, "op-fail")
        failed = [name for name, r in runs.items() if r.state.type in (StateType.FAILED, StateType.CRASHED)]
        assert failed == ["LATISS-op-fail-det000"]  # one failed visit-detector counts once
        visit = runs["LATISS-op-fail-det000"]
        assert "no raw image for LATISS visit op-fail detector 0" in visit.state.message
        assert "(stopped in wait_for_images)" in visit.state.message
        assert visit.tags == ["instrument:LATISS"]  # group and detector are in its name
        preload, waited = runs["LATISS-op-fail-det000:preload"], runs["LATISS-op-fail-det000:wait_for_images"]
        assert (preload.state.type, preload.state.name) == (StateType.COMPLETED, "Completed")  # not RolledBack
        assert (waited.state.type, waited.state.name) == (StateType.CANCELLED, "Stopped")
        assert "no raw image" in waited.state.message and not waited.tags
        own_logs = LogFilter(task_run_id=LogFilterTaskRunId(any_=[visit.id]))
        wait_for(lambda: bool(client.read_logs(log_filter=own_logs)), what="the visit-detector's log")
        (line,) = [log.message for log in client.read_logs(log_filter=own_logs)]  # one line, no traceback
        assert line.startswith("LATISS op-fail det000 failed in wait_for_images: no raw image for LATISS visit op-fail")
        wait_for(lambda: bool(events(client, "pp.visit.failed", "op-fail")), what="the pp.visit.failed event")
        (event,) = events(client, "pp.visit.failed", "op-fail")
        assert (event.payload["instrument"], event.payload["group"], event.payload["detector"]) == (
            "LATISS", "op-fail", 0)  # fmt: skip
        assert event.payload["deliveries"] == 1 and "no raw image" in event.payload["reason"]
        wait_for(lambda: artifact(client, "op-fail") is not None, what="the visit-detector's artifact")
        report = artifact(client, "op-fail")
        assert report.task_run_id == visit.id and "op-fail detector 000: failed" in report.data
        assert "pp rerun LATISS op-fail 0" in report.data
        activator = client.read_flow_run(visit.flow_run_id)
    assert activator.state.name == "1 failed"
    assert activator.state.message == "0 succeeded, 0 ignored, 1 failed, 0 handed back, 0 lost"
    assert naming.ACTIVATOR_BUSY_TAG in activator.tags
    assert activator.name.startswith("activator-LATISS-")


def test_an_activator_without_work_ends_idle_and_is_tagged_so(pipeline: Pipeline) -> None:
    thread, counts = _activator_in_thread(idle_timeout_s=0.5)
    thread.join(60)
    assert not thread.is_alive() and sum(counts.values()) == 0
    with get_client(sync_client=True) as client:
        idle = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["idle"])))
    assert idle and all(r.state.name == "Idle" for r in idle)


@pytest.mark.timeout(300)
def test_reruns_from_the_failures(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pp rerun --failed` reruns what failed; its outcome is recorded; a rerun of an image that never
    landed fails at once; a rerun of what the APDB holds ends Ignored, unless forced: then it writes new
    outputs and sends no alert again."""
    for group in ("rr-late", "rr-never"):
        pipeline.announce(group, duration_s=0.5)
    thread, counts = _activator_in_thread()
    thread.join(60)
    assert counts["failed"] == 2
    failed_run = {r["group"]: r["task_run_id"] for r in pipeline.results()}
    pipeline.land(json.loads(pipeline.redis.get(naming.visit_key("LATISS", "rr-late")) or b"{}"))
    monkeypatch.setenv("PP_PREFECT__PORT", str(pipeline.settings.prefect.port))
    prefect_api.deploy_all(pipeline.settings, Path.cwd())
    worker = subprocess.Popen(prefect_api.prefect_worker_command(pipeline.settings),
                              env=prefect_api.prefect_env(pipeline.settings) | {"PREFECT_WORKER_QUERY_SECONDS": "1"})
    try:
        assert main(["rerun", "--failed", "--instrument", "LATISS", "--since", "1h"]) == 0
        assert main(["rerun", "--failed", "--instrument", "LATISS"]) == 0  # again: the same runs, not new ones
        with get_client(sync_client=True) as client:
            reruns = {g: _finished_rerun(client, failed_run[g]) for g in ("rr-late", "rr-never")}
            rerun_runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["rerun"])))
            assert len(rerun_runs) == 2
            late, never = reruns["rr-late"], reruns["rr-never"]
            assert late.state.is_completed() and late.state.name == "Completed", late.state
            assert {"group:rr-late", "detector:000", f"rerun-of:{failed_run['rr-late']}"} <= set(late.tags)
            assert never.state.is_failed() and "no raw image" in never.state.message
            wait_for(lambda: "rr-late detector 000: succeeded" in (artifact(client, "rr-late").data or ""),
                     what="the artifact to show the rerun's success")  # fmt: skip
            ignored_id = prefect_api.run_deployment(pipeline.settings, naming.RERUN_DEPLOYMENT,
                                                    {"instrument": "LATISS", "group": "rr-late", "detector": 0})
            ignored = _finished(client, ignored_id)
            assert (ignored.state.type, ignored.state.name) == (StateType.COMPLETED, "Ignored")
            assert "already in the APDB" in ignored.state.message
            forced_id = prefect_api.run_deployment(pipeline.settings, naming.RERUN_DEPLOYMENT,
                                                   {"instrument": "LATISS", "group": "rr-late", "detector": 0,
                                                    "force": True})  # fmt: skip
            forced = _finished(client, forced_id)
            assert (forced.state.type, forced.state.name) == (StateType.COMPLETED, "Completed"), forced.state
    finally:
        stop_prefect_worker(worker)
    latest = {r["group"]: r for r in pipeline.results()}  # the last record per group: the forced rerun
    assert (latest["rr-late"]["status"], latest["rr-late"]["n_alerts"]) == ("succeeded", "0")
    first = next(r for r in pipeline.results() if r["group"] == "rr-late" and r["status"] == "succeeded")
    n_alerts = int(first["n_alerts"])
    on_topic = consume_all(pipeline.settings, pipeline.settings.kafka.alerts_topic, n_alerts + 1, timeout_s=5)
    assert len(on_topic) == n_alerts >= 3  # the forced rerun sent none again
    recorded = [r for r in pipeline.results() if r.get("rerun_of")]
    assert {(r["group"], r["status"], r["rerun_of"]) for r in recorded} == {
        ("rr-late", "succeeded", failed_run["rr-late"]), ("rr-never", "failed", failed_run["rr-never"])}  # fmt: skip
    never_record = next(r for r in recorded if r["group"] == "rr-never")
    assert json.loads(never_record["steps_s"])["wait"] < 0.5  # failed at once, not after the timeout again


def _finished_rerun(client: SyncPrefectClient, rerun_of: str) -> Any:
    runs_filter = FlowRunFilter(tags=FlowRunFilterTags(all_=[naming.rerun_of_tag(rerun_of)]))
    wait_for(lambda: bool(client.read_flow_runs(flow_run_filter=runs_filter)), what="the rerun")
    (run,) = client.read_flow_runs(flow_run_filter=runs_filter)
    return _finished(client, run.id)


def _finished(client: SyncPrefectClient, run_id: UUID) -> Any:
    wait_for(lambda: (r := client.read_flow_run(run_id)).state is not None and r.state.is_final(),
             timeout_s=120, what="the rerun to finish")  # fmt: skip
    return client.read_flow_run(run_id)


@pytest.mark.timeout(180)
def test_the_shipped_automation_notifies_an_operator_of_a_failed_visit(pipeline: Pipeline) -> None:
    """`deployments/automations.yaml`'s pp-visit-failed, with a webhook block as the operator's
    channel and enabled: a visit-detector fails, the webhook receives its reason."""
    received: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hook = f"pp-hook-{uuid.uuid4().hex[:6]}"
        CustomWebhookNotificationBlock(name=hook, url=f"http://127.0.0.1:{server.server_port}/hook",
                                       json_data={"subject": "{{subject}}", "body": "{{body}}"}).save(hook)  # fmt: skip
        (shipped,) = [a for a in prefect_api.automations(Path.cwd()) if a.name == "pp-visit-failed"]
        assert shipped.notify is not None
        notify = shipped.notify.model_copy(update={"block": f"custom-webhook/{hook}"})
        enabled = shipped.model_copy(update={"name": f"{shipped.name}-{hook}", "enabled": True, "notify": notify})
        assert prefect_api.ensure_automations(pipeline.settings, [enabled]) == {enabled.name: "created"}
        assert prefect_api.ensure_automations(pipeline.settings, [enabled]) == {enabled.name: "updated"}
        pipeline.announce("op-notify", duration_s=0.5)  # its image never comes
        thread, counts = _activator_in_thread()
        thread.join(60)
        assert counts["failed"] == 1
        wait_for(lambda: any("op-notify" in m["subject"] for m in received), timeout_s=90, what="the notification")
    finally:
        server.shutdown()
        server.server_close()
    (message,) = [m for m in received if "op-notify" in m["subject"]]
    assert message["subject"] == "Prompt processing: LATISS op-notify det0 failed"
    assert "failed in wait_for_images (delivery 1):\nno raw image for LATISS visit op-notify" in message["body"]
    assert "pp rerun LATISS op-notify 0" in message["body"]
