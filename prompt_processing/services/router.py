"""The arrival router: the one consumer of raw-image notifications (``raw-notifications``).

For each S3 ``ObjectCreated`` record of a raw sidecar (``.json``, written after its image),
it reads the sidecar's ``GROUPID`` and snap index, records
``presence:<instrument>:<group>:<snap>:<detector>`` (JSON: the image's key and when it
landed) with a TTL, and pushes the image key onto that visit-detector's arrival list, which
the waiting activator BLPOPs — no polling anywhere. Image (``.fits``) records are validated,
counted, and noted as unpaired (``naming.unpaired_raws_key``) until their sidecar arrives, so an
activator whose image never "came" can tell a missing sidecar from a missing image. Keys that
do not follow the instrument's layout, and unreadable sidecars, go to the dead-letter topic with
the reason. It also serves presence look-ups over HTTP:
``GET /presence/<instrument>/<group>/<snap>/<detector>`` -> 200 JSON, or 404.

Delivery guarantee: at least once (offsets commit after Redis confirmed); presence and
arrival writes are idempotent for a waiting activator (a repeated arrival only wakes it early
to re-check presence).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, unquote_plus

import redis
from confluent_kafka import Message

from prompt_processing.adapters import s3
from prompt_processing.adapters.redis_client import make_redis
from prompt_processing.model import naming
from prompt_processing.model.errors import NonRetriableError, RetriableError
from prompt_processing.model.events import is_group_id
from prompt_processing.model.layout import LayoutError, RawKey, parse_raw_key
from prompt_processing.services.kafka_service import KafkaService, MetricsEndpoint, ServiceConfig
from prompt_processing.services.metrics import RouterMetrics
from prompt_processing.settings import Settings

log = logging.getLogger(__name__)

DEFERRED_CHECK_S = 0.5
"""How often due deferred sidecar reads are looked at."""
DEFERRED_MAX_DELAY_S = 30.0
"""Longest pause before a deferred sidecar read is tried again."""


class BadNotification(ValueError):
    """A notification (or one of its records) that cannot be routed; the text says why."""


_NOT_S3 = "not an S3 event notification"


def parse_notification(raw: bytes | None) -> list[tuple[str, str, str]]:
    """The (bucket, key, eventTime) of each ObjectCreated record, the key URL-decoded; records of other events
    (or without ``eventName``) are skipped. All three are non-empty UTF-8 text.

    Raises nothing but BadNotification, whose text names the field at fault:
    ``not an S3 event notification: Records[0].s3.object.key: ...`` (``message: ...`` when the whole
    message is not a JSON object).
    """
    try:
        body = _load_json(raw or b"")
    except ValueError as exc:
        raise BadNotification(f"{_NOT_S3}: message: {exc}") from exc
    try:
        records = body["Records"]
    except KeyError as exc:
        raise BadNotification(f"{_NOT_S3}: Records: missing") from exc
    except TypeError as exc:  # a JSON array, string, number or null
        raise BadNotification(f"{_NOT_S3}: message: not a JSON object ({exc})") from exc
    if not isinstance(records, list):
        raise BadNotification(f"{_NOT_S3}: Records: Records is not a list (got {type(records).__name__})")
    out = []
    for index, record in enumerate(records):
        where = f"Records[{index}]"
        if not isinstance(record, dict):
            raise BadNotification(f"{_NOT_S3}: {where}: not a JSON object (got {type(record).__name__})")
        name = record.get("eventName", "")
        if not isinstance(name, str):
            raise BadNotification(f"{_NOT_S3}: {where}.eventName: not a string (got {type(name).__name__})")
        if name.startswith("ObjectCreated"):
            bucket = _text_at(record, where, "s3", "bucket", "name")
            key = unquote_plus(_text_at(record, where, "s3", "object", "key"))
            out.append((bucket, key, _text_at(record, where, "eventTime")))
    return out


def _load_json(raw: bytes) -> Any:
    """JSON bytes as Python; ValueError (why) for invalid UTF-8 or JSON, nesting too deep, a 5,000-digit number."""
    try:
        return json.loads(raw)
    except RecursionError as exc:
        raise ValueError("not JSON: nested too deeply") from exc
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc!s:.200}") from exc


def _text_at(record: dict[str, Any], where: str, *path: str) -> str:
    """The non-empty UTF-8 string at ``path`` in ``record``; BadNotification naming the field otherwise."""
    node: Any = record
    for step in path:
        if not isinstance(node, dict):
            raise BadNotification(f"{_NOT_S3}: {where}: not a JSON object")
        if step not in node:
            raise BadNotification(f"{_NOT_S3}: {where}.{step}: missing")
        node, where = node[step], f"{where}.{step}"
    if not isinstance(node, str) or not node or not _is_utf8(node):
        raise BadNotification(f"{_NOT_S3}: {where}: not a non-empty UTF-8 string (got {type(node).__name__})")
    return node


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from a \ud800 escape in the JSON
        return False
    return True


def presence_from_sidecar(sidecar: bytes, raw: RawKey) -> tuple[str, int]:
    """(group, snap) from a sidecar: ``GROUPID`` (required, a valid groupId) and ``CURINDEX`` (1-based integer,
    default 1). Raises nothing but BadNotification: ``sidecar <key> unreadable: <field>: <why>``.
    """
    where = f"sidecar {raw.sidecar_key} unreadable"
    try:
        header = _load_json(sidecar)
    except ValueError as exc:
        raise BadNotification(f"{where}: message: {exc}") from exc
    if not isinstance(header, dict):
        raise BadNotification(f"{where}: message: not a JSON object (got {type(header).__name__})")
    group, index = header.get("GROUPID"), header.get("CURINDEX", 1)
    if not is_group_id(group):
        raise BadNotification(f"{where}: GROUPID: {group!r:.60} is not a groupId (1-128 printable ASCII characters)")
    if type(index) is not int or index < 1:
        raise BadNotification(f"{where}: CURINDEX: {index!r:.60} is not an integer >= 1")
    return group, index - 1


class RouterService(KafkaService):
    """The arrival router process (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        r, k = settings.router, settings.kafka
        config = ServiceConfig(
            kind="router", name=r.consumer_name or socket.gethostname(), group_id=r.group_id,
            topic=k.raw_notifications_topic, dead_letter_topic=k.raw_dead_letter_topic, batch_size=r.batch_size,
            poll_timeout_s=r.poll_timeout_s, health_ttl_s=r.health_ttl_s, shutdown_deadline_s=r.shutdown_deadline_s,
            replay_window_s=r.replay_window_s,
        )  # fmt: skip
        client = make_redis(settings.redis, settings.retry, name=f"router-{config.name}")
        self.metrics = RouterMetrics()
        m = settings.metrics
        endpoint = MetricsEndpoint(self.metrics.registry, m.host, m.router_port) if m.enabled else None
        super().__init__(k, settings.retry, config, client, endpoint)
        self.settings = settings
        self.counts: Counter[str] = Counter()
        self._s3 = s3.make_client(settings.s3, read_timeout_s=r.s3_read_timeout_s, attempts=1)
        self._deferred_due_at = 0.0  # monotonic: when deferred sidecar reads are next looked at
        self._http: ThreadingHTTPServer | None = None

    def startup(self) -> None:
        super().startup()
        r = self.settings.router
        self._http = ThreadingHTTPServer((r.http_host, r.http_port), _handler_for(self.redis))
        threading.Thread(target=self._http.serve_forever, name="presence-http", daemon=True).start()
        log.info("router %s: %s -> presence; HTTP on %s", self.config.name, self.config.topic, self.http_address)

    @property
    def http_address(self) -> str:
        assert self._http is not None
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def handle(self, message: Message, received_at: float) -> None:
        self.metrics.notifications.inc()
        self.counts["notifications"] += 1
        try:
            records = parse_notification(message.value())
        except BadNotification as exc:
            self._reject(message, "malformed", str(exc))
            return
        problems = []
        for bucket, key, landed_at in records:
            try:
                self._route(bucket, key, landed_at)
            except (LayoutError, BadNotification, NonRetriableError) as exc:
                problems.append(str(exc))
        if problems:
            self._reject(message, "bad-record", "; ".join(problems))

    def _route(self, bucket: str, key: str, landed_at: str) -> None:
        raw = parse_raw_key(key)
        name = raw.instrument.name
        unpaired = naming.unpaired_raws_key(name, raw.day_obs, raw.detector)
        ttl_s = self.settings.router.presence_ttl_s
        if raw.ext == "fits":
            self.metrics.images.inc()
            self.counts["images"] += 1

            def note_image() -> None:  # until its sidecar comes, so a visit that times out can say why
                pipe = self.redis.pipeline(transaction=True)
                pipe.sadd(unpaired, f"{bucket}/{key}")
                pipe.expire(unpaired, ttl_s)
                pipe.execute()

            self.retrying("redis", note_image)
            return
        try:
            sidecar = s3.get_bytes(self._s3, bucket, key)
        except RetriableError as exc:  # S3 slow or down: read it later, let the notifications behind it pass
            self.outages.failed("s3", exc)
            self._defer(Deferred(bucket, key, landed_at, 0, time.time()), exc)
            return
        self.outages.recovered("s3")
        self._record(bucket, raw, sidecar, landed_at)

    def _record(self, bucket: str, raw: RawKey, sidecar: bytes, landed_at: str) -> None:
        """Presence and wake-up of one sidecar's image."""
        name, ttl_s = raw.instrument.name, self.settings.router.presence_ttl_s
        unpaired = naming.unpaired_raws_key(name, raw.day_obs, raw.detector)
        group, snap = presence_from_sidecar(sidecar, raw)
        value = json.dumps({"bucket": bucket, "key": raw.fits_key, "landed_at": landed_at})
        wake = naming.arrivals_key(name, group, snap, raw.detector)

        def record() -> None:
            pipe = self.redis.pipeline(transaction=True)
            pipe.srem(unpaired, f"{bucket}/{raw.fits_key}")
            pipe.set(naming.presence_key(name, group, snap, raw.detector), value, ex=ttl_s)
            pipe.rpush(wake, value)
            pipe.expire(wake, ttl_s)
            pipe.execute()

        self.retrying("redis", record)
        self.metrics.presences.inc()
        self.counts["presences"] += 1

    def tick(self) -> None:
        super().tick()
        if time.monotonic() >= self._deferred_due_at:
            self._deferred_due_at = time.monotonic() + DEFERRED_CHECK_S
            self._retry_deferred()

    def _defer(self, item: Deferred, why: Exception, *, replacing: bytes | None = None) -> None:
        """Keep a sidecar read for later, in Redis (durable as the presence records are); ``replacing``:
        the record of its previous try, swapped for this one atomically."""
        delay_s = min(self.settings.retry.first_delay_s * 2.0 ** item.tries + 0.5, DEFERRED_MAX_DELAY_S)
        log.warning("sidecar s3://%s/%s not read (%s); retry %d in %.1f s", item.bucket, item.key, why,
                    item.tries + 1, delay_s)  # fmt: skip

        def keep() -> None:
            pipe = self.redis.pipeline(transaction=True)
            if replacing is not None:
                pipe.zrem(naming.ROUTER_DEFERRED_KEY, replacing)
            pipe.zadd(naming.ROUTER_DEFERRED_KEY, {item.to_json(): time.time() + delay_s})
            pipe.execute()

        self.retrying("redis", keep)
        self.counts["deferred"] += 1

    def _retry_deferred(self) -> None:
        """The deferred sidecar reads that are due, oldest first; stops at the first that fails again."""
        try:
            due: Any = self.redis.zrangebyscore(naming.ROUTER_DEFERRED_KEY, "-inf", time.time(), start=0, num=50)
        except redis.RedisError:
            return
        for member in due:
            item = Deferred.from_json(member)
            try:
                raw = parse_raw_key(item.key)
                self._record(item.bucket, raw, s3.get_bytes(self._s3, item.bucket, item.key), item.landed_at)
            except RetriableError as exc:
                self.outages.failed("s3", exc)
                self._replace_deferred(member, item.retried(), exc)
                return  # still down: the rest wait their turn
            except (LayoutError, BadNotification, NonRetriableError) as exc:
                self._dead_letter_deferred(item, str(exc))
            else:
                self.outages.recovered("s3")
            self._forget_deferred(member)

    def _replace_deferred(self, member: bytes, item: Deferred, why: Exception) -> None:
        if time.time() - item.since > self.settings.router.presence_ttl_s:
            self._dead_letter_deferred(item, f"unreadable for longer than presence_ttl_s: {why}")
            self._forget_deferred(member)
            return
        self._defer(item, why, replacing=member)

    def _forget_deferred(self, member: bytes) -> None:
        self.retrying("redis", lambda: self.redis.zrem(naming.ROUTER_DEFERRED_KEY, member))

    def _dead_letter_deferred(self, item: Deferred, reason: str) -> None:
        body = json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "eventTime": item.landed_at,
                                        "s3": {"bucket": {"name": item.bucket}, "object": {"key": item.key}}}]})
        self.dead_letter_value(body.encode(), None, "bad-record", reason, source=f"deferred/{item.bucket}/{item.key}")
        self.counts["dead_lettered_bad-record"] += 1

    def _reject(self, message: Message, kind: str, reason: str) -> None:
        if self.replaying(message):  # dead-lettered the first time
            return
        self.dead_letter(message, kind, reason)
        self.metrics.dead_lettered.labels(kind).inc()
        self.counts[f"dead_lettered_{kind}"] += 1

    def health(self) -> dict[str, Any]:
        return dict(self.counts)

    def on_shutdown(self) -> None:
        self._s3.close()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()


