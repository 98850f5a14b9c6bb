"""The shared service lifecycle and retry policy (pure logic and signals; no services needed)."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from prompt_processing.adapters.retry import retrying
from prompt_processing.services.lifecycle import EXIT_FORCED, serve
from prompt_processing.settings import RetrySettings

FAST = RetrySettings(first_delay_s=0.001, max_delay_s=0.004, jitter_s=0)


class Counting:
    """A service that asks to stop after ``ticks`` ticks and records its lifecycle."""

    def __init__(self, ticks: int) -> None:
        self.should_exit = False
        self.calls: list[str] = []
        self._left = ticks

    def startup(self) -> None:
        self.calls.append("startup")

    def tick(self) -> None:
        self.calls.append("tick")
        self._left -= 1
        if not self._left:
            self.request_exit()

    def shutdown(self) -> None:
        self.calls.append("shutdown")

    def request_exit(self) -> None:
        self.should_exit = True


def test_serve_runs_the_lifecycle_and_restores_the_signal_handlers() -> None:
    def mine(_signum: int, _frame: object) -> None:
        return None

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        service = Counting(ticks=3)
        assert serve(service) == 0
        assert service.calls == ["startup", "tick", "tick", "tick", "shutdown"]
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_first_signal_stops_gracefully_a_second_one_forces_the_exit() -> None:
    script = textwrap.dedent("""
        import sys, time
        from prompt_processing.services.lifecycle import serve

        class Slow:
            should_exit = False
            def startup(self): print("up", flush=True)
            def tick(self): time.sleep(0.05)
            def shutdown(self): print("stopping", flush=True); time.sleep(30)
            def request_exit(self): self.should_exit = True

        sys.exit(serve(Slow()))
    """)
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None and child.stdout.readline() == "up\n"
            child.send_signal(signal.SIGTERM)
            assert child.stdout.readline() == "stopping\n"  # graceful: the shutdown began
            started = time.monotonic()
            child.send_signal(signal.SIGTERM)
            assert child.wait(10) == EXIT_FORCED
            assert time.monotonic() - started < 10  # not the 30 s the shutdown would have taken
        finally:
            if child.poll() is None:
                child.kill()


def test_retry_policy_retries_only_transient_errors_and_stops_after_the_attempts() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "ok"

    assert retrying(FAST, "flaky", attempts=3)(flaky) == "ok"
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(ConnectionError, match="down"):
        retrying(FAST, "flaky", attempts=2)(flaky)
    assert len(calls) == 2
    calls.clear()

    def bad() -> None:
        calls.append(1)
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        retrying(FAST, "bad")(bad)
    assert len(calls) == 1  # permanent: no second try


def test_retry_policy_gives_up_when_asked_and_backs_off_up_to_the_cap() -> None:
    calls: list[float] = []

    def down() -> None:
        calls.append(time.monotonic())
        raise ConnectionRefusedError("still down")

    with pytest.raises(OSError, match="still down"):
        retrying(RetrySettings(first_delay_s=0.01, max_delay_s=0.02, jitter_s=0), "down",
                 give_up=lambda: len(calls) >= 5)(down)  # fmt: skip
    pauses = [b - a for a, b in itertools.pairwise(calls)]
    assert len(calls) == 5
    assert 0.01 <= pauses[0] < pauses[-1] + 0.005 and all(p < 0.1 for p in pauses)


SUPERVISOR = textwrap.dedent("""
    import sys
    from prompt_processing.services.lifecycle import supervise

    child = ("import signal, time; signal.signal(signal.SIGTERM, signal.{disposition}); "
             "print('ready', flush=True); time.sleep(60)")
    print("status", supervise([sys.executable, "-c", child], {{}}, shutdown_deadline_s=1.0), flush=True)
""")


@pytest.mark.parametrize(("disposition", "status"), [("SIG_DFL", -signal.SIGTERM), ("SIG_IGN", -signal.SIGKILL)])
def test_supervise_passes_signals_on_and_kills_a_child_that_does_not_stop(disposition: str, status: int) -> None:
    script = SUPERVISOR.format(disposition=disposition)
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as parent:
        try:
            assert parent.stdout is not None and parent.stdout.readline() == "ready\n"
            started = time.monotonic()
            parent.send_signal(signal.SIGTERM)
            assert parent.stdout.readline() == f"status {status}\n"
            assert parent.wait(10) == 0
            assert time.monotonic() - started < 5  # the ignoring child is killed after the 1 s deadline
        finally:
            if parent.poll() is None:
                parent.kill()
