"""The arrival router on the real broker, Redis and S3 endpoint (moto server)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest
import redis

from pp_devkit.night import s3_notification
from prompt_processing.adapters import kafka, s3
from prompt_processing.adapters.health import read_health
from prompt_processing.adapters.redis_client import make_redis
from prompt_processing.model import layout, naming
from prompt_processing.model.instruments import LSSTCAM
from prompt_processing.services.router import BadNotification, RouterService, parse_notification
from prompt_processing.settings import Settings
from tests.helpers import Running, consume_all, wait_for

OBS = layout.obs_id(LSSTCAM, "20261128", 42)
RAW = layout.raw_key(LSSTCAM, "20261128", OBS, 94)
SIDECAR = RAW.removesuffix(".fits") + ".json"


def _upload(settings: Settings, key: str, data: bytes) -> None:
    client = s3.make_client(settings.s3)
    s3.ensure_buckets(client, [settings.s3.raw_bucket])
    s3.put_bytes(client, settings.s3.raw_bucket, key, data)
    client.close()


def _notify(settings: Settings, *values: bytes | dict[str, Any]) -> None:
    producer = kafka.make_producer(settings.kafka)
    for value in values:
        raw = json.dumps(value).encode() if isinstance(value, dict) else value
        producer.produce(settings.kafka.raw_notifications_topic, raw)
    assert producer.flush(10) == 0


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_sidecar_records_presence_wakes_the_waiter_and_serves_http(
    settings: Settings, redis_client: redis.Redis
) -> None:
    bucket = settings.s3.raw_bucket
    _upload(settings, RAW, b"fits bytes")
    _upload(settings, SIDECAR, json.dumps({"GROUPID": "2026-11-28T01:02:03.456", "CURINDEX": 1}).encode())
    woke: list[Any] = []
    arrivals = naming.arrivals_key("LSSTCam", "2026-11-28T01:02:03.456", 0, 94)
    waiter = threading.Thread(
        target=lambda: woke.append(make_redis(settings.redis, settings.retry, name="test").blpop([arrivals], 30))
    )
    waiter.start()
    with Running(RouterService(settings)) as router:
        _notify(settings, s3_notification(bucket, RAW), s3_notification(bucket, SIDECAR))
        waiter.join(30)
        presence = redis_client.get(naming.presence_key("LSSTCam", "2026-11-28T01:02:03.456", 0, 94))
        assert presence is not None and json.loads(presence)["key"] == RAW
        assert woke and json.loads(woke[0][1])["key"] == RAW  # the blocked activator was woken
        status, body = _get(f"{router.http_address}/presence/LSSTCam/2026-11-28T01:02:03.456/0/94")
        assert (status, body["key"], body["bucket"]) == (200, RAW, bucket)
        assert _get(f"{router.http_address}/presence/LSSTCam/2026-11-28T01:02:03.456/1/94")[0] == 404
        assert _get(f"{router.http_address}/presence/LSSTCam/oops")[0] == 400
        wait_for(lambda: router.counts["presences"] == 1 and router.counts["images"] == 1, what="counts")
    assert redis_client.scard(naming.unpaired_raws_key("LSSTCam", "20261128", 94)) == 0  # paired by its sidecar


def test_an_image_without_its_sidecar_is_noted_as_unpaired(settings: Settings, redis_client: redis.Redis) -> None:
    bucket = settings.s3.raw_bucket
    _upload(settings, RAW, b"fits bytes")
    unpaired = naming.unpaired_raws_key("LSSTCam", "20261128", 94)
    with Running(RouterService(settings)):
        _notify(settings, s3_notification(bucket, RAW))
        wait_for(lambda: redis_client.scard(unpaired) == 1, what="the unpaired image")
    assert redis_client.smembers(unpaired) == {f"{bucket}/{RAW}".encode()}
    assert 0 < redis_client.ttl(unpaired) <= settings.router.presence_ttl_s


def test_bad_notifications_are_dead_lettered_and_the_router_keeps_going(
    settings: Settings, redis_client: redis.Redis
) -> None:
    bucket = settings.s3.raw_bucket
    _upload(settings, SIDECAR, b"not json at all")
    bad = [
        b"{truncated",
        s3_notification(bucket, "LSSTCam/20261128/../../../etc/passwd"),
        s3_notification(bucket, "LSSTCam/20261128/junk.fits"),
        s3_notification(bucket, SIDECAR),  # sidecar exists, but is not JSON
        s3_notification(bucket, layout.raw_key(LSSTCAM, "20261128", OBS, 5).removesuffix(".fits") + ".json"),  # absent
    ]
    _notify(settings, *bad)
    with Running(RouterService(settings)) as router:
        wait_for(lambda: router.counts["notifications"] == len(bad), what="all notifications handled")
    letters = consume_all(settings, settings.kafka.raw_dead_letter_topic, len(bad))
    reasons = [dict(m.headers())[naming.DLQ_HEADER_REASON].decode() for m in letters]
    assert "not an S3 event notification" in reasons[0]
    assert "suspicious" in reasons[1]
    assert "is not <instrument>/<dayObs>" in reasons[2]
    assert "unreadable" in reasons[3]
    assert "does not exist" in reasons[4]
    assert [m.value() for m in letters[1:]] == [json.dumps(b).encode() for b in bad[1:]]
    assert redis_client.keys("presence:*") == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"[]", "list indices"), (b'{"Records": {}}', "Records is not a list"), (b'{"Records": [{}]}', "")],
)
def test_parse_notification_rejects_wrong_shapes(raw: bytes, message: str) -> None:
    if message:
        with pytest.raises(BadNotification, match=message):
            parse_notification(raw)
    else:  # a record that is not ObjectCreated is skipped, not an error
        assert parse_notification(raw) == []


def test_urlencoded_keys_are_decoded() -> None:
    body = s3_notification("b", "LSSTCam/a+b%3Ac.fits")
    assert parse_notification(json.dumps(body).encode()) == [
        ("b", "LSSTCam/a b:c.fits", body["Records"][0]["eventTime"])
    ]


def test_a_sidecar_unreadable_during_an_s3_outage_is_deferred_not_blocking_then_routed(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """S3 answers nothing (here: an endpoint where nothing listens): the read fails fast, is kept in Redis and
    retried; notifications behind it are handled meanwhile; once S3 answers, the presence is recorded."""
    bucket, group = settings.s3.raw_bucket, "2026-11-28T04:05:06.789"
    settings = settings.model_copy(update={"retry": settings.retry.model_copy(update={"outage_alarm_s": 0.5})})
    other_raw = layout.raw_key(LSSTCAM, "20261128", OBS, 95)
    _upload(settings, SIDECAR, json.dumps({"GROUPID": group, "CURINDEX": 1}).encode())
    with Running(RouterService(settings)) as router:
        working = router._s3
        nowhere = settings.s3.model_copy(update={"endpoint_url": "http://127.0.0.1:1"})
        router._s3 = s3.make_client(nowhere, read_timeout_s=1, attempts=1)
        _notify(settings, s3_notification(bucket, SIDECAR), s3_notification(bucket, other_raw))
        wait_for(lambda: router.counts["deferred"] >= 1 and router.counts["images"] == 1,
                 what="the read deferred and the next notification handled")  # fmt: skip
        def reported() -> bool:  # past outage_alarm_s, in the health record --check reads
            health = read_health(redis_client, "router", settings.router.consumer_name or "")
            return health is not None and health["healthy"] is False and "s3" in health["outages"]

        wait_for(reported, what="the S3 outage in the health record")
        (member,) = redis_client.zrange(naming.ROUTER_DEFERRED_KEY, 0, -1)
        assert json.loads(member)["key"] == SIDECAR
        assert redis_client.get(naming.presence_key("LSSTCam", group, 0, 94)) is None
        router._s3 = working  # S3 is back
        wait_for(lambda: redis_client.get(naming.presence_key("LSSTCam", group, 0, 94)) is not None,
                 timeout_s=40, what="the deferred read routed")  # fmt: skip
        wait_for(lambda: redis_client.zcard(naming.ROUTER_DEFERRED_KEY) == 0, what="the deferred read forgotten")
        assert router.outages.healthy
