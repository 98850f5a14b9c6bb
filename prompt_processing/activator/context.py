"""What a flow run that processes visit-detectors (an activator, or a rerun) holds for its whole
life and hands to every visit's steps.

Clients are made once per run (a warm activator reuses connections and its preload cache) and
closed by ``close()``. Nothing here is created at import.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from lsst.daf.butler import Butler
from lsst.dax.apdb import Apdb

from prompt_processing.activator.queue import Lease
from prompt_processing.adapters import kafka, s3
from prompt_processing.adapters.redis_client import make_redis
from prompt_processing.alerts.delivery import AlertDeliveries
from prompt_processing.alerts.packet import AlertSchema, load_schema
from prompt_processing.apdb.db import open_apdb, open_ledger
from prompt_processing.apdb.ledger import AlertLedger
from prompt_processing.butler import repo
from prompt_processing.butler.local import LocalRepo
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
        self.entries: dict[str, int] = {}  # how many times each step's body was entered (its tries)

    @contextmanager
    def timing(self, step: str) -> Iterator[None]:
        self.entries[step] = self.entries.get(step, 0) + 1
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
        self.redis = make_redis(settings.redis, settings.retry, name=f"activator-{name}",
                                socket_timeout_s=settings.redis.socket_timeout_s + 5)
        self.s3: Any = s3.make_client(settings.s3)
        self.producer: Producer = kafka.make_producer(settings.kafka)
        self.attempt = uuid.uuid4().hex[:8]  # names this run's output RUNs: a later attempt never reuses one
        self._central: Butler | None = None
        self._apdb: Apdb | None = None
        self._ledger: AlertLedger | None = None
        self.alert_deliveries = AlertDeliveries()
        self.alert_schema: AlertSchema = load_schema(settings.alerts.schema_version)
        self._local: dict[str, LocalRepo] = {}
        self.lookups: dict[str, str | None] = {}  # ids looked up once per run (e.g. the rerun deployment's)
        self.stopping = threading.Event()
        self.lease: Lease | None = None  # the activator's claim on the entry in hand (None: a rerun)
        # Off the critical path: reports (Prefect artifacts) and parallel uploads.
        self.reporter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pp-report")
        self.uploads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pp-upload")

    def check_lease(self) -> None:
        """``LeaseLost`` if the entry in hand may be another activator's by now (before any effect)."""
        if self.lease is not None:
            self.lease.check()

    def local_repo(self, instrument: str) -> LocalRepo:
        """This run's local Butler repository for ``instrument``, made on first use (~0.3 s; the first
        also opens the central repository, read-only) and deleted by ``close()``."""
        local = self._local.get(instrument)
        if local is None:
            b = self.settings.butler
            if self._central is None:
                self._central = repo.open_central(b, self.settings.s3)
            root = (b.local_root or Path(tempfile.gettempdir()) / "pp-local-butler") / f"{self.name}-{self.attempt}"
            local = self._local[instrument] = LocalRepo(root, self._central, repo.central_uri(b), instrument, b)
        return local

    @property
    def apdb(self) -> Apdb:
        """The APDB, opened on first use (``ApdbMissing`` if ``pp apdb init`` was never run on it)."""
        if self._apdb is None:
            self._apdb = open_apdb(self.settings.apdb)
        return self._apdb

    @property
    def ledger(self) -> AlertLedger:
        """The alerts ledger in the APDB's database, opened on first use."""
        if self._ledger is None:
            self._ledger = open_ledger(self.settings.apdb)
        return self._ledger

    def end_visit(self, instrument: str) -> None:
        """A visit-detector is done: its local repository drops what it does not cache."""
        local = self._local.get(instrument)
        if local is not None:
            local.end_visit()

    def close(self) -> None:
        """Finish pending reports and uploads, flush Kafka, close clients, delete the local repositories."""
        self.reporter.shutdown(wait=True)
        self.uploads.shutdown(wait=True)
        self.producer.flush(10)
        self.redis.close()
        self.s3.close()
        if self._ledger is not None:
            self._ledger.close()
        for local in self._local.values():
            local.close()
        if self._central is not None:
            self._central.close()
