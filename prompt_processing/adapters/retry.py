"""The one retry policy for calls to Redis, Kafka, S3, the databases and the Prefect API (tenacity).

A call is retried only when ``model.failures`` classes its error as transient (an outage: never
a permanent answer or a refusal of our configuration, never by reading a message). The pause
starts at ``RetrySettings.first_delay_s``, doubles up to ``max_delay_s``, plus a random jitter of
up to ``jitter_s`` so that many clients do not retry in step. It stops after ``attempts`` tries
(``None``: until the call succeeds) or as soon as ``give_up()`` is true, and then re-raises the last
error unchanged, so the caller decides what a final failure means. Each pause is logged with what
failed and why; an ``OutageWatch`` given to it learns of every failure and recovery.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tenacity

from prompt_processing.model.failures import Failure, classify, is_transient
from prompt_processing.settings import RetrySettings

log = logging.getLogger(__name__)


def retrying(
    policy: RetrySettings,
    what: str,
    *,
    attempts: int | None = None,
    give_up: Callable[[], bool] | None = None,
    watch: OutageWatch | None = None,
) -> tenacity.Retrying:
    """A ``tenacity.Retrying`` for ``what``: call it with the function to retry, ``r(fn, *args)``."""
    return tenacity.Retrying(**_policy(policy, what, attempts, give_up, watch))


def async_retrying(
    policy: RetrySettings,
    what: str,
    *,
    attempts: int | None = None,
    give_up: Callable[[], bool] | None = None,
    watch: OutageWatch | None = None,
) -> tenacity.AsyncRetrying:
    """The same policy for a coroutine function: ``await r(fn, *args)``; its pauses do not block the loop."""
    return tenacity.AsyncRetrying(**_policy(policy, what, attempts, give_up, watch))


def _policy(
    policy: RetrySettings, what: str, attempts: int | None, give_up: Callable[[], bool] | None,
    watch: OutageWatch | None,
) -> dict[str, Any]:  # fmt: skip
    stops: list[tenacity.stop.stop_base] = [
        tenacity.stop_never if attempts is None else tenacity.stop_after_attempt(attempts)
    ]
    if give_up is not None:
        stops.append(_StopWhen(give_up))
    wait: tenacity.wait.wait_base = tenacity.wait_exponential(multiplier=policy.first_delay_s, max=policy.max_delay_s)
    if policy.jitter_s > 0:
        wait = wait + tenacity.wait_random(0, policy.jitter_s)
    return {"retry": tenacity.retry_if_exception(is_transient), "wait": wait, "stop": tenacity.stop_any(*stops),
            "reraise": True, "before_sleep": _log_pause(what, attempts, watch)}  # fmt: skip


@dataclass
class _Failing:
    since: float  # monotonic
    error: str
    failure: Failure
    alarmed: bool = False


class OutageWatch:
    """What keeps failing in one process, for its health record.

    A call that has failed for longer than ``alarm_after_s`` (or was refused for our configuration:
    at once, though the caller does not retry that) is an outage: one ERROR line says so,
    ``healthy`` turns false (``pp <service> --check`` then fails) while the caller keeps retrying
    at the capped interval, and one line says when it recovered. Safe to share between threads.
    """

    def __init__(self, alarm_after_s: float) -> None:
        self.alarm_after_s = alarm_after_s
        self._failing: dict[str, _Failing] = {}
        self._lock = threading.Lock()

    def failed(self, what: str, exc: BaseException) -> None:
        """``what`` failed with ``exc`` (and will be tried again)."""
        now = time.monotonic()
        with self._lock:
            failing = self._failing.setdefault(what, _Failing(now, "", Failure.TRANSIENT))
            failing.error, failing.failure = f"{type(exc).__name__}: {exc!s:.300}", classify(exc)
            down_s = now - failing.since
            alarm = not failing.alarmed and (down_s >= self.alarm_after_s or failing.failure is Failure.CONFIGURATION)
            failing.alarmed = failing.alarmed or alarm
        if alarm:
            log.error("OUTAGE: %s failing for %.1f s (%s, %s); still retrying, health reports unhealthy",
                      what, down_s, failing.failure, failing.error)  # fmt: skip

    def recovered(self, what: str) -> None:
        """``what`` succeeded."""
        with self._lock:
            failing = self._failing.pop(what, None)
        if failing is not None and failing.alarmed:
            log.warning("RECOVERED: %s works again after %.1f s", what, time.monotonic() - failing.since)

    @property
    def healthy(self) -> bool:
        with self._lock:
            return not any(f.alarmed for f in self._failing.values())

    def snapshot(self) -> dict[str, Any]:
        """``{"healthy": bool, "outages": {what: {"for_s", "kind", "error"}}}`` for the health record."""
        now = time.monotonic()
        with self._lock:
            outages = {what: {"for_s": round(now - f.since, 1), "kind": str(f.failure), "error": f.error}
                       for what, f in self._failing.items() if f.alarmed}  # fmt: skip
        return {"healthy": not outages, "outages": outages}


class _StopWhen(tenacity.stop.stop_base):
    """Stop as soon as ``predicate()`` is true (say, the service was asked to exit)."""

    def __init__(self, predicate: Callable[[], bool]) -> None:
        self._predicate = predicate

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self._predicate()


def _log_pause(
    what: str, attempts: int | None, watch: OutageWatch | None
) -> Callable[[tenacity.RetryCallState], None]:
    def log_pause(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        pause_s = state.next_action.sleep if state.next_action is not None else 0.0
        of = f" of {attempts}" if attempts is not None else ""
        if watch is not None and error is not None:
            watch.failed(what, error)
        log.warning("%s failed (%s: %s); try %d%s again in %.2f s", what, type(error).__name__, error,
                    state.attempt_number + 1, of, pause_s)  # fmt: skip

    return log_pause
