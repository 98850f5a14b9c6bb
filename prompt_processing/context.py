"""What a worker holds for its whole life and hands to every visit's steps.

Clients are made once per worker (a warm worker reuses connections and its preload cache)
and closed by ``close()``. Nothing here is created at import.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import redis
from confluent_kafka import Producer

from prompt_processing import kafka, s3
from prompt_processing.settings import Settings


class LruCache:
    """A small least-recently-used cache of loaded objects (calibrations, templates)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[str, Any] = OrderedDict()

    def get_or_load(self, key: str, load: Callable[[], Any]) -> Any:
        if key in self._items:
            self.hits += 1
            self._items.move_to_end(key)
            return self._items[key]
        self.misses += 1
        value = load()
        self._items[key] = value
        if len(self._items) > self.max_entries:
            self._items.popitem(last=False)
        return value


class StepClock:
    """Seconds spent inside each step's body during one visit (the rest is orchestration).

    A plain class, not a dataclass, on purpose: Prefect rebuilds dataclass arguments of a
    task, and the steps must all write into this one object.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def timing(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - start


class WorkerContext:
    """Settings, clients and caches of one worker; ``stopping`` is set when it must wind down.

    A plain class (see StepClock): every step must see these very clients.
    """

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.name = name
        # The socket timeout outlasts a BLPOP slice (wait_for_images blocks up to a second).
        self.redis = redis.Redis.from_url(settings.redis.url, socket_timeout=settings.redis.socket_timeout_s + 5)
        self.s3: Any = s3.make_client(settings.s3)
        self.producer: Producer = kafka.make_producer(settings.kafka)
        self.cache = LruCache(settings.worker.preload_cache_entries)
        self.stopping = threading.Event()
        # Off the critical path: reports (Prefect artifacts) and parallel uploads.
        self.reporter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pp-report")
        self.uploads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pp-upload")

    def close(self) -> None:
        """Finish pending reports and uploads, flush Kafka, close clients."""
        self.reporter.shutdown(wait=True)
        self.uploads.shutdown(wait=True)
        self.producer.flush(10)
        self.redis.close()
        self.s3.close()
