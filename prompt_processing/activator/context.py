"""What a flow run that processes visit-detectors (an activator, or a rerun) holds for its whole
life and hands to every visit's steps.

Clients are made once per run (a warm activator reuses connections and its preload cache) and
closed by ``close()``. Nothing here is created at import.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import redis
from cachetools import LRUCache
from confluent_kafka import Producer

from prompt_processing.adapters import kafka, s3
from prompt_processing.settings import Settings


class StepClock:
    """One visit-detector's steps: which one runs, and the seconds spent inside each one's body
    (the rest is orchestration).

    A plain class, not a dataclass, on purpose: Prefect rebuilds dataclass arguments of a
    task, and the steps must all write into this one object.
    """

    def __init__(self, label: str = "") -> None:
        self.label = label  # the visit-detector's name, e.g. LSSTCam-<group>-det094: steps are named after it
        self.step = ""  # the step running (or the last one that ran)
        self.seconds: dict[str, float] = {}

    @contextmanager
    def timing(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - start


class ProcessingContext:
    """Settings, clients and caches of one run; ``stopping`` is set when it must wind down.

    A plain class (see StepClock): every step must see these very clients.
    """

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.name = name
        # The socket timeout outlasts a BLPOP slice (wait_for_images blocks up to a second).
        self.redis = redis.Redis.from_url(settings.redis.url, socket_timeout=settings.redis.socket_timeout_s + 5)
        self.s3: Any = s3.make_client(settings.s3)
        self.producer: Producer = kafka.make_producer(settings.kafka)
        self.preload_cache: LRUCache[str, Any] = LRUCache(maxsize=settings.visit.preload_cache_entries)
        self.lookups: dict[str, str | None] = {}  # ids looked up once per run (e.g. the rerun deployment's)
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