@dataclass(frozen=True)
class Deferred:
    """A sidecar read that failed on an S3 outage, kept in ``naming.ROUTER_DEFERRED_KEY`` (a sorted set
    scored by when to try again)."""

    bucket: str
    key: str
    landed_at: str
    tries: int
    since: float  # unix s of the first failure

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Deferred:
        return cls(**json.loads(raw))

    def retried(self) -> Deferred:
        return replace(self, tries=self.tries + 1)


def _handler_for(client: redis.Redis) -> type[BaseHTTPRequestHandler]:
    class PresenceHandler(BaseHTTPRequestHandler):
        """GET /presence/<instrument>/<group>/<snap>/<detector>."""

        def do_GET(self) -> None:
            parts = [unquote(p) for p in self.path.split("?")[0].strip("/").split("/")]
            if len(parts) != 5 or parts[0] != "presence" or not parts[3].isdigit() or not parts[4].isdigit():
                self._reply(HTTPStatus.BAD_REQUEST, {"error": "use /presence/<instrument>/<group>/<snap>/<detector>"})
                return
            _, instrument, group, snap, detector = parts
            try:
                value = client.get(naming.presence_key(instrument, group, int(snap), int(detector)))
            except redis.RedisError as exc:
                self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"redis: {exc}"})
                return
            if value is None:
                self._reply(HTTPStatus.NOT_FOUND, {"error": "not landed"})
            else:
                self._reply(HTTPStatus.OK, json.loads(value))

        def _reply(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("presence http: " + format, *args)

    return PresenceHandler
