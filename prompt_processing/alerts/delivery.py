"""What became of each alert a process produced, by key (its DiaSource id).

librdkafka keeps retrying a message until it is confirmed or ``message.timeout.ms`` passes, and
reports the outcome through a delivery callback. A publish step that gave up waiting and was
retried must not produce again what is still in that queue: it waits for it instead. So each key
is ``pending`` from ``produce`` until its report, then ``confirmed`` or forgotten (failed: it may
be sent again). Thread-safe: delivery callbacks run in whichever thread polls the producer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import Producer

PENDING, CONFIRMED = "pending", "confirmed"


class AlertDeliveries:
    """The outcome of each alert produced by this process and not yet recorded in the ledger."""

    def __init__(self) -> None:
        self._state: dict[str, str] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()

    def in_hand(self, key: str) -> bool:
        """Produced by this process and pending or confirmed: not to be produced again."""
        with self._lock:
            return key in self._state

    def confirmed(self, key: str) -> bool:
        with self._lock:
            return self._state.get(key) == CONFIRMED

    def produced(self, key: str) -> Callable[[Any, Any], None]:
        """Mark ``key`` pending; the delivery callback to give ``produce``."""
        with self._lock:
            self._state[key] = PENDING
            self._errors.pop(key, None)

        def on_delivery(err: Any, _msg: Any) -> None:
            with self._lock:
                if err is None:
                    self._state[key] = CONFIRMED
                else:
                    self._state.pop(key, None)
                    self._errors[key] = str(err)

        return on_delivery

    def wait(self, producer: Producer, keys: Iterable[str], timeout_s: float) -> bool:
        """Poll ``producer`` until none of ``keys`` is pending or ``timeout_s`` passed; True if none is."""
        wanted, deadline = list(keys), time.monotonic() + timeout_s
        while True:
            with self._lock:
                pending = any(self._state.get(k) == PENDING for k in wanted)
            if not pending:
                return True
            if time.monotonic() >= deadline:
                return False
            producer.flush(min(0.5, max(deadline - time.monotonic(), 0.0)))

    def errors(self, keys: Iterable[str]) -> dict[str, str]:
        """The failures reported for ``keys`` (each may be sent again)."""
        with self._lock:
            return {k: self._errors[k] for k in keys if k in self._errors}

    def forget(self, keys: Iterable[str]) -> None:
        """Drop ``keys`` (recorded in the ledger: it answers for them from now on)."""
        with self._lock:
            for key in keys:
                if self._state.get(key) != PENDING:
                    self._state.pop(key, None)
                self._errors.pop(key, None)
