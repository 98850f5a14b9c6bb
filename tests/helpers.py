"""Shared test helpers: produce events, run a fan-out in a thread, wait for conditions."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import fastavro.validation
import numpy as np
from confluent_kafka import Message

from pp_devkit.sim import next_visit_message, plan_visits
from prompt_processing.adapters import kafka
from prompt_processing.alerts.packet import load_schema, schema_id
from prompt_processing.imaging.catalogue import Catalogue
from prompt_processing.imaging.dia import DiaCatalogue, DiaMeasurements
from prompt_processing.model.instruments import get_instrument
from prompt_processing.services.fanout import FanOutService
from prompt_processing.services.kafka_service import KafkaService
from prompt_processing.services.lifecycle import Servable
from prompt_processing.settings import FLOW_RUN_SECTIONS, Settings, export_env


def flow_run_env(settings: Settings) -> dict[str, str]:
    """The PP_* variables that give a flow run (in this process or a child) the test's settings."""
    return export_env(settings, *FLOW_RUN_SECTIONS)


def visit_body(instrument: str, group_id: str, **changes: Any) -> dict[str, Any]:
    """A realistic NextVisit body from the simulator, with a chosen groupId."""
    inst = get_instrument(instrument)
    assert inst is not None
    plan = plan_visits(inst, 1, seed=zlib.crc32(group_id.encode()) % 1000)[0]
    body = next_visit_message(inst, plan, now_utc_s=time.time(), lead_s=25, seq_num=1)
    return body | {"groupId": group_id} | changes


def produce(settings: Settings, *values: bytes | dict[str, Any]) -> None:
    producer = kafka.make_producer(settings.kafka)
    for value in values:
        raw = json.dumps(value).encode() if isinstance(value, dict) else value
        producer.produce(settings.kafka.next_visit_topic, raw)
    assert producer.flush(10) == 0


def wait_for(predicate: Callable[[], bool], *, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def consume_all(settings: Settings, topic: str, n: int, *, timeout_s: float = 30.0) -> list[Message]:
    """Read ``n`` messages from ``topic`` from the beginning, with a throwaway group."""
    consumer = kafka.make_consumer(settings.kafka, f"reader-{uuid.uuid4().hex[:8]}", client_id="test-reader")
    consumer.subscribe([topic])
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < n and time.monotonic() < deadline:
            got.extend(m for m in consumer.consume(n - len(got), 0.5) if m.error() is None)
    finally:
        consumer.close()
    return got


def decode_alerts(settings: Settings, messages: list[Message]) -> list[dict[str, Any]]:
    """Alerts as a consumer reads them: each framed for the configured schema, decoded by fastavro and
    validated against the schema (a mismatch raises); the message's key and headers under ``_key`` and
    ``_headers``."""
    schema = load_schema(settings.alerts.schema_version)
    alerts = []
    for message in messages:
        value = message.value() or b""
        assert schema_id(value) == schema.schema_id
        record = schema.decode(value)
        fastavro.validation.validate(record, schema.parsed, raise_errors=True)
        key = message.key()
        headers = {name: bytes(v or b"").decode() for name, v in message.headers() or []}
        alerts.append({**record, "_key": key.decode() if isinstance(key, bytes) else key, "_headers": headers})
    return alerts


class Running[S: KafkaService]:
    """A Kafka service ticking in a background thread for the duration of a ``with`` block."""

    def __init__(self, service: S) -> None:
        self.service = service
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.error: BaseException | None = None

    def _loop(self) -> None:
        try:
            while not self.service.should_exit:
                self.service.tick()
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> S:
        self.service.startup()
        self._thread.start()
        return self.service

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.service.request_exit()
        self._thread.join(timeout=30)
        self.service.shutdown()
        assert self.error is None, f"service loop died: {self.error!r}"


def RunningFanOut(settings: Settings) -> Running[FanOutService]:
    return Running(FanOutService(settings))


@contextmanager
def serving[S: Servable](service: S) -> Iterator[S]:
    """``service``'s own loop in a thread for the ``with`` block: startup, ticks and shutdown all
    in that thread (as ``lifecycle.serve`` runs them), errors re-raised at the end."""
    errors: list[BaseException] = []

    def loop() -> None:
        service.startup()
        try:
            while not service.should_exit:
                service.tick()
        except BaseException as exc:
            errors.append(exc)
        finally:
            service.shutdown()

    thread = threading.Thread(target=loop, name=type(service).__name__, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.request_exit()
        thread.join(30)
        assert not thread.is_alive() and not errors, f"service loop: {errors}"


def dia_catalogue(catalogue: Catalogue, *, dipole_lobes_px: float | None = None) -> DiaCatalogue:
    """``catalogue`` as DIA sources (PSF fluxes 1.1 times the aperture's): round with a 1.5 px sigma, or
    (``dipole_lobes_px`` apart along x) all dipoles, their positive lobe the first."""
    n = len(catalogue)
    nothing, psf = np.full(n, np.nan), (catalogue.flux_e * 1.1, catalogue.flux_err_e, np.zeros(n, bool))
    if dipole_lobes_px is None:
        return DiaCatalogue(catalogue, DiaMeasurements(np.full(n, 2.25), np.full(n, 2.25), np.zeros(n),
                                                       np.zeros(n, bool), *psf, np.zeros(n, bool), nothing, nothing,
                                                       nothing, nothing, nothing, nothing))  # fmt: skip
    half = dipole_lobes_px / 2
    return DiaCatalogue(catalogue, DiaMeasurements(
        nothing, nothing, nothing, np.ones(n, bool), *psf, np.ones(n, bool), np.abs(catalogue.flux_e) * 2,
        catalogue.flux_e, catalogue.x_px - half, catalogue.y_px, catalogue.x_px + half, catalogue.y_px))  # fmt: skip


def stop_prefect_worker(worker: subprocess.Popen[Any], grace_s: float = 20.0) -> None:
    """SIGTERM a Prefect worker started by a test and wait for it; kill it if it takes longer than ``grace_s``
    (a worker still starting up ignores the signal until its API calls are done, which a loaded SQLite server
    can stretch past the test's own timeout; how long Prefect's worker takes to stop is not what the tests
    check, and a killed one leaks nothing into the next test)."""
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(grace_s)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(10)
