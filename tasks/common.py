"""What every step of a visit-detector shares: its task options, its run name, how it stops.

A step is a Prefect task named ``<visit-detector>:<step>`` (``LSSTCam-<group>-det094:preload``),
retried by Prefect only on ``RetriableError``. A ``NonRetriableError`` is an outcome of the
visit-detector, not a crash of the step: the step ends in a Cancelled-type state named
``Stopped`` with the reason, and ``run_step`` re-raises the error to the visit-detector, whose
task run is the one that fails. So one failed visit-detector counts once in the UI's failure
counts, and the step that gave up is still marked, with the reason.

With ``PP_VISIT__STEP_TASK_RUNS=false`` (LSSTCam-scale nights: 1 task run per visit-detector instead
of 5) a step runs inline in the visit-detector's task run, retried the same way; the error that
stopped it reaches the visit-detector alike, and the outcome still names the step.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.states import Cancelled

from prompt_processing.activator.context import StepClock
from prompt_processing.model.errors import NonRetriableError, RetriableError
from prompt_processing.settings import VisitSettings

STOPPED = "Stopped"
"""Name of a step's state when a final error of its visit-detector stopped it."""


def retry_if_retriable(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect retry condition: only ``RetriableError`` is worth another try."""
    return isinstance(state.data, RetriableError)


def step(name: str) -> Callable[[Callable[..., Any]], Task[..., Any]]:
    """Make ``fn`` (which takes a ``clock: StepClock`` parameter) a visit-detector step called ``name``."""

    def decorate(fn: Callable[..., Any]) -> Task[..., Any]:
        clock_at = list(inspect.signature(fn).parameters).index("clock")

        @functools.wraps(fn)
        def body(*args: Any, **kwargs: Any) -> Any:
            clock: StepClock = args[clock_at] if len(args) > clock_at else kwargs["clock"]
            clock.step = name
            try:
                return fn(*args, **kwargs)
            except NonRetriableError as exc:
                return Cancelled(name=STOPPED, message=str(exc), data=exc)

        return task(name=name, task_run_name=f"{{clock.label}}:{name}", cache_policy=NO_CACHE)(body)

    return decorate


def run_step(step_task: Task[..., Any], visit: VisitSettings, *args: Any) -> Any:
    """Run a step with the configured retries (as a task run of its own, or inline if
    ``visit.step_task_runs`` is off); its result, or the error that stopped it, raised."""
    if not visit.step_task_runs:
        return _run_inline(step_task, visit, *args)
    state: State[Any] = with_step_options(step_task, visit)(*args, return_state=True)  # type: ignore[assignment]
    if state.is_cancelled() and state.name == STOPPED:
        raise state.result(raise_on_failure=False)
    return state.result()


def _run_inline(step_task: Task[..., Any], visit: VisitSettings, *args: Any) -> Any:
    """The step's body in the caller's run: a ``RetriableError`` is retried as the task would be
    (``step_retries`` times, ``step_retry_delay_s`` apart), a final error raised as ``run_step`` raises it."""
    retries = 0
    while True:
        try:
            result = step_task.fn(*args)
        except RetriableError:
            retries += 1
            if retries > visit.step_retries:
                raise
            get_run_logger().warning("step %s: retriable error, retry %d of %d in %.1f s", step_task.name, retries,
                                     visit.step_retries, visit.step_retry_delay_s, exc_info=True)  # fmt: skip
            time.sleep(visit.step_retry_delay_s)
            continue
        if isinstance(result, State) and isinstance(result.data, NonRetriableError):  # the step's STOPPED state
            raise result.data
        return result


def with_step_options[T: Task[Any, Any]](step_task: T, visit: VisitSettings) -> T:
    """The step with the configured retries (only retriable errors are retried).

    Built once per (step, retries, delay) and reused: a warm activator does not rebuild tasks per visit.
    """
    return _configured(step_task, visit.step_retries, visit.step_retry_delay_s)  # type: ignore[return-value]


@functools.cache
def _configured(step_task: Task[Any, Any], retries: int, delay_s: float) -> Task[Any, Any]:
    return step_task.with_options(retries=retries, retry_delay_seconds=delay_s, retry_condition_fn=retry_if_retriable)
