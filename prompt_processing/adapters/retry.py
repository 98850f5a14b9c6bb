"""The one retry policy for calls to Redis, Kafka, S3 and the Prefect API (tenacity).

A call is retried only on the exception types the caller names (never by reading a message);
the pause starts at ``RetrySettings.first_delay_s`` and doubles up to ``max_delay_s``. It stops
after ``attempts`` tries (``None``: until the call succeeds) or as soon as ``give_up()`` is true,
and then re-raises the last error unchanged, so the caller decides what a final failure means.
Each pause is logged with what failed and why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import tenacity

from prompt_processing.settings import RetrySettings

log = logging.getLogger(__name__)


def retrying(
    policy: RetrySettings,
    what: str,
    *,
    retry_on: tuple[type[BaseException], ...],
    attempts: int | None = None,
    give_up: Callable[[], bool] | None = None,
) -> tenacity.Retrying:
    """A ``tenacity.Retrying`` for ``what``: call it with the function to retry, ``r(fn, *args)``."""
    stops: list[tenacity.stop.stop_base] = [
        tenacity.stop_never if attempts is None else tenacity.stop_after_attempt(attempts)
    ]
    if give_up is not None:
        stops.append(_StopWhen(give_up))
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(retry_on),
        wait=tenacity.wait_exponential(multiplier=policy.first_delay_s, max=policy.max_delay_s),
        stop=tenacity.stop_any(*stops),
        reraise=True,
        before_sleep=_log_pause(what, attempts),
    )


class _StopWhen(tenacity.stop.stop_base):
    """Stop as soon as ``predicate()`` is true (say, the service was asked to exit)."""

    def __init__(self, predicate: Callable[[], bool]) -> None:
        self._predicate = predicate

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self._predicate()


def _log_pause(what: str, attempts: int | None) -> Callable[[tenacity.RetryCallState], None]:
    def log_pause(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        pause_s = state.next_action.sleep if state.next_action is not None else 0.0
        of = f" of {attempts}" if attempts is not None else ""
        log.warning("%s failed (%s: %s); try %d%s again in %.2f s", what, type(error).__name__, error,
                    state.attempt_number + 1, of, pause_s)  # fmt: skip

    return log_pause
