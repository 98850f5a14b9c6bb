"""The activator's side of a stream (claim, read, ack, dead-letter, hand back) on real Redis."""

from __future__ import annotations

import json
import time

import pytest
import redis

from pp_devkit.stack import free_port
from prompt_processing.activator.queue import LeaseLost, WorkQueue
from prompt_processing.adapters.redis_client import make_redis
from prompt_processing.model import naming
from prompt_processing.model.events import FanOutEntry, NextVisit
from prompt_processing.model.queue_contract import QueueContract
from prompt_processing.settings import QueueSettings, RedisSettings, RetrySettings
from tests.helpers import visit_body

STREAM, GROUP = naming.stream_name("LATISS"), naming.consumer_group("LATISS")


def _queue(
    client: redis.Redis, consumer: str, *, claim_idle_s: float = 30.0, max_deliveries: int = 3,
    retry_delay_s: float = 5.0,
) -> WorkQueue:  # fmt: skip
    contract = QueueContract.for_instrument(
        "LATISS", QueueSettings(claim_idle_s=claim_idle_s, max_deliveries=max_deliveries, retry_delay_s=retry_delay_s)
    )
    queue = WorkQueue(client, "LATISS", consumer, contract, block_s=0.1, results_retention_s=3600)
    queue.ensure_group()
    return queue


def _add(client: redis.Redis, group: str) -> str:
    visit = NextVisit.from_json(json.dumps(visit_body("LATISS", group)))
    return client.xadd(STREAM, FanOutEntry(visit=visit, detector=0).to_fields()).decode()  # type: ignore[union-attr]


def test_read_then_finish_acknowledges_and_records(redis_client: redis.Redis) -> None:
    queue = _queue(redis_client, "w1")
    entry_id = _add(redis_client, "g1")
    item = queue.next()
    assert item is not None and item.entry_id == entry_id and item.deliveries == 1
    assert item.entry.visit.groupId == "g1"
    assert abs(item.queued_at_ms / 1e3 - time.time()) < 5
    assert queue.finish(item, {"status": "succeeded", "detector": 0}) is True
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0
    ((_, record),) = redis_client.xrange(naming.results_stream("LATISS"))
    assert record[b"status"] == b"succeeded"
    assert queue.next() is None  # nothing left; returns after block_s


def test_a_dead_activators_entry_is_reclaimed_and_counted(redis_client: redis.Redis) -> None:
    dead = _queue(redis_client, "dead")
    _add(redis_client, "g2")
    assert dead.next() is not None  # taken, never finished: the activator "dies"
    alive = _queue(redis_client, "alive", claim_idle_s=0.2)
    assert alive.next() is None or alive.next() is None  # not idle long enough yet
    time.sleep(0.3)
    item = alive.next()
    assert item is not None and item.entry.visit.groupId == "g2" and item.deliveries == 2


def test_too_many_deliveries_go_to_the_dead_letter_stream(redis_client: redis.Redis) -> None:
    queue = _queue(redis_client, "w", claim_idle_s=0.05, max_deliveries=2)
    entry_id = _add(redis_client, "poison")
    assert queue.next() is not None  # delivery 1
    time.sleep(0.1)
    assert queue.next() is not None  # delivery 2 (reclaimed)
    time.sleep(0.1)
    assert queue.next() is None  # delivery 3 > max: dead-lettered, not returned
    ((_, record),) = redis_client.xrange(naming.dead_letter_stream("LATISS"))
    assert record[b"source_id"].decode() == entry_id
    assert b"delivered 3 times (max_deliveries=2)" in record[b"dead_letter_reason"]
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0


def test_clean_exit_hands_back_and_deletes_the_consumer(redis_client: redis.Redis) -> None:
    leaving = _queue(redis_client, "leaving")
    _add(redis_client, "g3")
    assert leaving.next() is not None
    assert leaving.close() == 1
    consumers = {c["name"].decode() for c in redis_client.xinfo_consumers(STREAM, GROUP)}
    assert "leaving" not in consumers
    item = _queue(redis_client, "next").next()  # claim_idle_s=30, yet handed-back entries come at once
    assert item is not None and item.entry.visit.groupId == "g3" and item.deliveries == 2


def test_a_malformed_entry_is_dead_lettered(redis_client: redis.Redis) -> None:
    queue = _queue(redis_client, "w")
    redis_client.xadd(STREAM, {"groupId": "no-detector"})
    assert queue.next() is None
    ((_, record),) = redis_client.xrange(naming.dead_letter_stream("LATISS"))
    assert b"not a fan-out entry" in record[b"dead_letter_reason"]


def test_group_lost_under_an_activator_is_recreated(redis_client: redis.Redis) -> None:
    queue = _queue(redis_client, "w")
    redis_client.delete(STREAM)
    assert queue.next() is None  # NOGROUP: recreated
    _add(redis_client, "g4")
    item = queue.next()
    assert item is not None and item.entry.visit.groupId == "g4"


