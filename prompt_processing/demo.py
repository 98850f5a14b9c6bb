"""`make demo`: a local night end to end on the embedded stack.

Brings up the stack (Redis, the Kafka-protocol broker, moto S3, the Prefect server), registers
the deployments (`prefect deploy --all`), starts the fan-out, the arrival router and a Prefect
worker as processes, starts a fixed number of activator flow runs, then plays a night: N visits
x K detectors of LSSTCam, with images landing at the end of each exposure, plus a redelivered
visit and four bad next-visit messages. It waits for every visit-detector's outcome, prints the
report (latency image landed -> alerts sent, transients injected vs recovered, failures, the
Prefect UI address) and stops everything it started; services already running are left alone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import redis
from rich.console import Console

from prompt_processing import deploy, kafka, naming, s3
from prompt_processing.demo_report import NightReport, print_report
from prompt_processing.instruments import LSSTCAM
from prompt_processing.night import NightPlan, run_night
from prompt_processing.service import read_health
from prompt_processing.settings import InstrumentSettings, Settings, WorkerSettings, to_env
from prompt_processing.stack import Stack

DEMO_DETECTORS = (94, 95, 96, 97)  # around the focal-plane centre (R22_S11 ...)
BAD_AND_REPEATED_MESSAGES = 5  # see _send_redelivery_and_bad_messages


def demo_settings(settings: Settings, n_detectors: int) -> Settings:
    """The user's settings with LSSTCam narrowed to the demo's detectors and short worker timeouts."""
    detectors = list(DEMO_DETECTORS[:n_detectors]) if n_detectors <= len(DEMO_DETECTORS) else list(range(n_detectors))
    worker = settings.worker.model_dump() | {"idle_timeout_s": 30.0, "image_timeout_s": 20.0, "claim_idle_s": 10.0}
    return settings.model_copy(
        update={
            "instruments": {"LSSTCam": InstrumentSettings(only_detectors=detectors)},
            "worker": WorkerSettings(**worker),
        }
    )


def run_demo(settings: Settings, *, visits: int, detectors: int, workers: int, size_px: int) -> int:
    console = Console(width=None if sys.stdout.isatty() else 120)
    settings = demo_settings(settings, detectors)
    stack = Stack(settings)
    already = {s.name for s in stack.status() if s.state in ("running", "external")}
    with console.status("starting the embedded stack (the Prefect server takes ~20 s)"):
        stack.up()
    started_here = [s for s in ("redis", "kafka", "s3", "prefect") if s not in already]
    client = redis.Redis.from_url(settings.redis.url)
    try:
        with _services(settings, console) as logs:
            groups, expected = _night(settings, console, visits, workers, size_px, client)
            report = NightReport.collect(settings, client, groups, expected)
            print_report(console, settings, report, logs)
    finally:
        client.close()
        if started_here:
            stack.down(started_here)
            console.print(f"stopped what the demo started: {', '.join(started_here)}")
    return 0 if report.complete else 1


def _night(
    settings: Settings, console: Console, visits: int, workers: int, size_px: int, client: redis.Redis
) -> tuple[list[str], int]:
    """Start the activators, play the night, wait for the outcomes; return (groups, outcomes expected)."""
    run_ids = [
        deploy.run_deployment(settings, "activator/activator-lsstcam", {"instrument": "LSSTCam"}, tags=["demo"])
        for _ in range(workers)
    ]
    console.print(f"started {len(run_ids)} activator flow runs; the night begins")
    active = settings.instruments["LSSTCam"].only_detectors or []
    plan = NightPlan(LSSTCAM, tuple(active), visits, 10.0, 20.0, 5.0, (size_px, size_px), 5, seed=int(time.time()))
    before = client.xlen(naming.results_stream("LSSTCam"))
    sent = run_night(settings, plan)
    _send_redelivery_and_bad_messages(settings, sent[0])
    expected = before + visits * len(active)
    deadline = time.monotonic() + 60 + 2 * plan.duration_s

    def done() -> bool:
        fanout = read_health(client, "fanout", settings.fanout.consumer_name or socket.gethostname()) or {}
        handled_all = fanout.get("received", 0) >= visits + BAD_AND_REPEATED_MESSAGES
        return handled_all and client.xlen(naming.results_stream("LSSTCam")) >= expected

    with console.status(f"waiting for {visits * len(active)} visit-detector outcomes"):
        while not done() and time.monotonic() < deadline:
            time.sleep(0.5)
    return [body["groupId"] for body in sent], visits * len(active)


@contextmanager
def _services(settings: Settings, console: Console) -> Iterator[Path]:
    """Deployments registered; fan-out, router and a Prefect worker running until the block ends."""
    logs = Path(settings.stack.state_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    k = settings.kafka
    kafka.ensure_topics(k, [k.next_visit_topic, k.dead_letter_topic, k.raw_notifications_topic,
                            k.raw_dead_letter_topic, k.butler_writer_topic, k.alerts_topic])  # fmt: skip
    client = s3.make_client(settings.s3)
    s3.ensure_buckets(client, [settings.s3.raw_bucket, settings.s3.central_bucket, settings.s3.outputs_bucket])
    client.close()
    with console.status("registering deployments (prefect deploy --all)"):
        deploy.deploy_all(settings, log=logs / "deploy.log")
    env = os.environ | to_env(settings) | deploy.prefect_env(settings)
    commands = {
        "fanout": [sys.executable, "-m", "prompt_processing.cli", "fanout"],
        "router": [sys.executable, "-m", "prompt_processing.cli", "router"],
        "worker": deploy.worker_command(settings),
    }
    with ExitStack() as stack:
        for name, command in commands.items():
            log = stack.enter_context((logs / f"{name}.log").open("ab"))
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            stack.callback(_stop, process)
        yield logs


def _send_redelivery_and_bad_messages(settings: Settings, first_visit: dict[str, Any]) -> None:
    """A visit sent twice (de-duplicated) and one message of each dead-letter kind."""
    stale = first_visit | {"groupId": "stale-visit", "private_efdStamp": time.time() - 4 * 3600}
    messages = [
        json.dumps(first_visit).encode(),
        b'{"instrument": "LSSTCam", "groupId": ',  # truncated JSON
        json.dumps(first_visit | {"groupId": 20261128, "nimages": "two"}).encode(),
        json.dumps(first_visit | {"groupId": "decam-1", "instrument": "DECam"}).encode(),
        json.dumps(stale).encode(),
    ]
    producer = kafka.make_producer(settings.kafka)
    for raw in messages:
        producer.produce(settings.kafka.next_visit_topic, raw)
    if producer.flush(10.0):
        raise RuntimeError("Kafka did not confirm the demo's extra messages")


def _stop(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
