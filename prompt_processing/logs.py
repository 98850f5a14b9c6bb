"""How our processes log: one line per record, as text or as JSON (``PP_LOG_FORMAT``).

Text is ``time level logger: message`` and never wrapped, so a long line (an autoscaler decision)
stays one greppable line. JSON is one object per line with ``time``, ``level``, ``logger`` and
``message``, plus the structured fields a record carries: a visit-detector outcome's
(instrument, group, detector, outcome, reason, latency) under ``visit``, an autoscaler decision's
under ``decision``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from prompt_processing.settings import Settings

STRUCTURED_FIELDS = {"pp_visit": "visit", "pp_decision": "decision"}
"""``extra=`` names a record may carry -> their key in a JSON line."""
QUIET_LOGGERS = ("httpx", "httpcore")  # one line per Prefect API call otherwise


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for attribute, key in STRUCTURED_FIELDS.items():
            value = getattr(record, attribute, None)
            if value is not None:
                body[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


def formatter(settings: Settings) -> logging.Formatter:
    """The formatter ``settings.log_format`` asks for."""
    if settings.log_format == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")


def configure(settings: Settings, stream: TextIO = sys.stderr) -> None:
    """Root logging for a `pp` command: level and format from ``settings``, to ``stream``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(settings))
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
