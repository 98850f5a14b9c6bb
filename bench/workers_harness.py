"""The stack, router and activators that bench_workers measures (imported after Prefect is configured)."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow
from rich.progress import Progress

from flows.activator import activator
from pp_devkit.night import NightPlan, seed_central_repo, upload_raw
from pp_devkit.sim import next_visit_message, plan_visits
from pp_devkit.stack import Stack, free_port
from prompt_processing.activator.context import ProcessingContext
from prompt_processing.activator.queue import WorkQueue
from prompt_processing.adapters import kafka, s3
from prompt_processing.adapters.redis_client import make_redis
from prompt_processing.adapters.results import landed_to_alerts_s, read_results
from prompt_processing.adapters.streams import StreamFanOut
from prompt_processing.model.events import TAI_MINUS_UTC_S, NextVisit
from prompt_processing.model.instruments import LATISS
from prompt_processing.model.queue_contract import QueueContract
from prompt_processing.services.kafka_service import KafkaService
from prompt_processing.services.router import RouterService
from prompt_processing.settings import (
    FLOW_RUN_SECTIONS,
    ActivatorSettings,
    InstrumentSettings,
    KafkaSettings,
    MetricsSettings,
    PrefectSettings,
    QueueSettings,
    RedisSettings,
    RouterSettings,
    S3Settings,
    Settings,
    StackSettings,
    VisitSettings,
    export_env,
)  # fmt: skip
from tasks.visit import run_visit_detector

_BASELINE_CONTEXT: dict[str, ProcessingContext] = {}  # the subflow baseline's shared clients (bench only)


@flow(name="visit-subflow", flow_run_name="{group}-det{detector:03d}")
def visit_subflow(group: str, detector: int, visit: dict[str, Any]) -> dict[str, Any]:
    """The baseline: the same steps as our visit task, as a subflow of the looping flow."""
    return run_visit_detector(_BASELINE_CONTEXT["ctx"], NextVisit.from_json(json.dumps(visit)), detector).record()


@flow(name="subflow-activator")
def subflow_activator(instrument: str, n_visits: int) -> None:
    """The activator loop with a subflow per visit-detector instead of a task run."""
    settings = Settings()
    ctx = _BASELINE_CONTEXT.setdefault("ctx", ProcessingContext(settings, "baseline"))
    contract = QueueContract.for_instrument(instrument, QueueSettings(claim_idle_s=30, max_deliveries=3))
    queue = WorkQueue(ctx.redis, instrument, f"baseline-{uuid.uuid4().hex[:6]}", contract, block_s=0.5,
                      results_retention_s=3600)  # fmt: skip
    queue.ensure_group()
    done = 0
    while done < n_visits:
        item = queue.next()
        if item is None:
            continue
        start = time.perf_counter()
        visit = json.loads(item.entry.visit.model_dump_json())
        record = visit_subflow(item.entry.visit.groupId, item.entry.detector, visit)
        wall_s = time.perf_counter() - start
        steps = record["steps_s"]
        overhead_s = wall_s - steps.get("process", 0) - steps.get("wait", 0)
        pickup_ms = record["started_at"] * 1e3 - item.queued_at_ms
        queue.finish(item, record | {"wall_s": wall_s, "pickup_ms": pickup_ms, "overhead_s": overhead_s})
        done += 1
    queue.close()


class Harness:
    """Its own embedded stack, a router thread, and helpers to play visits one at a time."""

    def __init__(self, settings: Settings, router: KafkaService) -> None:
        self.settings = settings
        self.router = router
        self._router_thread = threading.Thread(target=self._route, daemon=True)
        self._router_thread.start()
        self.pointing = plan_visits(LATISS, 1)[0]
        self.client = make_redis(settings.redis, settings.retry, name="bench-harness")
        # One long-lived producer, like the S3 service's notifier: a new idempotent producer's
        # first message waits ~0.5 s for its producer id, which is not what we measure.
        self.producer = kafka.make_producer(settings.kafka)

    @classmethod
    def start(cls, state: Path, prefect_port: int) -> Harness:
        settings = Settings(
            redis=RedisSettings(port=free_port()), kafka=KafkaSettings(port=free_port()),
            s3=S3Settings(port=free_port()), prefect=PrefectSettings(port=prefect_port),
            router=RouterSettings(http_port=0, poll_timeout_s=0.1),
            queue=QueueSettings(claim_idle_s=60), activator=ActivatorSettings(idle_timeout_s=30, block_s=0.5),
            visit=VisitSettings(step_retries=0, image_timeout_s=60),
            instruments={"LATISS": InstrumentSettings()}, stack=StackSettings(state_dir=state),
            metrics=MetricsSettings(router_port=0),  # beside a demo or another benchmark
        )  # fmt: skip
        os.environ |= export_env(settings, *FLOW_RUN_SECTIONS)
        Stack(settings).up()
        try:
            k = settings.kafka
            kafka.ensure_topics(k, [k.raw_notifications_topic, k.raw_dead_letter_topic, k.butler_writer_topic,
                                    k.alerts_topic])  # fmt: skip
            router = RouterService(settings)
            router.startup()
        except BaseException:
            Stack(settings).down()  # what it started, not left running
            raise
        return cls(settings, router)

    def _route(self) -> None:
        while not self.router.should_exit:
            self.router.tick()

    def stop(self) -> None:
        self.router.request_exit()
        self._router_thread.join(10)
        self.router.shutdown()
        self.client.close()
        Stack(self.settings).down()

    def seed(self, size_px: int) -> None:
        """Calibrations and template at ``size_px`` in a central repository of that size; point workers at it."""
        central = str(Path(self.settings.stack.state_dir).resolve() / "butler" / f"central-{size_px}")
        self.settings = self.settings.model_copy(
            update={"butler": self.settings.butler.model_copy(update={"central_repo": central})}
        )
        os.environ["PP_BUTLER__CENTRAL_REPO"] = central
        client = s3.make_client(self.settings.s3)
        s3.ensure_buckets(client, [self.settings.s3.raw_bucket, self.settings.s3.truth_bucket])
        client.close()
        self.plan = NightPlan(LATISS, (0,), 1, 1.0, 20.0, 1.0, (size_px, size_px), 4)
        seed_central_repo(self.settings, self.plan, [self.pointing])

    def visit(self, group: str) -> dict[str, Any]:
        body = next_visit_message(LATISS, self.pointing, now_utc_s=time.time(), lead_s=20, seq_num=1)
        return body | {"groupId": group, "startTime": time.time() + TAI_MINUS_UTC_S, "nimages": 1, "duration": 1.0}

    def announce(self, body: dict[str, Any]) -> None:
        writer = StreamFanOut(self.client, dedup_ttl_s=3600, stream_maxlen=100_000)
        writer.write(NextVisit.from_json(json.dumps(body)), "LATISS", (0,))

    def land(self, body: dict[str, Any]) -> None:
        client = s3.make_client(self.settings.s3)
        upload_raw(self.settings, self.plan, body, 0, 0, int(time.time() * 1000) % 1_000_000, self.producer, client)
        client.close()
        self.producer.flush(10)

    def results_count(self) -> int:
        client = make_redis(self.settings.redis, self.settings.retry, name="bench")
        try:
            return len(read_results(client, "LATISS"))
        finally:
            client.close()

    def last_results(self, n: int) -> list[dict[str, str]]:
        client = make_redis(self.settings.redis, self.settings.retry, name="bench")
        try:
            return read_results(client, "LATISS")[-n:]
        finally:
            client.close()

    def run_structure(self, name: str, n: int, progress: Progress, *, subflow: bool) -> dict[str, Any]:
        """``n`` visit-detectors whose image is already there, announced one at a time to an idle worker."""
        self.seed(512)
        target: Callable[[], object] = (
            (lambda: subflow_activator("LATISS", n)) if subflow else (lambda: activator("LATISS", max_visits=n))
        )
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        task = progress.add_task(name, total=n)
        for i in range(n):
            before = self.results_count()
            body = self.visit(f"{'sub' if subflow else 'task'}-{uuid.uuid4().hex[:8]}-{i}")
            self.land(body)
            time.sleep(0.3)  # the router has recorded presence; the worker is idle in XREADGROUP
            self.announce(body)
            _wait(lambda before=before: self.results_count() > before, 120, f"visit {i}")  # type: ignore[misc]
            progress.advance(task)
        thread.join(60)
        return _summary(name, self.last_results(n))

    def end_to_end(self, size_px: int, n: int, progress: Progress) -> dict[str, Any]:
        """Image landed -> alerts sent, for images landing while the worker waits for them."""
        self.seed(size_px)
        thread = threading.Thread(target=lambda: activator("LATISS", max_visits=n), daemon=True)
        thread.start()
        task = progress.add_task(f"end to end, {size_px} x {size_px}", total=n)
        for i in range(n):
            before = self.results_count()
            body = self.visit(f"e2e{size_px}-{uuid.uuid4().hex[:8]}-{i}")
            self.announce(body)
            time.sleep(1.0)  # the worker has picked the entry and waits on its arrival list
            self.land(body)
            _wait(lambda before=before: self.results_count() > before, 300, f"visit {i}")  # type: ignore[misc]
            progress.advance(task)
        thread.join(60)
        results = self.last_results(n)
        return {
            "latency_s": [landed_to_alerts_s(r) for r in results],
            "compute_s": [json.loads(r["steps_s"])["process"] for r in results],
        }


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark stalled waiting for {what}")
        time.sleep(0.005)


def _summary(name: str, results: list[dict[str, str]]) -> dict[str, Any]:
    ok = [r for r in results if r["status"] == "succeeded"]
    if len(ok) != len(results):
        raise RuntimeError(f"{name}: {len(results) - len(ok)} visit-detectors did not succeed: {results[:1]}")
    return {
        "name": name,
        "overhead_s": [float(r["overhead_s"]) for r in ok],
        "bookkeeping_s": [float(r["wall_s"]) - sum(json.loads(r["steps_s"]).values()) for r in ok],
        "pickup_ms": [float(r["pickup_ms"]) for r in ok],
    }