def test_an_entry_being_worked_on_is_not_reclaimed(redis_client: redis.Redis) -> None:
    holder = _queue(redis_client, "holder", claim_idle_s=0.3)
    _add(redis_client, "long-wait")
    item = holder.next()
    assert item is not None
    other = _queue(redis_client, "other", claim_idle_s=0.3)
    with holder.holding(item) as lease:
        time.sleep(1.0)  # three claim_idle_s periods: without the heartbeat it would be reclaimed
        assert other.next() is None
        assert not lease.lost.is_set()
    time.sleep(0.4)
    reclaimed = other.next()  # once the holder stops refreshing, a dead holder's entry is reclaimed
    assert reclaimed is not None and reclaimed.entry_id == item.entry_id and reclaimed.deliveries == 2
    assert holder.touch(item.entry_id) is False  # no longer the holder's


def test_an_activator_that_lost_its_entry_can_neither_finish_nor_hand_it_back(redis_client: redis.Redis) -> None:
    """After a takeover (say the holder was cut off from Redis past claim_idle_s), only the new owner acts."""
    slow = _queue(redis_client, "slow", claim_idle_s=0.2)
    _add(redis_client, "taken-over")
    item = slow.next()
    assert item is not None
    time.sleep(0.3)
    fast = _queue(redis_client, "fast", claim_idle_s=0.2)
    taken = fast.next()
    assert taken is not None and taken.entry_id == item.entry_id
    assert slow.hand_back([item.entry_id]) == 0  # not ours: left with its owner
    assert slow.finish(item, {"status": "succeeded", "detector": 0}) is False
    assert redis_client.xlen(naming.results_stream("LATISS")) == 0  # nothing recorded for the loser
    (pending,) = redis_client.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert pending["consumer"] == b"fast"
    assert fast.finish(taken, {"status": "succeeded", "detector": 0}) is True
    assert redis_client.xlen(naming.results_stream("LATISS")) == 1


def test_a_holder_that_sees_its_entry_taken_marks_its_lease_lost(redis_client: redis.Redis) -> None:
    holder = _queue(redis_client, "holder", claim_idle_s=0.5)
    _add(redis_client, "stolen")
    item = holder.next()
    assert item is not None
    with holder.holding(item) as lease:
        redis_client.xclaim(STREAM, GROUP, "thief", 0, [item.entry_id], justid=True)
        deadline = time.monotonic() + 2
        while not lease.lost.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lease.lost.is_set()
        with pytest.raises(LeaseLost, match="lost to another activator"):
            lease.check()


def test_a_failed_attempt_comes_back_after_its_backoff_to_any_activator(redis_client: redis.Redis) -> None:
    first = _queue(redis_client, "first", claim_idle_s=30.0, retry_delay_s=0.5)
    _add(redis_client, "flaky")
    item = first.next()
    assert item is not None
    delay_s = first.retry_delay_s(item.deliveries)
    assert 0.4 <= delay_s <= 0.6  # 0.5 s +- 20 % jitter for the first attempt
    assert 1.6 <= first.retry_delay_s(3) <= 2.4 and 24.0 <= first.retry_delay_s(20) <= 30.0  # doubles; cap: claim_idle
    assert first.hand_back([item.entry_id], delays_s=[delay_s]) == 1
    other = _queue(redis_client, "other", claim_idle_s=30.0, retry_delay_s=0.5)
    assert other.next() is None  # still backing off (the read blocks 0.1 s)
    time.sleep(delay_s)
    again = other.next()
    assert again is not None and again.entry_id == item.entry_id and again.deliveries == 2


def test_with_redis_unreachable_next_waits_and_returns_nothing_and_persistent_calls_give_up() -> None:
    """An activator outlives a Redis outage: no work while it lasts (its idle clock runs), and a finish or
    hand-back is retried while the entry can still be its own (then the error is raised, for it to log)."""
    nowhere = make_redis(RedisSettings(port=free_port()), RetrySettings(redis_attempts=1), name="test")
    contract = QueueContract.for_instrument("LATISS", QueueSettings(claim_idle_s=0.5))
    queue = WorkQueue(nowhere, "LATISS", "w", contract, block_s=0.1, results_retention_s=60,
                      retry=RetrySettings(first_delay_s=0.01, max_delay_s=0.05, jitter_s=0))  # fmt: skip
    started = time.monotonic()
    assert queue.next() is None
    with pytest.raises(redis.ConnectionError):
        queue.persistently("finish", lambda: queue.hand_back(["1-0"]))
    assert 0.4 <= time.monotonic() - started < 5  # gave up after 0.8 x claim_idle_s, not at once, not never
