"""`make demo`: a local night end to end on the embedded stack.

Brings up the stack (Redis, the Kafka-protocol broker, moto S3, the Prefect server), registers
the deployments (`pp deploy`), starts the fan-out, the arrival router, the Butler writer, a Prefect
worker, the autoscaler (`pp autoscale`, eager, min 1 activator, max one per detector) and the reporter (the
night's artifacts) as processes, then plays a night: N visits x K detectors of LSSTCam, with
images landing at the end of each exposure, plus a redelivered visit and four bad next-visit
messages. The autoscaler creates activator flow runs as the entries land. The demo waits for
every visit-detector's outcome, then for the activators to exit when idle and the pool to shrink
back to the minimum, prints its report (latency image landed -> alerts sent, transients injected
vs recovered, failures, peak activators and the count after idle, the Prefect UI address), then
the operators' night report (`pp report`: figures, a PNG, the night's artifacts), and stops
everything it started (the autoscaler's last warm run is cancelled); services already running
are left alone.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun
from prefect.settings import temporary_settings
from prefect.states import Cancelled
from rich.console import Console
from rich.table import Table

import prompt_processing.cli
from pp_devkit.demo_report import NightReport, print_report
from pp_devkit.night import NightPlan, run_night
from pp_devkit.stack import Stack
from prompt_processing.adapters import kafka, prefect_api, s3
from prompt_processing.adapters.health import read_health
from prompt_processing.adapters.redis_client import make_redis
from prompt_processing.adapters.results import read_results
from prompt_processing.autoscaler.metrics import UNFINISHED_STATES
from prompt_processing.autoscaler.spec import ScaledJobSpec, dump_specs, parse_specs
from prompt_processing.model import naming
from prompt_processing.model.events import TAI_MINUS_UTC_S, day_obs
from prompt_processing.model.instruments import LSSTCAM
from prompt_processing.settings import ActivatorSettings, InstrumentSettings, QueueSettings, Settings, export_env

DEMO_DETECTORS = (94, 95, 96, 97)  # around the focal-plane centre (R22_S11 ...)
BAD_AND_REPEATED_MESSAGES = 5  # see _send_redelivery_and_bad_messages
ACTIVATOR = naming.activator_deployment("LSSTCam")
MIN_ACTIVATORS = 1
IDLE_TIMEOUT_S = 10.0
CLAIM_IDLE_S = 10.0
CHILD_SETTINGS = ("instruments", "queue", "activator", "butler")
"""What the demo's processes get from its settings on purpose (``export_env``), beyond the user's own ``PP_*``."""


def demo_settings(settings: Settings, n_detectors: int) -> Settings:
    """The user's settings with LSSTCam alone, narrowed to the demo's detectors, and short timeouts."""
    detectors = list(DEMO_DETECTORS[:n_detectors]) if n_detectors <= len(DEMO_DETECTORS) else list(range(n_detectors))
    return settings.model_copy(
        update={
            "instruments": {"LSSTCam": InstrumentSettings(only_detectors=detectors)},
            "queue": QueueSettings(**settings.queue.model_dump() | {"claim_idle_s": CLAIM_IDLE_S}),
            "activator": ActivatorSettings(**settings.activator.model_dump() | {"idle_timeout_s": IDLE_TIMEOUT_S}),
        }
    )


def demo_spec(max_activators: int) -> ScaledJobSpec:
    """LSSTCam's activators as production scales them (eager, lag 1), sized for the demo."""
    (spec,) = parse_specs({"scaledJobs": [{
        "instrument": "LSSTCam", "deployment": ACTIVATOR, "pollingInterval": 1, "scalingStrategy": "eager",
        "minReplicaCount": MIN_ACTIVATORS, "maxReplicaCount": max(max_activators, MIN_ACTIVATORS),
        "triggers": [{"type": "redis-streams", "metadata": {"lagCount": 1}}],
    }]}, source="demo spec")  # fmt: skip
    return spec


