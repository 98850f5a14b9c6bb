"""The fan-out service against the real embedded Redis and Kafka-protocol broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import redis
from confluent_kafka import TopicPartition

from prompt_processing.adapters import kafka
from prompt_processing.model import naming
from prompt_processing.model.events import FanOutEntry, NextVisit
from prompt_processing.model.instruments import LSSTCAM_PRODUCTION_DISABLED
from prompt_processing.services.fanout import FanOutService, LatencyWindow
from prompt_processing.settings import Settings, export_env
from tests.helpers import RunningFanOut, consume_all, produce, visit_body, wait_for

LSSTCAM_ACTIVE = [d for d in range(189) if d not in LSSTCAM_PRODUCTION_DISABLED]


def _entries(client: redis.Redis, instrument: str) -> list[FanOutEntry]:
    return [FanOutEntry.from_fields(f) for _id, f in client.xrange(naming.stream_name(instrument))]


def test_one_entry_per_active_detector_per_instrument(settings: Settings, redis_client: redis.Redis) -> None:
    bodies = [visit_body("LSSTCam", "g-lsst"), visit_body("LATISS", "g-auxtel"), visit_body("HSC", "g-hsc")]
    produce(settings, *bodies)
    with RunningFanOut(settings) as service:
        wait_for(lambda: service.stats.fanned_out == 3, what="three visits fanned out")

    expected = {"LSSTCam": LSSTCAM_ACTIVE, "LATISS": [0], "HSC": list(range(104))}
    for body in bodies:
        name = body["instrument"]
        entries = _entries(redis_client, name)
        assert [e.detector for e in entries] == expected[name]
        assert {e.visit for e in entries} == {NextVisit.model_validate_json(json.dumps(body))}
        (group,) = redis_client.xinfo_groups(naming.stream_name(name))
        assert group["name"].decode() == naming.consumer_group(name)
        assert group["lag"] == len(expected[name])
    assert service.stats.entries_written == 172 + 1 + 104
    assert service.stats.dead_lettered == {}


def test_redelivery_after_exec_before_commit_adds_nothing(settings: Settings, redis_client: redis.Redis) -> None:
    produce(settings, visit_body("LSSTCam", "g-crash"))
    first = FanOutService(settings)
    first.startup()
    messages: list = []
    wait_for(lambda: bool(messages.extend(first.poll()) or messages), what="the event reaches the fan-out")
    first.handle(messages[0], time.perf_counter())  # EXEC has returned ...
    assert redis_client.xlen("instrument:lsstcam") == 172
    first._consumer.close()  # ... and the process dies before committing: no commit, group left
    first._consumer = None
    first.shutdown()  # releases its Redis connections; with no consumer there is nothing to commit

    with RunningFanOut(settings) as second:
        wait_for(lambda: second.stats.received == 1, what="the uncommitted event is redelivered")
    assert second.stats.duplicates == 1
    assert second.stats.fanned_out == 0
    assert redis_client.xlen("instrument:lsstcam") == 172
    assert _committed_offset(settings) == 1


def test_bad_input_is_dead_lettered_with_reason_and_service_keeps_going(
    settings: Settings, redis_client: redis.Redis
) -> None:
    bad = {
        "malformed": b'{"instrument": "LSSTCam", "groupId": ',
        "invalid": json.dumps(visit_body("LSSTCam", "g-types") | {"groupId": 42, "duration": "30"}).encode(),
        "unknown-instrument": json.dumps(visit_body("LSSTCam", "g-decam") | {"instrument": "DECam"}).encode(),
        "expired": json.dumps(visit_body("LATISS", "g-old") | {"private_efdStamp": time.time() - 7200}).encode(),
    }
    produce(settings, *bad.values(), visit_body("LATISS", "g-good"))
    with RunningFanOut(settings) as service:
        wait_for(lambda: service.stats.received == 5, what="all five messages handled")

    assert service.stats.dead_lettered == dict.fromkeys(bad, 1)
    assert [e.visit.groupId for e in _entries(redis_client, "LATISS")] == ["g-good"]
    letters = consume_all(settings, settings.kafka.dead_letter_topic, 4)
    by_kind = {dict(m.headers())[naming.DLQ_HEADER_KIND].decode(): m for m in letters}
    assert set(by_kind) == set(bad)
    for kind, message in by_kind.items():
        headers = dict(message.headers())
        assert message.value() == bad[kind]  # unchanged: nothing is lost
        assert headers[naming.DLQ_HEADER_SOURCE].decode().startswith(settings.kafka.next_visit_topic + "/0/")
    reasons = {k: dict(m.headers())[naming.DLQ_HEADER_REASON].decode() for k, m in by_kind.items()}
    assert "Invalid JSON" in reasons["malformed"]
    assert "groupId: Input should be a valid string" in reasons["invalid"]
    assert "duration: Input should be a valid number" in reasons["invalid"]
    assert "'DECam' is not served here" in reasons["unknown-instrument"]
    assert "more than message_expiration_s=3600" in reasons["expired"]


def test_stream_and_group_deleted_under_a_running_fanout_are_recreated(
    settings: Settings, redis_client: redis.Redis
) -> None:
    stream, group = naming.stream_name("LATISS"), naming.consumer_group("LATISS")

    def groups_read() -> list[str]:
        reply = redis_client.xreadgroup(group, "worker", {stream: ">"}, count=100)
        return [FanOutEntry.from_fields(f).visit.groupId for _id, f in reply[0][1]] if reply else []

    with RunningFanOut(settings) as service:
        produce(settings, visit_body("LATISS", "g1"))
        wait_for(lambda: service.stats.fanned_out == 1, what="first visit")
        redis_client.delete(stream)  # Redis lost the stream, and its group with it
        produce(settings, visit_body("LATISS", "g2"))
        wait_for(lambda: service.stats.fanned_out == 2, what="second visit")
        assert groups_read() == ["g2"]

        redis_client.xgroup_destroy(stream, group)  # only the group is lost; g2 stays in the stream
        produce(settings, visit_body("LATISS", "g3"))
        wait_for(lambda: service.stats.fanned_out == 3, what="third visit")
        assert groups_read() == ["g3"]  # the recreated group starts at the new entries, no replay


def _committed_offset(settings: Settings) -> int:
    consumer = kafka.make_consumer(settings.kafka, settings.fanout.group_id, client_id="offset-check")
    try:
        (tp,) = consumer.committed([TopicPartition(settings.kafka.next_visit_topic, 0)], timeout=10)
        return int(tp.offset)
    finally:
        consumer.close()


def _env(settings: Settings) -> dict[str, str]:
    k, f = settings.kafka, settings.fanout
    return os.environ | {
        "PP_REDIS__PORT": str(settings.redis.port),
        "PP_KAFKA__PORT": str(k.port),
        "PP_KAFKA__NEXT_VISIT_TOPIC": k.next_visit_topic,
        "PP_KAFKA__DEAD_LETTER_TOPIC": k.dead_letter_topic,
        "PP_FANOUT__GROUP_ID": f.group_id,
        "PP_FANOUT__CONSUMER_NAME": f.consumer_name or "",
        "PP_INSTRUMENTS": json.dumps({"LSSTCam": {"disabled_detectors": "production"}}),
        **export_env(settings, "metrics"),  # free ports
    }


@pytest.mark.timeout(150)
def test_process_killed_restarted_then_terminated(settings: Settings, redis_client: redis.Redis) -> None:
    command = [sys.executable, "-m", "prompt_processing.cli", "fanout"]
    env = _env(settings)
    health_key = naming.health_key("fanout", settings.fanout.consumer_name or "")
    produce(settings, visit_body("LSSTCam", "g-a"))
    proc = subprocess.Popen(command, env=env)
    try:
        wait_for(lambda: redis_client.xlen("instrument:lsstcam") == 172, what="first visit fanned out")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # The summit (or Kafka) delivers g-a again; the restarted fan-out must not add it twice.
        produce(settings, visit_body("LSSTCam", "g-a"), visit_body("LSSTCam", "g-b"))
        proc = subprocess.Popen(command, env=env)

        def health() -> dict:
            raw = redis_client.get(health_key)
            return json.loads(raw) if raw else {}

        wait_for(lambda: health().get("fanned_out") == 1 and health().get("duplicates", 0) >= 1, what="restart")
        assert redis_client.xlen("instrument:lsstcam") == 2 * 172
        assert health()["latency_ms_p50"] > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert redis_client.get(health_key) is None  # a clean exit removes its health record
    assert _committed_offset(settings) == 3


def test_latency_window_keeps_the_last_samples_and_interpolates_like_numpy() -> None:
    window = LatencyWindow(4)
    assert (len(window), window.percentiles(50, 99)) == (0, [None, None])
    for value in (100.0, 1.0, 2.0, 3.0, 4.0):  # 100 falls out of a window of four
        window.append(value)
    assert len(window) == 4
    assert window.percentiles(0, 50, 100) == [1.0, 2.5, 4.0]
    assert window.percentiles(99) == [float(np.percentile([1.0, 2.0, 3.0, 4.0], 99))]


def test_visits_in_flight_are_fanned_out_again_after_redis_lost_its_data(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """Redis restarted without persistence (here: FLUSHDB): streams, groups and de-duplication keys are gone;
    the fan-out replays its window of next-visit events, re-fanning each visit once; a bad event in the window
    is not dead-lettered a second time."""
    settings = settings.model_copy(update={"fanout": settings.fanout.model_copy(update={"replay_window_s": 600})})
    produce(settings, visit_body("LATISS", "g-in-flight"), b"not json")
    with RunningFanOut(settings) as service:
        wait_for(lambda: service.stats.fanned_out == 1 and service.stats.received == 2, what="first fan-out")
        assert redis_client.exists(naming.epoch_key("fanout"))
        redis_client.flushdb()
        wait_for(lambda: service.stats.fanned_out == 2, timeout_s=20, what="the visit fanned out again")
        assert [e.visit.groupId for e in _entries(redis_client, "LATISS")] == ["g-in-flight"]
        time.sleep(1.5)  # one more check: the marker is back, no second replay
        assert service.stats.fanned_out == 2 and service.stats.received == 4
    assert sum(service.stats.dead_lettered.values()) == 1
