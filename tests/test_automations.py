"""Automation pp-run-lost (deployments/automations.yaml) on the session's Prefect server: a running flow
run whose heartbeats stop is marked Crashed; one that ends after its heartbeat is left alone. The window
is shortened to 10 s for the test (the shipped 120 s is four missed 30 s heartbeats)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Completed, Running

from prompt_processing.adapters import prefect_api
from prompt_processing.settings import Settings
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]
WITHIN_S = 10


def _event(name: str, run_id: UUID, tag: str) -> dict[str, Any]:
    """An event of flow run ``run_id`` as the engine sends it (the run's tags as related resources)."""
    return {"id": str(uuid.uuid4()), "occurred": datetime.now(UTC).isoformat(), "event": name,
            "resource": {"prefect.resource.id": f"prefect.flow-run.{run_id}"},
            "related": [{"prefect.resource.id": f"prefect.tag.{tag}", "prefect.resource.role": "tag"}]}  # fmt: skip


@flow(name="pp-heartbeat-test")
def _never_runs() -> None:
    """Only its name is used: the runs are driven through the API."""


def _running_run(tag: str) -> UUID:
    with get_client(sync_client=True) as client:
        return client.create_flow_run(_never_runs, tags=[tag], state=Running()).id


def _state(run_id: UUID) -> StateType | None:
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    return state.type if state else None


@pytest.mark.timeout(150)
def test_a_run_whose_heartbeats_stop_is_marked_crashed_and_a_finished_one_is_not(
    stack_settings: Settings, prefect_server: str
) -> None:
    (lost,) = [a for a in prefect_api.automations(ROOT) if a.name == "pp-run-lost"]
    tag = f"pp-test-{uuid.uuid4().hex[:8]}"  # this test's runs only
    trigger = lost.trigger | {"within": WITHIN_S, "match_related": {"prefect.resource.role": "tag",
                                                                   "prefect.resource.id": f"prefect.tag.{tag}"}}
    copy = lost.model_copy(update={"name": f"{lost.name}-{tag}", "trigger": trigger})
    assert prefect_api.ensure_automations(stack_settings, [copy]) == {copy.name: "created"}
    dead, finished = _running_run(tag), _running_run(tag)
    for _ in range(5):  # a few beats, so the trigger has loaded the new automation before the last one
        events = [_event("prefect.flow-run.heartbeat", run, tag) for run in (dead, finished)]
        assert httpx.post(f"{prefect_server}/events", json=events).status_code == 204
        time.sleep(1)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(finished, Completed())  # its final state's event answers the heartbeat
    wait_for(lambda: _state(dead) == StateType.CRASHED, timeout_s=90, what="the silent run marked Crashed")
    with get_client(sync_client=True) as client:
        crashed = client.read_flow_run(dead).state
        assert crashed is not None and (crashed.message or "").endswith("(automation pp-run-lost)"), crashed
        assert _state(finished) == StateType.COMPLETED
        for automation in client.read_automations_by_name(copy.name):
            client.delete_automation(automation.id)