def run_demo(settings: Settings, *, visits: int, detectors: int, activators: int | None, size_px: int) -> int:
    """``activators``: the most activator runs at once (the autoscaler's max; default one per detector)."""
    console = Console(width=None if sys.stdout.isatty() else 120)
    settings = demo_settings(settings, detectors)
    spec = demo_spec(activators or detectors)
    stack = Stack(settings)
    already = {s.name for s in stack.status() if s.state in ("running", "external")}
    with console.status("starting the embedded stack (the Prefect server takes ~20 s)"):
        stack.up()
    started_here = [s for s in ("redis", "kafka", "s3", "prefect") if s not in already]
    client = make_redis(settings.redis, settings.retry, name="demo")
    try:
        with demo_services(settings, console, spec) as logs:
            night_started_at = time.time()
            groups, expected, night = _night(settings, console, visits, size_px, client)
            _wait_for_writer(settings, console, client, groups)
            report = NightReport.collect(settings, client, groups, expected)
            pool = _wait_for_minimum(settings, console, spec, night_started_at)
            print_report(console, settings, report, logs)
            _print_pool(console, spec, pool)
            # The operators' night report: outcomes, failures, latency, alerts on the topic, a PNG, artifacts.
            report_args = ["report", "--night", night, "--instrument", "LSSTCam", "--output-dir", str(logs.parent)]
            prompt_processing.cli.main(report_args)
    finally:
        client.close()
        if started_here:
            stack.down(started_here)
            console.print(f"stopped what the demo started: {', '.join(started_here)}")
    return 0 if report.complete else 1


def _night(
    settings: Settings, console: Console, visits: int, size_px: int, client: redis.Redis
) -> tuple[list[str], int, str]:
    """Play the night, wait for the outcomes; return (groups, outcomes expected, the night's dayObs)."""
    console.print("the autoscaler keeps the activator runs; the night begins")
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
    night = day_obs(sent[0]["startTime"] - TAI_MINUS_UTC_S)
    return [body["groupId"] for body in sent], visits * len(active), night


@contextmanager
def demo_services(settings: Settings, console: Console, spec: ScaledJobSpec) -> Iterator[Path]:
    """The demo's services running until the block ends; yields their logs' directory (``<state_dir>/logs``).

    Ensures the topics and buckets, registers the deployments, then starts the fan-out, the router, the
    Butler writer, a Prefect worker, the autoscaler (on ``spec``) and the reporter as child processes, each
    logging to ``<name>.log`` there. On the way out they stop in reverse order; the autoscaler's warm run is
    cancelled once it stopped, before the Prefect worker stops. ``pp demo`` and ``bench.faults`` run on them.

    Each process reads the user's own ``PP_*`` environment plus the demo's changes of
    ``CHILD_SETTINGS``; the activators get the work-queue contract from the autoscaler."""
    logs = Path(settings.stack.state_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    k = settings.kafka
    kafka.ensure_topics(k, [k.next_visit_topic, k.dead_letter_topic, k.raw_notifications_topic,
                            k.raw_dead_letter_topic, k.butler_writer_topic, k.butler_dead_letter_topic,
                            k.alerts_topic])  # fmt: skip
    client = s3.make_client(settings.s3)
    s3.ensure_buckets(client, [settings.s3.raw_bucket, settings.s3.truth_bucket])
    client.close()
    with console.status("registering deployments (prefect deploy --all)"):
        prefect_api.deploy_all(settings, Path.cwd(), log=logs / "deploy.log")
    spec_file = logs / "autoscaler-demo.yaml"
    spec_file.write_text(dump_specs([spec]))
    # The Prefect worker looks for scheduled runs every 2 s (Prefect's default: 10 s).
    env = (prefect_api.prefect_env(settings) | export_env(settings, *CHILD_SETTINGS)
           | {"PREFECT_WORKER_QUERY_SECONDS": "2"})  # fmt: skip
    commands = {
        "fanout": [sys.executable, "-m", "prompt_processing.cli", "fanout"],
        "router": [sys.executable, "-m", "prompt_processing.cli", "router"],
        "butler-writer": [sys.executable, "-m", "prompt_processing.cli", "butler-writer"],
        "prefect-worker": prefect_api.prefect_worker_command(settings),
        "autoscaler": [sys.executable, "-m", "prompt_processing.cli", "autoscale", "--spec", str(spec_file)],
        "reporter": [sys.executable, "-m", "prompt_processing.cli", "reporter"],
    }
    # Runs an earlier demo left unfinished have no process (their Prefect worker is gone) but would count
    # as running for the autoscaler, as a Job stuck Running would for KEDA: retire them first.
    _cancel_unfinished(settings, spec.deployment, "left unfinished by an earlier demo")
    with ExitStack() as stack:
        for name, command in commands.items():
            if name == "autoscaler":  # on the way out, after it stopped and before the Prefect worker stops:
                stack.callback(_cancel_unfinished, settings, spec.deployment, "the demo is over")
            log = stack.enter_context((logs / f"{name}.log").open("ab"))
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            stack.callback(_stop, process)
        yield logs


def _wait_for_writer(settings: Settings, console: Console, client: redis.Redis, groups: list[str]) -> None:
    """Wait (up to 60 s) until the Butler writer ingested an event per succeeded visit-detector of the night."""
    wanted = set(groups)
    succeeded = sum(r["status"] == "succeeded" and r["group"] in wanted for r in read_results(client, "LSSTCam"))
    name = settings.butler.writer_name or socket.gethostname()
    deadline = time.monotonic() + 60
    with console.status(f"waiting for the Butler writer to ingest {succeeded} visit-detectors' outputs"):
        while (read_health(client, "butler-writer", name) or {}).get("events", 0) < succeeded:
            if time.monotonic() > deadline:
                console.print("[yellow]the Butler writer did not ingest every output within 60 s[/]")
                return
            time.sleep(0.5)


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


@dataclass(frozen=True)
class PoolReport:
    """The activator runs of the night, as Prefect recorded them."""

    created: int
    peak_running: int
    unfinished_after_idle: int
    back_to_min_s: float | None  # after the last outcome; None if it did not happen in time


def _wait_for_minimum(settings: Settings, console: Console, spec: ScaledJobSpec, since: float) -> PoolReport:
    """Wait until every activator run of the night exited and only ``min`` runs are not finished."""
    done_at = time.time()
    deadline = time.monotonic() + IDLE_TIMEOUT_S + 60

    def back_to_min(runs: list[FlowRun]) -> bool:
        night = [r for r in runs if r.start_time is not None and r.start_time.timestamp() < done_at]
        return all(_final(r) for r in night) and sum(not _final(r) for r in runs) == spec.min_replica_count

    with temporary_settings(prefect_api.client_settings(settings)), get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(spec.deployment).id
        recent = FlowRunFilterExpectedStartTime(after_=datetime.fromtimestamp(since - 60, tz=UTC))
        runs_filter = FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
                                    expected_start_time=recent)  # fmt: skip
        with console.status(f"waiting for idle activators to exit (idle timeout {IDLE_TIMEOUT_S:g} s)"):
            runs = client.read_flow_runs(flow_run_filter=runs_filter, limit=200)
            while not (reached := back_to_min(runs)) and time.monotonic() < deadline:
                time.sleep(0.5)
                runs = client.read_flow_runs(flow_run_filter=runs_filter, limit=200)
    return PoolReport(created=len(runs), peak_running=_peak_running(runs),
                      unfinished_after_idle=sum(not _final(r) for r in runs),
                      back_to_min_s=time.time() - done_at if reached else None)  # fmt: skip


