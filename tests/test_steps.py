"""A visit-detector's steps behave alike as task runs of their own and inline (``PP_VISIT__STEP_TASK_RUNS``)."""

from __future__ import annotations

import time
import uuid

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

from prompt_processing.activator.context import StepClock
from prompt_processing.model.errors import NonRetriableError, RetriableError
from prompt_processing.settings import VisitSettings
from tasks.common import run_step, step


@step("flaky")
def flaky(clock: StepClock, calls: list[int], fails: int, final: bool) -> str:
    calls.append(1)
    if final:
        raise NonRetriableError("the image is corrupt")
    if len(calls) <= fails:
        raise RetriableError("the object store is down")
    return "done"


@task(name="marker")
def marker() -> None:
    """Its task run shows the flow's task runs have reached the server."""


def _task_runs(prefix: str, timeout_s: float = 30.0) -> list[str]:
    """Names of the task runs called ``prefix``*, once the marker ``prefix``marker is among them."""
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=prefix)))
            names = [r.name for r in runs]
            if f"{prefix}marker" in names or time.monotonic() > deadline:
                return sorted(n for n in names if n != f"{prefix}marker")


@pytest.mark.parametrize("as_task_runs", [True, False], ids=["task-runs", "inline"])
@pytest.mark.parametrize(
    ("fails", "final", "outcome", "calls"),
    [(2, False, "done", 3), (3, False, RetriableError, 3), (0, True, NonRetriableError, 1)],
    ids=["retried-then-done", "retries-exhausted", "final-error-not-retried"],
)
def test_a_step_is_retried_on_retriable_errors_only_and_a_final_error_reaches_the_caller(
    prefect_server: str, as_task_runs: bool, fails: int, final: bool, outcome: object, calls: int
) -> None:
    visit = VisitSettings(step_retries=2, step_retry_delay_s=0, step_task_runs=as_task_runs)
    label = f"steps-{uuid.uuid4().hex[:8]}"
    made: list[int] = []

    @flow(name="steps-test")
    def visit_detector() -> object:
        try:
            result: object = run_step(flaky, visit, StepClock(label), made, fails, final)
        except (RetriableError, NonRetriableError) as exc:
            result = type(exc)
        marker.with_options(task_run_name=f"{label}:marker")()
        return result

    assert visit_detector() == outcome
    assert len(made) == calls
    runs = _task_runs(f"{label}:")
    assert runs == ([f"{label}:flaky"] if as_task_runs else [])
