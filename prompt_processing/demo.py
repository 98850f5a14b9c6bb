"""`make demo`: a short simulated night on the embedded stack, ending in a summary table.

Brings up what it needs (Redis, the Kafka-protocol broker), runs the fan-out as its own
process, sends a night of NextVisit events for LSSTCam, LATISS and HSC plus a redelivered
visit and four bad messages, waits until the fan-out has handled them all, prints what
happened, and stops everything it started (services already running are left running).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from prompt_processing import naming
from prompt_processing.instruments import active_detector_table, get_instrument
from prompt_processing.kafka import ensure_topics, make_producer
from prompt_processing.settings import Settings
from prompt_processing.sim import send_visits
from prompt_processing.stack import Stack

NEEDED = ["redis", "kafka"]
DEMO_FANOUT_NAME = "pp-demo-fanout"


def run_demo(settings: Settings, *, lsstcam_visits: int, cadence_s: float) -> int:
    console = Console(width=None if sys.stdout.isatty() else 120)
    stack = Stack(settings)
    already = {s.name for s in stack.status(NEEDED) if s.state in ("running", "external")}
    stack.up(NEEDED)
    started_here = [name for name in NEEDED if name not in already]
    k = settings.kafka
    ensure_topics(k, [k.next_visit_topic, k.dead_letter_topic])
    client = redis.Redis.from_url(settings.redis.url)
    fanout = _start_fanout(settings)
    try:
        plan = {"LSSTCam": lsstcam_visits, "LATISS": max(1, lsstcam_visits // 4), "HSC": max(1, lsstcam_visits // 4)}
        before = {name: client.xlen(naming.stream_name(name)) for name in plan}
        sent: dict[str, list[dict[str, Any]]] = {}
        for name, n in plan.items():
            instrument = get_instrument(name)
            assert instrument is not None
            sent[name] = send_visits(k, instrument, n, cadence_s=cadence_s, seed=len(sent))
        extra = _send_redelivery_and_bad_messages(settings, sent["LSSTCam"][0])
        total = sum(len(v) for v in sent.values()) + extra
        health = _wait_for_fanout(client, total, console)
        _print_summary(console, settings, client, sent, before, health)
    finally:
        _stop(fanout)
        client.close()
        if started_here:
            stack.down(started_here)
            console.print(f"stopped what the demo started: {', '.join(started_here)}")
    return 0


def _start_fanout(settings: Settings) -> subprocess.Popen[bytes]:
    log_dir = Path(settings.stack.state_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = (log_dir / "fanout.log").open("ab")
    env = os.environ | {"PP_FANOUT__CONSUMER_NAME": DEMO_FANOUT_NAME}
    command = [sys.executable, "-m", "prompt_processing.cli", "fanout"]
    return subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)


def _send_redelivery_and_bad_messages(settings: Settings, first_visit: dict[str, Any]) -> int:
    """A visit sent twice (de-duplicated) and one message of each dead-letter kind."""
    stale = first_visit | {"groupId": "stale-visit", "private_efdStamp": time.time() - 4 * 3600}
    messages = [
        json.dumps(first_visit).encode(),
        b'{"instrument": "LSSTCam", "groupId": ',  # truncated JSON
        json.dumps(first_visit | {"groupId": 20261128, "nimages": "two"}).encode(),
        json.dumps(first_visit | {"groupId": "decam-1", "instrument": "DECam"}).encode(),
        json.dumps(stale).encode(),
    ]
    producer = make_producer(settings.kafka)
    for raw in messages:
        producer.produce(settings.kafka.next_visit_topic, raw)
    if producer.flush(10.0):
        raise RuntimeError("Kafka did not confirm the demo's extra messages")
    return len(messages)


def _wait_for_fanout(client: redis.Redis, total: int, console: Console, timeout_s: float = 90.0) -> dict[str, Any]:
    key = naming.fanout_health_key(DEMO_FANOUT_NAME)
    deadline = time.monotonic() + timeout_s
    health: dict[str, Any] = {}
    with console.status(f"waiting for the fan-out to handle {total} messages"):
        while time.monotonic() < deadline:
            raw = client.get(key)
            health = json.loads(raw) if raw else {}
            if health.get("received", 0) >= total:
                return health
            time.sleep(0.2)
    raise RuntimeError(f"the fan-out handled {health.get('received', 0)} of {total} messages in {timeout_s} s")


def _print_summary(
    console: Console,
    settings: Settings,
    client: redis.Redis,
    sent: dict[str, list[dict[str, Any]]],
    before: dict[str, int],
    health: dict[str, Any],
) -> None:
    active = active_detector_table(settings.instruments)
    table = Table(title="Simulated night: next-visit fan-out")
    for column in ("instrument", "visits", "active detectors", "stream", "new entries", "expected"):
        table.add_column(column, justify="right")
    for name, bodies in sent.items():
        stream = naming.stream_name(name)
        new = client.xlen(stream) - before[name]
        expected = len(bodies) * len(active[name])
        style = "green" if new == expected else "red"
        table.add_row(name, str(len(bodies)), str(len(active[name])), stream, f"[{style}]{new}[/]", str(expected))
    console.print(table)

    facts = Table(show_header=False, title="Fan-out")
    facts.add_row("messages handled", str(health["received"]))
    facts.add_row("visits fanned out", str(health["fanned_out"]))
    facts.add_row("redelivered visits skipped (de-duplicated)", str(health["duplicates"]))
    dead = health["dead_lettered"]
    facts.add_row("dead-lettered", f"{sum(dead.values())} ({', '.join(f'{k}: {v}' for k, v in sorted(dead.items()))})")
    facts.add_row("latency p50 (received -> Redis confirmed)", f"{health['latency_ms_p50']:.2f} ms")
    facts.add_row("latency p99", f"{health['latency_ms_p99']:.2f} ms")
    facts.add_row("dead-letter topic", settings.kafka.dead_letter_topic)
    console.print(facts)


def _stop(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
