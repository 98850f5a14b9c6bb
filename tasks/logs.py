"""Logging inside a flow run that processes visit-detectors (an activator, a rerun).

Prefect logs every task run's end ("Finished in state Completed()", and for a returned Failed
state "Task run failed with state: ..." with an empty traceback). A visit-detector's outcome has
its own line (``tasks.outcome``), and each run's state is in the UI, so those state lines are
dropped; an exception raised by a task (a retriable failure, a bug) is still logged with its
traceback. With ``PP_LOG_FORMAT=json`` Prefect's console output becomes one JSON object per line.
"""

from __future__ import annotations

import logging

from prompt_processing import logs
from prompt_processing.settings import Settings

TASK_RUN_LOGGER = "prefect.task_runs"
STATE_LINES = ("Finished in state ", "Task run failed with state:")


class StateLines(logging.Filter):
    """Drops Prefect's per-task-run state lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(STATE_LINES))


def configure_run_logging(settings: Settings) -> None:
    """Quiet the task-run state lines; JSON console lines if asked. Idempotent."""
    task_runs = logging.getLogger(TASK_RUN_LOGGER)
    if not any(isinstance(f, StateLines) for f in task_runs.filters):
        task_runs.addFilter(StateLines())
    if settings.log_format == "json":
        for name in ("prefect", TASK_RUN_LOGGER, "prefect.flow_runs"):
            for handler in logging.getLogger(name).handlers:
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                    handler.setFormatter(logs.JsonFormatter())
