"""The lifecycle every long-running service here shares (uvicorn's shape).

``serve(service)``: ``startup()`` -> ``tick()`` until ``should_exit`` -> ``shutdown()``.

Guarantees:

* SIGTERM and SIGINT only set the service's exit flag (``request_exit``); the tick in progress
  finishes, then ``shutdown()`` runs, also after an error in a tick. A second signal while
  stopping exits at once (status 130): whatever was not committed is redelivered later.
* The signal handlers that were installed before ``serve`` are restored when it returns.
* ``shutdown_deadline`` bounds a shutdown: past its deadline the process exits (status 70), so a
  stop always ends before Kubernetes' termination grace period.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Protocol

log = logging.getLogger(__name__)

EXIT_FORCED = 130
EXIT_SHUTDOWN_OVERRAN = 70
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Servable(Protocol):
    """A long-running service: ``startup()`` -> ``tick()`` until ``should_exit`` -> ``shutdown()``."""

    should_exit: bool

    def startup(self) -> None: ...
    def tick(self) -> object: ...
    def shutdown(self) -> None: ...
    def request_exit(self) -> None: ...


def serve(service: Servable) -> int:
    """Run ``service`` until SIGTERM/SIGINT; return the process exit code (0)."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if service.should_exit:
            log.warning("signal %d again: exiting now; uncommitted work is redelivered", signum)
            os._exit(EXIT_FORCED)
        log.info("signal %d: finishing the work in hand, then exiting (again to force)", signum)
        service.request_exit()

    previous = {sig: signal.signal(sig, on_signal) for sig in _SIGNALS}
    try:
        service.startup()
        try:
            while not service.should_exit:
                service.tick()
        finally:
            service.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


@contextmanager
def shutdown_deadline(deadline_s: float) -> Iterator[None]:
    """Exit the process (status 70) if the block is still running after ``deadline_s``."""

    def overran() -> None:
        log.error("shutdown overran its %.0f s deadline; exiting (uncommitted work is redelivered)", deadline_s)
        os._exit(EXIT_SHUTDOWN_OVERRAN)

    watchdog = threading.Timer(deadline_s, overran)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()
