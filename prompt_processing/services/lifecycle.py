"""The lifecycle every long-running service here shares (uvicorn's shape).

``serve(service)``: ``startup()`` -> ``tick()`` until ``should_exit`` -> ``shutdown()``.

Guarantees:

* SIGTERM and SIGINT only set the service's exit flag (``request_exit``); the tick in progress
  finishes, then ``shutdown()`` runs, also after an error in a tick. A second signal while
  stopping exits at once (status 130): whatever was not committed is redelivered later.
* The signal handlers that were installed before ``serve`` are restored when it returns.
* ``shutdown_deadline`` bounds a shutdown: past its deadline the process exits (status 70), so a
  stop always ends before Kubernetes' termination grace period.
* ``supervise`` runs a program as a child the same way: SIGTERM/SIGINT are passed on to it, and
  it is killed if it has not exited within the deadline after the first one.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
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


def supervise(command: Sequence[str], env: dict[str, str], *, shutdown_deadline_s: float, name: str = "") -> int:
    """Run ``command`` as a child in its own process group until it exits; return its exit status.

    SIGTERM and SIGINT received here are passed on to the child (once each: being in its own group,
    it does not also get the terminal's Ctrl-C). If it is still running ``shutdown_deadline_s``
    after the first of them, it is killed (SIGKILL) and the status is ``-9``. The previous signal
    handlers are restored on return.
    """
    child = subprocess.Popen(list(command), env=env, process_group=0)
    name = name or command[0]
    stop_requested_at: list[float] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if not stop_requested_at:
            stop_requested_at.append(time.monotonic())
        log.info("signal %d: passed on to %s (pid %d)", signum, name, child.pid)
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in _SIGNALS}
    try:
        while True:
            try:
                return child.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                if stop_requested_at and time.monotonic() - stop_requested_at[0] > shutdown_deadline_s:
                    log.error("%s did not stop within %.0f s; killing it", name, shutdown_deadline_s)
                    child.kill()
                    return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
