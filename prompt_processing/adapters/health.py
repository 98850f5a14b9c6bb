"""A service's health record in Redis: what ``pp <service> --check`` (a liveness probe) reads.

The record is JSON under ``pp:<kind>:health:<name>`` with a TTL: a service that stops refreshing
it (hung, or dead without cleaning up) is reported unhealthy once the TTL passes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from prompt_processing.model import naming

log = logging.getLogger(__name__)


class HealthKey:
    """Refreshes one process's health record at most every ``every_s`` seconds.

    A Redis error is logged, never raised: a service keeps working while Redis is away (its
    probe then fails, which is the truth).
    """

    def __init__(self, client: redis.Redis, kind: str, name: str, *, ttl_s: int, every_s: float = 1.0) -> None:
        self.key = naming.health_key(kind, name)
        self.name = name
        self._client = client
        self._ttl_s = ttl_s
        self._every_s = every_s
        self._refreshed_at = float("-inf")

    def refresh(self, fields: Callable[[], dict[str, Any]]) -> None:
        """Write ``{"name", "updated_at", **fields()}`` if the last write is ``every_s`` old."""
        now = time.monotonic()
        if now - self._refreshed_at < self._every_s:
            return
        self._refreshed_at = now
        body = {"name": self.name, "updated_at": time.time(), **fields()}
        try:
            self._client.set(self.key, json.dumps(body), ex=self._ttl_s)
        except redis.RedisError as exc:
            log.warning("health key %s not refreshed: %s", self.key, exc)

    def delete(self) -> None:
        """Remove the record (a clean stop); a Redis error is logged."""
        try:
            self._client.delete(self.key)
        except redis.RedisError as exc:
            log.warning("health key %s not removed: %s", self.key, exc)


def read_health(client: redis.Redis, kind: str, name: str) -> dict[str, Any] | None:
    """The health record of service ``kind`` called ``name``, or None if missing or expired."""
    raw = client.get(naming.health_key(kind, name))
    return json.loads(raw) if raw else None
