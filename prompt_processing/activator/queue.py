"""One activator's side of an instrument stream: claim, read, acknowledge, dead-letter, hand back.

Delivery guarantee (stream -> activator): at least once.

The stream, group, reclaim time and delivery cap come from the ``QueueContract`` the autoscaler
created the activator run with, so both count the same entries as abandoned.

* An entry is acknowledged only with its final outcome (``finish``), in the same MULTI/EXEC
  that records the outcome in the results stream.
* While an activator works on an entry it refreshes its claim (``holding``), so a long wait for
  images does not look like a dead activator. An entry an activator holds when it dies stays pending
  and is reclaimed by any activator once idle for ``claim_idle_s`` (XAUTOCLAIM).
* Every delivery counts: an entry delivered more than ``max_deliveries`` times goes to
  ``instrument:<name>:dead-letter`` with the reason instead of being processed again.
* An activator that stops cleanly hands its pending entries to a parking consumer with their idle
  time set past ``claim_idle_s`` (reclaimed by the next read of any activator) and deletes its
  consumer name.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis

from prompt_processing.adapters.results import append_result
from prompt_processing.model import naming
from prompt_processing.model.events import EventError, FanOutEntry
from prompt_processing.model.queue_contract import QueueContract

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkItem:
    """One delivered entry."""

    entry_id: str
    entry: FanOutEntry
    deliveries: int

    @property
    def queued_at_ms(self) -> int:
        """When the fan-out added the entry (from the stream id), unix ms."""
        return int(self.entry_id.split("-")[0])


class WorkQueue:
    """A consumer called ``consumer`` of the instrument's stream, on the terms of ``contract``."""

    def __init__(
        self, client: redis.Redis, instrument: str, consumer: str, contract: QueueContract, *, block_s: float,
        results_retention_s: float,
    ) -> None:  # fmt: skip
        self.client = client
        self.instrument = instrument
        self.consumer = consumer
        self.stream = contract.stream
        self.group = contract.consumer_group
        self._claim_idle_ms = int(contract.claim_idle_s * 1000)
        self._block_ms = max(1, int(block_s * 1000))
        self._max_deliveries = contract.max_deliveries
        self._results_retention_s = results_retention_s

    def ensure_group(self) -> None:
        """Create the group at ``$`` if it (or the stream) is missing; an existing one is kept."""
        try:
            self.client.xgroup_create(self.stream, self.group, id="$", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def next(self) -> WorkItem | None:
        """A stale entry of a dead activator if any, else a new one (blocking up to ``block_s``)."""
        while True:
            claimed = self._claim_stale()
            if claimed is None:
                break
            item = self._admit(*claimed)
            if item is not None:
                return item
        try:
            reply: Any = self.client.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=1, block=self._block_ms
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("%s lost its group; recreating it", self.stream)
            self.ensure_group()
            return None
        if not reply:
            return None
        entry_id, fields = reply[0][1][0]
        return self._admit(_text(entry_id), fields, 1)

    def finish(self, item: WorkItem, outcome: dict[str, Any]) -> None:
        """Acknowledge ``item`` and append its outcome to the results stream, atomically."""
        pipe = self.client.pipeline(transaction=True)
        append_result(pipe, self.instrument, outcome, retention_s=self._results_retention_s)
        pipe.xack(self.stream, self.group, item.entry_id)
        pipe.execute()

    def dead_letter(self, entry_id: str, fields: dict[Any, Any], reason: str) -> None:
        """Move an entry to the dead-letter stream with ``reason`` and acknowledge it, atomically."""
        log.error("dead-letter %s %s: %s", self.stream, entry_id, reason)
        record: dict[Any, Any] = {_text(k): _text(v) for k, v in fields.items()} | {
            "dead_letter_reason": reason, "source_id": entry_id, "dead_lettered_at": str(time.time()),
        }  # fmt: skip
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(naming.dead_letter_stream(self.instrument), record)
        pipe.xack(self.stream, self.group, entry_id)
        pipe.execute()

    def touch(self, entry_id: str) -> bool:
        """Reset the idle time of an entry this activator holds; False if it is no longer ours.

        XCLAIM with JUSTID does not count as a delivery.
        """
        info = self.client.xpending_range(self.stream, self.group, entry_id, entry_id, 1)
        if not info or _text(info[0]["consumer"]) != self.consumer:  # type: ignore[arg-type]
            return False
        self.client.xclaim(self.stream, self.group, self.consumer, 0, [entry_id], justid=True)
        return True

    @contextmanager
    def holding(self, item: WorkItem) -> Iterator[None]:
        """Keep ``item`` fresh (``touch`` every ``claim_idle_s / 3``) while the block runs, so a
        long wait for images is never mistaken for a dead activator."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self._claim_idle_ms / 3000):
                try:
                    if not self.touch(item.entry_id):
                        log.warning("%s %s was taken by another activator", self.stream, item.entry_id)
                        return
                except redis.RedisError as exc:
                    log.warning("could not refresh %s %s: %s", self.stream, item.entry_id, exc)

        thread = threading.Thread(target=beat, name=f"hold-{item.entry_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def hand_back(self, entry_ids: list[Any] | None = None) -> int:
        """Give this activator's pending entries (or ``entry_ids``) to the parking consumer, idle enough
        to be reclaimed at once; return how many."""
        if entry_ids is None:
            pending = self.client.xpending_range(self.stream, self.group, "-", "+", 10_000, consumername=self.consumer)
            entry_ids = [_text(p["message_id"]) for p in pending]  # type: ignore[arg-type]
        if entry_ids:
            self.client.xclaim(
                self.stream, self.group, naming.PARKING_CONSUMER, 0, entry_ids,
                idle=self._claim_idle_ms + 1, justid=True,
            )  # fmt: skip
        return len(entry_ids)

    def close(self) -> int:
        """Hand back what is pending and delete this consumer name; return entries handed back."""
        handed = self.hand_back()
        self.client.xgroup_delconsumer(self.stream, self.group, self.consumer)
        return handed

    def _claim_stale(self) -> tuple[str, dict[Any, Any], int] | None:
        try:
            _next, entries, _deleted = self.client.xautoclaim(
                self.stream, self.group, self.consumer, self._claim_idle_ms, "0-0", count=1
            )
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):
                return None
            raise
        if not entries:
            return None
        entry_id, fields = _text(entries[0][0]), entries[0][1]
        info = self.client.xpending_range(self.stream, self.group, entry_id, entry_id, 1)
        deliveries = int(info[0]["times_delivered"]) if info else 1
        log.info("reclaimed %s %s (delivery %d)", self.stream, entry_id, deliveries)
        return entry_id, fields, deliveries

    def _admit(self, entry_id: str, fields: dict[Any, Any], deliveries: int) -> WorkItem | None:
        if deliveries > self._max_deliveries:
            self.dead_letter(entry_id, fields, f"delivered {deliveries} times (max_deliveries={self._max_deliveries})")
            return None
        try:
            entry = FanOutEntry.from_fields(fields)
        except EventError as exc:
            self.dead_letter(entry_id, fields, str(exc))
            return None
        return WorkItem(entry_id, entry, deliveries)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
