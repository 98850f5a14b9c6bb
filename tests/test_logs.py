"""Log lines: one per record, text or JSON, with the structured fields of outcomes and decisions."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from flows.activator import hand_back_line
from prompt_processing import logs
from prompt_processing.model.errors import RetriableError
from prompt_processing.settings import Settings
from tasks.logs import StateLines, configure_run_logging
from tasks.outcome import VisitOutcome, outcome_line


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Restores the root logger that ``logs.configure`` replaces."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_json_lines_carry_the_outcome_fields(root_logging: None) -> None:
    stream = io.StringIO()
    logs.configure(Settings(log_format="json"), stream)
    outcome = VisitOutcome("LSSTCam", "g1", 94, "failed", reason="no raw image", stopped_at="wait_for_images")
    fields = {"instrument": "LSSTCam", "group": "g1", "detector": 94, "outcome": "failed", "reason": "no raw image"}
    logging.getLogger("pp.test").error(outcome_line(outcome), extra={"pp_visit": fields})
    (line,) = stream.getvalue().splitlines()
    body = json.loads(line)
    assert (body["level"], body["logger"], body["visit"]) == ("ERROR", "pp.test", fields)
    assert body["message"] == "LSSTCam g1 det094 failed in wait_for_images: no raw image (delivery 1)"


def test_text_lines_are_never_wrapped(root_logging: None) -> None:
    stream = io.StringIO()
    logs.configure(Settings(), stream)
    decision = json.dumps({f"field_{i}": i for i in range(40)})  # ~500 characters
    logging.getLogger("prompt_processing.autoscaler.loop").info("decision %s", decision)
    (line,) = stream.getvalue().splitlines()
    assert line.endswith(f"prompt_processing.autoscaler.loop: decision {decision}")


def test_prefect_state_lines_are_dropped_in_runs_and_exceptions_kept() -> None:
    configure_run_logging(Settings())
    configure_run_logging(Settings())  # idempotent
    task_runs = logging.getLogger("prefect.task_runs")
    assert sum(isinstance(f, StateLines) for f in task_runs.filters) == 1
    keep = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "Task run failed with exception: %r",
                             (RuntimeError("bug"),), None)  # fmt: skip
    drop = logging.LogRecord("prefect.task_runs", logging.INFO, __file__, 1, "Finished in state %s", ("x",), None)
    assert task_runs.filter(keep) and not task_runs.filter(drop)


def test_a_hand_back_line_says_when_the_entry_is_tried_again_or_that_it_will_be_dead_lettered() -> None:
    error = RetriableError("S3: connection refused")
    assert hand_back_line("LSSTCam g1 det094", error, 2, 5, 20.0) == (
        "LSSTCam g1 det094 not final (RetriableError('S3: connection refused')); handed back, retried in 20.0 s "
        "(attempt 3 of 5)"
    )
    assert hand_back_line("LSSTCam g1 det094", error, 5, 5, 80.0) == (
        "LSSTCam g1 det094 not final (RetriableError('S3: connection refused')) after attempt 5 of 5; handed back, "
        "dead-lettered when next claimed (max_deliveries reached)"
    )
