"""One activator's side of an instrument stream: claim, read, acknowledge, dead-letter, hand back.

Delivery guarantee (stream -> activator): at least once.

The stream, group, reclaim time and delivery cap come from the ``QueueContract`` the autoscaler
created the activator run with, so both count the same entries as abandoned.

* An entry is acknowledged only with its final outcome (``finish``), in the same atomic step
  that records the outcome in the results stream.
* While an activator works on an entry it refreshes its claim (``holding``), so a long wait for
  images does not look like a dead activator. An entry an activator holds when it dies stays pending
  and is reclaimed by any activator once idle for ``claim_idle_s`` (XAUTOCLAIM).
* One owner at a time: refreshing, handing back and finishing an entry each check, atomically in a
  server-side script (``activator.scripts``), that this activator still owns it; one that lost it
  does nothing. An activator that could not refresh its claim for ``LEASE_SAFETY`` x
  ``claim_idle_s`` (Redis unreachable) counts it as lost before anyone can reclaim it: its
  ``Lease`` says so, and the visit's steps stop before publishing (``Lease.check``).
* Every delivery is a real attempt and counts: an entry delivered more than ``max_deliveries``
  times goes to ``instrument:<name>:dead-letter`` with the reason instead of being processed again.
* Backoff: an attempt that failed retriably is handed back to a parking consumer so that it becomes
  reclaimable, by any activator, ``retry_delay_s`` x 2^(attempt - 1) later (jittered, at most
  ``claim_idle_s``): an outage of a minute or so is outlasted, not burnt through.
* An activator that stops cleanly hands its pending entries back at once (idle past
  ``claim_idle_s``) and deletes its consumer name.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis

from prompt_processing.activator.scripts import QueueScripts
from prompt_processing.adapters.results import result_fields, results_minid
from prompt_processing.adapters.retry import retrying
from prompt_processing.model import naming
from prompt_processing.model.errors import VisitError
from prompt_processing.model.events import EventError, FanOutEntry
from prompt_processing.model.failures import is_transient, redis_code
from prompt_processing.model.queue_contract import QueueContract
from prompt_processing.settings import RetrySettings

log = logging.getLogger(__name__)

LEASE_SAFETY = 0.8
"""An entry not refreshed for this share of ``claim_idle_s`` counts as lost to its holder (another
activator may reclaim it at 1.0)."""
BACKOFF_JITTER = 0.2
"""Each retry delay is scaled by a random factor in [1 - this, 1 + this]."""


class LeaseLost(VisitError):
    """This activator no longer owns the entry: another one may be processing it. Neither final
    nor retried here: the work stops, nothing is published or recorded by this activator."""


class Lease:
    """What an activator knows of its claim on the entry in hand (see ``WorkQueue.holding``)."""

    def __init__(self, entry_id: str) -> None:
        self.entry_id = entry_id
        self.lost = threading.Event()

    def check(self) -> None:
        """Raise ``LeaseLost`` if the entry may be another activator's by now."""
        if self.lost.is_set():
            raise LeaseLost(f"entry {self.entry_id} was lost to another activator (claim not refreshed in time)")


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
        results_retention_s: float, retry: RetrySettings | None = None,
    ) -> None:  # fmt: skip
        self.client = client
        self.instrument = instrument
        self.consumer = consumer
        self.stream = contract.stream
        self.group = contract.consumer_group
        self._claim_idle_ms = int(contract.claim_idle_s * 1000)
        self._retry_delay_ms = int(contract.retry_delay_s * 1000)
        self._block_ms = max(1, int(block_s * 1000))
        self.max_deliveries = contract.max_deliveries
        self._results_retention_s = results_retention_s
        self._scripts = QueueScripts(client)
        self._retry = retry or RetrySettings()

    def ensure_group(self) -> None:
        """Create the group at ``$`` if it (or the stream) is missing; an existing one is kept."""
        try:
            self.client.xgroup_create(self.stream, self.group, id="$", mkstream=True)
        except redis.ResponseError as exc:
            if redis_code(exc) != "BUSYGROUP":
                raise

    def next(self) -> WorkItem | None:
        """A stale entry of a dead activator if any, else a new one (blocking up to ``block_s``); None
        also while Redis is unreachable (after a pause of ``block_s``: the caller's idle clock runs on)."""
        try:
            return self._next()
        except redis.RedisError as exc:
            if not is_transient(exc):
                raise
            log.warning("%s: Redis unavailable (%s); trying again", self.stream, exc)
            time.sleep(self._block_ms / 1000)
            return None

    def persistently[T](self, what: str, call: Callable[[], T]) -> T:
        """``call`` retried on Redis outages (``PP_RETRY__*``) for up to ``LEASE_SAFETY`` x ``claim_idle_s``,
        while the entry in hand can still be this activator's; then the last error is raised."""
        deadline = time.monotonic() + LEASE_SAFETY * self._claim_idle_ms / 1000
        policy = retrying(self._retry, f"{what} on {self.stream}", give_up=lambda: time.monotonic() > deadline)
        return policy(call)

    def _next(self) -> WorkItem | None:
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
            if redis_code(exc) != "NOGROUP":
                raise
            log.warning("%s lost its group; recreating it", self.stream)
            self.ensure_group()
            return None
        if not reply:
            return None
        entry_id, fields = reply[0][1][0]
        return self._admit(_text(entry_id), fields, 1)

    def finish(self, item: WorkItem, outcome: dict[str, Any]) -> bool:
        """Record ``item``'s outcome in the results stream and acknowledge it, atomically, if this
        activator still owns it; False (nothing done) if another one took it over."""
        args = [self.group, self.consumer, item.entry_id, results_minid(self._results_retention_s)]
        for key, value in result_fields(outcome).items():
            args += [key, value]
        done = bool(self._scripts.finish(keys=[self.stream, naming.results_stream(self.instrument)], args=args))
        if not done:
            log.warning("%s %s was taken over by another activator; this outcome is not recorded",
                        self.stream, item.entry_id)  # fmt: skip
        return done

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

        (XCLAIM with JUSTID, inside the ownership check: not a delivery.)
        """
        return bool(self._scripts.touch(keys=[self.stream], args=[self.group, self.consumer, entry_id]))

    @contextmanager
    def holding(self, item: WorkItem) -> Iterator[Lease]:
        """Keep ``item`` fresh (``touch`` every ``claim_idle_s / 5``) while the block runs, so a long
        wait for images is never mistaken for a dead activator. The ``Lease`` yielded turns lost when
        the entry was taken over, or could not be refreshed for ``LEASE_SAFETY`` x ``claim_idle_s``."""
        stop, lease = threading.Event(), Lease(item.entry_id)
        refreshed = time.monotonic()

        def beat() -> None:
            nonlocal refreshed
            while not stop.wait(self._claim_idle_ms / 5000):
                try:
                    if not self.touch(item.entry_id):
                        log.warning("%s %s was taken by another activator", self.stream, item.entry_id)
                        lease.lost.set()
                        return
                    refreshed = time.monotonic()
                except redis.RedisError as exc:
                    log.warning("could not refresh %s %s: %s", self.stream, item.entry_id, exc)
                    if time.monotonic() - refreshed > LEASE_SAFETY * self._claim_idle_ms / 1000:
                        log.error("%s %s not refreshed for %.0f s: counted as lost", self.stream, item.entry_id,
                                  time.monotonic() - refreshed)  # fmt: skip
                        lease.lost.set()
                        return

        thread = threading.Thread(target=beat, name=f"hold-{item.entry_id}", daemon=True)
        thread.start()
        try:
            yield lease
        finally:
            stop.set()
            thread.join()

    def retry_delay_s(self, deliveries: int) -> float:
        """How long an entry whose attempt number ``deliveries`` failed waits before the next attempt."""
        base_ms = min(self._retry_delay_ms * 2.0 ** max(deliveries - 1, 0), self._claim_idle_ms)
        jittered_ms = base_ms * random.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)
        return min(jittered_ms, self._claim_idle_ms) / 1000

    def hand_back(self, entry_ids: list[Any] | None = None, *, delays_s: list[float] | None = None) -> int:
        """Give this activator's pending entries (or ``entry_ids``) to the parking consumer, reclaimable by
        any activator after ``delays_s`` (default: at once); entries no longer ours are left alone.
        Returns how many were handed back."""
        if entry_ids is None:
            pending = self.client.xpending_range(self.stream, self.group, "-", "+", 10_000, consumername=self.consumer)
            entry_ids = [_text(p["message_id"]) for p in pending]  # type: ignore[arg-type]
        if not entry_ids:
            return 0
        delays_s = delays_s or [0.0] * len(entry_ids)
        args: list[Any] = [self.group, self.consumer, naming.PARKING_CONSUMER]
        for entry_id, delay_s in zip(entry_ids, delays_s, strict=True):
            args += [entry_id, max(self._claim_idle_ms - int(delay_s * 1000), 0) + 1]
        return int(self._scripts.hand_back(keys=[self.stream], args=args))

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
            if redis_code(exc) == "NOGROUP":
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
        if deliveries > self.max_deliveries:
            self.dead_letter(entry_id, fields, f"delivered {deliveries} times (max_deliveries={self.max_deliveries})")
            return None
        try:
            entry = FanOutEntry.from_fields(fields)
        except EventError as exc:
            self.dead_letter(entry_id, fields, str(exc))
            return None
        return WorkItem(entry_id, entry, deliveries)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
