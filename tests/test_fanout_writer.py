"""The fan-out's writer (``adapters.streams.StreamFanOut``, one server-side script) against the session's
real Redis, as the services' ACL user; the fixtures' administrator client inspects and breaks things."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
import redis

from prompt_processing.adapters.redis_client import make_redis
from prompt_processing.adapters.streams import FAN_OUT, StreamFanOut
from prompt_processing.model import naming
from prompt_processing.model.events import FanOutEntry, NextVisit
from prompt_processing.model.failures import Failure, classify, redis_code
from prompt_processing.settings import Settings
from tests.helpers import visit_body

STREAM, GROUP = naming.stream_name("LATISS"), naming.consumer_group("LATISS")
DETECTORS = (0, 1, 2, 3)


def _visit(group_id: str) -> NextVisit:
    return NextVisit.from_json(json.dumps(visit_body("LATISS", group_id)))


@pytest.fixture
def service_client(stack_settings: Settings, redis_client: redis.Redis) -> Iterator[redis.Redis]:
    """A client as the services build theirs (the ACL user), on a clean database (``redis_client`` flushed it)."""
    client = make_redis(stack_settings.redis, stack_settings.retry, name="test-writer")
    yield client
    client.close()


def _writer(client: redis.Redis, *, stream_maxlen: int = 10_000) -> StreamFanOut:
    return StreamFanOut(client, dedup_ttl_s=600, stream_maxlen=stream_maxlen)


def _read_new(client: redis.Redis) -> list[tuple[str, int]]:
    """What a consumer of the group gets that it never got: (groupId, detector) per entry."""
    reply = client.xreadgroup(GROUP, "reader", {STREAM: ">"}, count=1000)
    entries = [FanOutEntry.from_fields(fields) for _id, fields in reply[0][1]] if reply else []
    return [(e.visit.groupId, e.detector) for e in entries]


def test_one_entry_per_detector_and_the_record_once(service_client: redis.Redis, redis_client: redis.Redis) -> None:
    writer, visit = _writer(service_client), _visit("g-once")
    assert writer.write(visit, "LATISS", DETECTORS) == len(DETECTORS)
    assert writer.write(visit, "LATISS", DETECTORS) == 0  # a redelivery adds nothing

    assert _read_new(redis_client) == [("g-once", d) for d in DETECTORS]
    key = naming.visit_key("LATISS", "g-once")
    assert NextVisit.model_validate_json(redis_client.get(key) or b"") == visit  # the record reruns read back
    assert 590 < redis_client.ttl(key) <= 600


def test_two_concurrent_writers_of_a_visit_add_its_entries_once(
    stack_settings: Settings, service_client: redis.Redis, redis_client: redis.Redis
) -> None:
    """Two fan-outs (two clients, two threads) write the same 30 visits at the same moments."""
    visits = [_visit(f"g-race-{i}") for i in range(30)]
    barrier = threading.Barrier(2, timeout=10)
    written: dict[str, list[int]] = {"a": [], "b": []}

    def fan_out(name: str) -> None:
        client = make_redis(stack_settings.redis, stack_settings.retry, name=f"test-race-{name}")
        try:
            writer = _writer(client)
            writer.load()
            for visit in visits:
                barrier.wait()
                written[name].append(writer.write(visit, "LATISS", DETECTORS))
        finally:
            client.close()

    threads = [threading.Thread(target=fan_out, args=(name,)) for name in written]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    assert len(written["a"]) == len(written["b"]) == len(visits)
    assert all(sorted(pair) == [0, len(DETECTORS)] for pair in zip(written["a"], written["b"], strict=True))
    expected = [(v.groupId, d) for v in visits for d in DETECTORS]
    assert sorted(_read_new(redis_client)) == sorted(expected)


def test_a_stream_key_of_the_wrong_type_fails_the_write_and_writes_nothing(
    service_client: redis.Redis, redis_client: redis.Redis
) -> None:
    writer, visit = _writer(service_client), _visit("g-wrongtype")
    redis_client.set(STREAM, "not a stream")
    with pytest.raises(redis.ResponseError) as raised:
        writer.write(visit, "LATISS", DETECTORS)
    assert redis_code(raised.value) == "WRONGTYPE"
    assert classify(raised.value) is Failure.PERMANENT  # the fan-out dead-letters the message
    assert redis_client.exists(naming.visit_key("LATISS", "g-wrongtype")) == 0  # no record: a retry is not a duplicate
    assert redis_client.get(STREAM) == b"not a stream"

    redis_client.delete(STREAM)  # an operator fixes it; the message replayed from the dead-letter topic
    assert writer.write(visit, "LATISS", DETECTORS) == len(DETECTORS)
    assert _read_new(redis_client) == [("g-wrongtype", d) for d in DETECTORS]


def test_a_lost_group_is_recreated_at_the_end_of_the_stream(
    service_client: redis.Redis, redis_client: redis.Redis
) -> None:
    writer = _writer(service_client)
    assert writer.write(_visit("g-before"), "LATISS", DETECTORS) == len(DETECTORS)
    redis_client.xgroup_destroy(STREAM, GROUP)  # the group is lost; its entries stay in the stream

    assert writer.write(_visit("g-after"), "LATISS", DETECTORS) == len(DETECTORS)
    assert redis_client.xlen(STREAM) == 2 * len(DETECTORS)
    assert _read_new(redis_client) == [("g-after", d) for d in DETECTORS]  # created at $: no replay of g-before


def test_the_script_is_reloaded_after_redis_forgot_it(service_client: redis.Redis, redis_client: redis.Redis) -> None:
    writer = _writer(service_client)
    writer.load()
    assert redis_client.script_exists(_sha(redis_client)) == [True]  # loaded at start-up
    assert writer.write(_visit("g-1"), "LATISS", DETECTORS) == len(DETECTORS)

    redis_client.script_flush()  # as after a restart: the script cache is empty
    noscript_before = _noscript_errors(redis_client)
    assert writer.write(_visit("g-2"), "LATISS", DETECTORS) == len(DETECTORS)
    assert _noscript_errors(redis_client) == noscript_before + 1  # EVALSHA refused once, then loaded and run
    assert redis_client.script_exists(_sha(redis_client)) == [True]
    assert [g for g, _d in _read_new(redis_client)] == ["g-1"] * len(DETECTORS) + ["g-2"] * len(DETECTORS)


def test_out_of_memory_refuses_the_script_before_it_runs(
    service_client: redis.Redis, redis_client: redis.Redis
) -> None:
    """The script's ``#!lua`` line declares it a writer: at ``maxmemory`` Redis refuses it whole."""
    writer, visit = _writer(service_client), _visit("g-oom")
    writer.load()
    redis_client.config_set("maxmemory", 1)
    try:
        with pytest.raises(redis.ResponseError) as raised:
            writer.write(visit, "LATISS", DETECTORS)
    finally:
        redis_client.config_set("maxmemory", 0)
    assert redis_code(raised.value) == "OOM"
    assert redis_client.exists(STREAM, naming.visit_key("LATISS", "g-oom")) == 0
    assert writer.write(visit, "LATISS", DETECTORS) == len(DETECTORS)


def test_the_stream_is_capped_approximately(service_client: redis.Redis, redis_client: redis.Redis) -> None:
    writer = _writer(service_client, stream_maxlen=100)
    for i in range(5):
        assert writer.write(_visit(f"g-cap-{i}"), "LATISS", tuple(range(100))) == 100
    # MAXLEN ~ trims whole radix-tree nodes (100 entries each by default): at least 100 kept, far from 500.
    assert 100 <= redis_client.xlen(STREAM) < 300


def _sha(client: redis.Redis) -> str:
    return str(client.register_script(FAN_OUT).sha)


def _noscript_errors(client: redis.Redis) -> int:
    stats = client.info("errorstats")
    return int(stats.get("errorstat_NOSCRIPT", {}).get("count", 0))
