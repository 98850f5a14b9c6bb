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
from collections import Counter
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, unquote_plus

import redis
from confluent_kafka import Message

from prompt_processing.adapters import s3
from prompt_processing.model import naming
from prompt_processing.model.errors import NonRetriableError, RetriableError
from prompt_processing.model.layout import LayoutError, RawKey, parse_raw_key
from prompt_processing.services.kafka_service import KafkaService, MetricsEndpoint, ServiceConfig
from prompt_processing.services.metrics import RouterMetrics
from prompt_processing.settings import Settings

log = logging.getLogger(__name__)


class BadNotification(ValueError):
    """A notification (or one of its records) that cannot be routed; the text says why."""


def parse_notification(raw: bytes | None) -> list[tuple[str, str, str]]:
    """The (bucket, key, eventTime) of each ObjectCreated record; raise BadNotification otherwise."""
    try:
        body = json.loads(raw or b"")
        records = body["Records"]
        if not isinstance(records, list):
            raise TypeError("Records is not a list")
        out = []
        for record in records:
            if not str(record.get("eventName", "")).startswith("ObjectCreated"):
                continue
            obj = record["s3"]
            out.append((str(obj["bucket"]["name"]), unquote_plus(str(obj["object"]["key"])), str(record["eventTime"])))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadNotification(f"not an S3 event notification: {exc!s:.200}") from exc
    return out


def presence_from_sidecar(sidecar: bytes, raw: RawKey) -> tuple[str, int]:
    """(group, snap) from a sidecar: ``GROUPID`` (required) and ``CURINDEX`` (1-based, default 1)."""
    try:
        header = json.loads(sidecar)
        group = header["GROUPID"]
        snap = int(header.get("CURINDEX", 1)) - 1
    except (ValueError, KeyError, TypeError) as exc:
        raise BadNotification(f"sidecar {raw.sidecar_key} unreadable: {exc!s:.200}") from exc
    if not isinstance(group, str) or not group or snap < 0:
        raise BadNotification(f"sidecar {raw.sidecar_key} has no valid GROUPID/CURINDEX")
    return group, snap


class RouterService(KafkaService):
    """The arrival router process (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        r, k = settings.router, settings.kafka
        config = ServiceConfig(
            kind="router", name=r.consumer_name or socket.gethostname(), group_id=r.group_id,
            topic=k.raw_notifications_topic, dead_letter_topic=k.raw_dead_letter_topic, batch_size=r.batch_size,
            poll_timeout_s=r.poll_timeout_s, health_ttl_s=r.health_ttl_s, shutdown_deadline_s=r.shutdown_deadline_s,
        )  # fmt: skip
        client = redis.Redis.from_url(settings.redis.url, socket_timeout=settings.redis.socket_timeout_s)
        self.metrics = RouterMetrics()
        m = settings.metrics
        endpoint = MetricsEndpoint(self.metrics.registry, m.host, m.router_port) if m.enabled else None
        super().__init__(k, settings.retry, config, client, endpoint)
        self.settings = settings
        self.counts: Counter[str] = Counter()
        self._s3 = s3.make_client(settings.s3)
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
        sidecar = self.retrying("s3", lambda: _get_retrying(self._s3, bucket, key))
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

    def _reject(self, message: Message, kind: str, reason: str) -> None:
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


def _get_retrying(client: Any, bucket: str, key: str) -> bytes:
    """S3 GET where a transient failure surfaces as OSError, for ``KafkaService.retrying``."""
    try:
        return s3.get_bytes(client, bucket, key)
    except RetriableError as exc:
        raise ConnectionError(str(exc)) from exc


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