def _peak_running(runs: list[FlowRun]) -> int:
    """Most runs Running at the same moment (from their start and end times)."""
    moments: list[tuple[float, int]] = []
    for run in runs:
        if run.start_time is not None:
            moments.append((run.start_time.timestamp(), 1))
            if run.end_time is not None:
                moments.append((run.end_time.timestamp(), -1))
    peak = current = 0
    for _, step in sorted(moments):
        current += step
        peak = max(peak, current)
    return peak


def _print_pool(console: Console, spec: ScaledJobSpec, pool: PoolReport) -> None:
    table = Table(title=f"Autoscaler: {spec.deployment} ({spec.scaling_strategy}, min {spec.min_replica_count}, "
                  f"max {spec.max_replica_count})", show_header=False)  # fmt: skip
    table.add_row("activator runs created / peak running at once", f"{pool.created} / {pool.peak_running}")
    if pool.back_to_min_s is not None:
        after = f"{pool.unfinished_after_idle} not finished, {pool.back_to_min_s:.0f} s after the last outcome"
    else:
        after = f"[red]{pool.unfinished_after_idle} not finished (timed out)[/]"
    table.add_row(f"after {IDLE_TIMEOUT_S:g} s idle (min {spec.min_replica_count})", after)
    console.print(table)


def _cancel_unfinished(settings: Settings, deployment: str, reason: str) -> int:
    """Mark the deployment's unfinished runs Cancelled (the Prefect worker stops any process); return how many."""
    with temporary_settings(prefect_api.client_settings(settings)), get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        unfinished = FlowRunFilterState(type=FlowRunFilterStateType(any_=list(UNFINISHED_STATES)))
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]), state=unfinished), limit=200)  # fmt: skip
        for run in runs:
            client.set_flow_run_state(run.id, Cancelled(message=reason), force=True)
    return len(runs)


def _final(run: FlowRun) -> bool:
    return run.state is not None and run.state.is_final()
