"""Shared task options."""

from __future__ import annotations

from typing import Any

from prefect import Task
from prefect.client.schemas.objects import State, TaskRun

from prompt_processing.errors import RetriableError
from prompt_processing.settings import WorkerSettings


def retry_if_retriable(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect retry condition: only ``RetriableError`` is worth another try."""
    return isinstance(state.data, RetriableError)


def with_step_options[T: Task[Any, Any]](step: T, worker: WorkerSettings) -> T:
    """The step with the configured retries (only retriable errors are retried)."""
    return step.with_options(  # type: ignore[return-value]
        retries=worker.task_retries,
        retry_delay_seconds=worker.task_retry_delay_s,
        retry_condition_fn=retry_if_retriable,
    )
