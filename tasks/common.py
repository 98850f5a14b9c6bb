"""Shared task options."""

from __future__ import annotations

import functools
from typing import Any

from prefect import Task
from prefect.client.schemas.objects import State, TaskRun

from prompt_processing.model.errors import RetriableError
from prompt_processing.settings import VisitSettings


def retry_if_retriable(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect retry condition: only ``RetriableError`` is worth another try."""
    return isinstance(state.data, RetriableError)


def with_step_options[T: Task[Any, Any]](step: T, visit: VisitSettings) -> T:
    """The step with the configured retries (only retriable errors are retried).

    Built once per (step, retries, delay) and reused: a warm activator does not rebuild tasks per visit.
    """
    return _configured(step, visit.step_retries, visit.step_retry_delay_s)  # type: ignore[return-value]


@functools.cache
def _configured(step: Task[Any, Any], retries: int, delay_s: float) -> Task[Any, Any]:
    return step.with_options(retries=retries, retry_delay_seconds=delay_s, retry_condition_fn=retry_if_retriable)
