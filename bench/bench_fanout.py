"""Fan-out benchmarks: `make bench` (python -m bench.bench_fanout --output BENCHMARKS.md).

Starts its own Redis and Kafka-protocol broker on free ports, then measures in one run:

1. Writing one LSSTCam visit (189 entries) to Redis, five ways, interleaved round by round
   so machine noise hits all alike: one XADD per round trip (the baseline), redis-py's
   MULTI/EXEC pipeline, today's client before issue 13 (hand-packed WATCH + MULTI/EXEC with
   de-duplication, two round trips: ``bench.fanout_baseline``), ours (``StreamFanOut``: one
   server-side script doing the de-duplication, the group, the XADDs and the key, through
   redis-py), and a server-side Lua script doing only the XADDs (the floor: no per-command
   traffic, nothing else done). Targets for ours: p50 within 1.2x of the floor's, p99 <= 5 ms.
2. The fan-out service end to end, per visit: Kafka message received -> Redis confirmed
   all 189 entries (the service's own measurement), at a paced 20 visits/s.
3. Sustained throughput: visits produced as fast as the producer can, fanned out by one
   warm service, first produce -> last visit confirmed.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import redis
from redis.typing import EncodableT, FieldT
from rich.progress import Progress

from bench.fanout_baseline import PackedMultiExecFanOut, RespConnection
from pp_devkit.sim import next_visit_message, plan_visits
from pp_devkit.stack import Stack, free_port
from prompt_processing.adapters import kafka
from prompt_processing.adapters.redis_client import make_redis
from prompt_processing.adapters.streams import StreamFanOut
from prompt_processing.model.events import NextVisit
from prompt_processing.model.instruments import LSSTCAM
from prompt_processing.services.fanout import FanOutService
from prompt_processing.settings import FanoutSettings, KafkaSettings, RedisSettings, Settings, StackSettings

DETECTORS = tuple(range(189))
BASELINE = "one XADD per round trip (baseline)"
TODAY = "today's client: hand-packed WATCH + MULTI/EXEC + dedup, 2 round trips"
OURS = "StreamFanOut: server-side script + dedup, 1 round trip (ours)"  # bench.compare_fanout reads this row
FLOOR = "server-side Lua script, XADDs only (floor)"
LUA_XADD = """
local n = tonumber(ARGV[1])
local args = {'XADD', KEYS[1], '*'}
for i = 2, 1 + 2 * n do args[#args + 1] = ARGV[i] end
args[#args + 1] = 'detector'
local last = #args + 1
for i = 2 + 2 * n, #ARGV do
  args[last] = ARGV[i]
  redis.call(unpack(args))
end
return #ARGV - 1 - 2 * n
"""


def _visit(group_id: str) -> NextVisit:
    plan = plan_visits(LSSTCAM, 1, seed=1)[0]
    body = next_visit_message(LSSTCAM, plan, now_utc_s=time.time(), lead_s=25, seq_num=1)
    return NextVisit.model_validate_json(json.dumps(body | {"groupId": group_id}))


def _write_methods(client: redis.Redis, settings: Settings) -> dict[str, Callable[[NextVisit], None]]:
    today = PackedMultiExecFanOut(RespConnection(settings.redis), dedup_ttl_s=3600, stream_maxlen=1_000_000)
    writer = StreamFanOut(client, dedup_ttl_s=3600, stream_maxlen=1_000_000)
    writer.load()
    lua = client.register_script(LUA_XADD)

    def one_by_one(visit: NextVisit) -> None:
        fields: dict[FieldT, EncodableT] = {k: v for k, v in visit.stream_fields().items()}
        for d in DETECTORS:
            client.xadd("bench:one-by-one", {**fields, "detector": str(d)})

    def redis_py_pipeline(visit: NextVisit) -> None:
        fields: dict[FieldT, EncodableT] = {k: v for k, v in visit.stream_fields().items()}
        pipe = client.pipeline(transaction=True)
        for d in DETECTORS:
            pipe.xadd("bench:pipeline", {**fields, "detector": str(d)})
        pipe.execute()

    def todays_client(visit: NextVisit) -> None:
        assert today.write(visit, "LSSTCam", DETECTORS) == len(DETECTORS)

    def ours(visit: NextVisit) -> None:
        assert writer.write(visit, "LSSTCam", DETECTORS) == len(DETECTORS)

    def lua_floor(visit: NextVisit) -> None:
        fields = visit.stream_fields()
        flat = [x for kv in fields.items() for x in kv]
        lua(keys=["bench:lua"], args=[len(fields), *flat, *DETECTORS])

    return {
        BASELINE: one_by_one,
        "redis-py MULTI/EXEC pipeline": redis_py_pipeline,
        TODAY: todays_client,
        OURS: ours,
        FLOOR: lua_floor,
    }


def bench_writes(client: redis.Redis, settings: Settings, rounds: int, progress: Progress) -> dict[str, list[float]]:
    methods = _write_methods(client, settings)
    samples: dict[str, list[float]] = {name: [] for name in methods}
    task = progress.add_task("Redis writes, 189 entries", total=rounds)
    for r in range(rounds):
        for name, method in methods.items():
            visit = _visit(f"w-{r}-{uuid.uuid4().hex[:6]}")
            start = time.perf_counter()
            method(visit)
            samples[name].append((time.perf_counter() - start) * 1e3)
        if r % 50 == 49:  # keep the streams small so all rounds see the same Redis
            client.delete("bench:one-by-one", "bench:pipeline", "bench:lua", "instrument:lsstcam")
        progress.advance(task)
    return samples


def _service(settings: Settings) -> tuple[FanOutService, threading.Thread]:
    service = FanOutService(settings)
    service.startup()

    def loop() -> None:
        while not service.should_exit:
            service.tick()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return service, thread


def _wait(predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark stalled")
        time.sleep(0.001)


def bench_service(settings: Settings, paced: int, burst: int, progress: Progress) -> dict[str, float]:
    """Latency at a paced rate, then throughput of a burst, through one warm service."""
    kafka.ensure_topics(settings.kafka, [settings.kafka.next_visit_topic, settings.kafka.dead_letter_topic])
    producer = kafka.make_producer(settings.kafka)
    service, thread = _service(settings)
    plan = plan_visits(LSSTCAM, 1, seed=2)[0]

    def send(group_id: str) -> None:
        body = next_visit_message(LSSTCAM, plan, now_utc_s=time.time(), lead_s=25, seq_num=1)
        producer.produce(settings.kafka.next_visit_topic, json.dumps(body | {"groupId": group_id}).encode())

    try:
        send("warm-up")
        producer.flush(10)
        _wait(lambda: service.stats.fanned_out == 1, 60)  # group joined, connections warm
        service.stats.latencies_ms.clear()
        task = progress.add_task("fan-out service, paced 20 visits/s", total=paced)
        for i in range(paced):
            send(f"paced-{i}")
            producer.flush(10)
            time.sleep(0.05)
            progress.advance(task)
        _wait(lambda: service.stats.fanned_out == 1 + paced, 60)
        latencies = service.stats.latencies_ms.values()
        task = progress.add_task("fan-out service, burst", total=burst)
        start = time.perf_counter()
        for i in range(burst):
            send(f"burst-{i}")
            producer.poll(0)
        producer.flush(30)
        done = 1 + paced + burst
        while service.stats.fanned_out < done:
            progress.update(task, completed=service.stats.fanned_out - 1 - paced)
            time.sleep(0.01)
        elapsed_s = time.perf_counter() - start
        progress.update(task, completed=burst)
    finally:
        service.request_exit()
        thread.join(30)
        service.shutdown()
    return {
        "latency_p50_ms": float(np.percentile(latencies, 50)),
        "latency_p99_ms": float(np.percentile(latencies, 99)),
        "latency_max_ms": max(latencies),
        "paced_visits": paced,
        "burst_visits": burst,
        "throughput_visits_s": burst / elapsed_s,
        "burst_elapsed_s": elapsed_s,
    }


def _plot(samples: dict[str, list[float]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, values in samples.items():
        ordered = sorted(values)
        ax.plot(ordered, [i / len(ordered) for i in range(len(ordered))], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("time to write one LSSTCam visit, 189 entries (ms, log scale)")
    ax.set_ylabel("fraction of visits")
    ax.set_title("Fan-out write latency (cumulative), same run, interleaved")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _server_ms_per_visit(client: redis.Redis, method: Callable[[], object], n: int, commands: set[str]) -> float:
    """Redis' own time for ``commands`` (INFO commandstats) per call of ``method``, in ms."""
    client.config_resetstat()
    for _ in range(n):
        method()
    stats = client.info("commandstats")
    usec = sum(v["usec"] for k, v in stats.items() if k.removeprefix("cmdstat_").split("|")[0] in commands)
    return float(usec) / n / 1e3


def bench_server_time(client: redis.Redis, settings: Settings, n: int) -> dict[str, float]:
    """Redis' own time per visit: our script as a whole and the commands inside it; today's client's commands."""
    writer = StreamFanOut(client, dedup_ttl_s=3600, stream_maxlen=1_000_000)
    connection = RespConnection(settings.redis)
    today = PackedMultiExecFanOut(connection, dedup_ttl_s=3600, stream_maxlen=1_000_000)
    inside = {"exists", "xgroup", "xadd", "set"}

    def ours() -> int:
        return writer.write(_visit(uuid.uuid4().hex), "LSSTCam", DETECTORS)

    def todays() -> int:
        return today.write(_visit(uuid.uuid4().hex), "LSSTCam", DETECTORS)

    try:
        return {
            "script_ms": _server_ms_per_visit(client, ours, n, {"evalsha"}),
            "script_commands_ms": _server_ms_per_visit(client, ours, n, inside),
            "today_ms": _server_ms_per_visit(client, todays, n, inside),
        }
    finally:
        connection.close()


def render(samples: dict[str, list[float]], service: dict[str, float], server: dict[str, float], plot: str) -> str:
    p50s = {name: float(np.percentile(values, 50)) for name, values in samples.items()}
    p99s = {name: float(np.percentile(values, 99)) for name, values in samples.items()}
    to_floor = p50s[OURS] / p50s[FLOOR]
    lines = [
        "## Fan-out (issue 2)",
        "",
        f"Command: `make bench` (`python -m bench.bench_fanout --output BENCHMARKS.md`), run "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, redis-server on loopback, Tansu broker on loopback).",
        "",
        f"### Writing one LSSTCam visit (189 entries) to Redis, {len(samples[OURS])} interleaved rounds",
        "",
        "Ours is the fan-out's writer since issue 13 (one server-side script through redis-py); today's client is "
        "the one it replaced (`bench/fanout_baseline.py`), measured in the same run.",
        "",
        "| method | p50 ms | p99 ms | p50 speed-up vs baseline |",
        "|---|---:|---:|---:|",
    ]
    for name in samples:
        lines.append(f"| {name} | {p50s[name]:.2f} | {p99s[name]:.2f} | {p50s[BASELINE] / p50s[name]:.1f}x |")
    lines += [
        "",
        "| ours against | value | target |",
        "|---|---:|---:|",
        f"| p50 / the floor's p50 | {to_floor:.2f}x | <= 1.2x{'' if to_floor <= 1.2 else ' (missed)'} |",
        f"| p99 | {p99s[OURS]:.2f} ms | <= 5 ms{'' if p99s[OURS] <= 5 else ' (missed)'} |",
        f"| p50 / today's client's p50 | {p50s[OURS] / p50s[TODAY]:.2f}x | |",
        "",
        f"![write latency]({plot})",
        "",
        f"Redis' own time per visit (INFO commandstats): our script {server['script_ms']:.2f} ms as a whole "
        f"(EVALSHA, the commands it calls included), of which EXISTS + XGROUP + 189 XADD + SET "
        f"{server['script_commands_ms']:.2f} ms, the rest Lua building and dispatching them; today's client's "
        f"commands {server['today_ms']:.2f} ms. The rest of our p50 is one loopback round trip and redis-py "
        "packing one EVALSHA of ~200 arguments; today's client's is two round trips (WATCH + EXISTS, then the "
        "transaction) and 192 replies to read.",
        "",
        "### The fan-out service, end to end (Kafka message received -> Redis confirmed all 189 entries)",
        "",
        "| measure | value | target |",
        "|---|---:|---:|",
        f"| latency p50 ({service['paced_visits']:.0f} visits paced at 20/s) | "
        f"{service['latency_p50_ms']:.2f} ms | <= 3 ms |",
        f"| latency p99 | {service['latency_p99_ms']:.2f} ms | <= 10 ms |",
        f"| latency max | {service['latency_max_ms']:.2f} ms | |",
        f"| sustained throughput ({service['burst_visits']:.0f} visits in a burst, one process) | "
        f"{service['throughput_visits_s']:.0f} visits/s | >= 300 visits/s |",
        "",
        "What bounds it: one fan-out process is single-threaded Python; per visit it validates the event, sends "
        "one script call for 189 XADDs and waits for Redis, so the service runs at roughly 1 / (our write p50) "
        "visits/s. "
        "Redis itself is far from saturated (the server-side time above). More throughput would come from "
        "more partitions of `next-visit` and one fan-out per partition; LSSTCam needs one visit per ~36 s.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--paced", type=int, default=300)
    parser.add_argument("--burst", type=int, default=3000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pp-bench-") as state:
        tag = uuid.uuid4().hex[:6]
        settings = Settings(
            redis=RedisSettings(port=free_port()),
            kafka=KafkaSettings(
                port=free_port(), next_visit_topic=f"bench-nv-{tag}", dead_letter_topic=f"bench-dl-{tag}"
            ),
            fanout=FanoutSettings(group_id=f"bench-{tag}", consumer_name="bench"),
            stack=StackSettings(state_dir=Path(state)),
        )
        stack = Stack(settings)
        stack.up(["redis", "kafka"])
        try:
            client = make_redis(settings.redis, settings.retry, name="bench")
            with Progress() as progress:
                samples = bench_writes(client, settings, args.rounds, progress)
                server = bench_server_time(client, settings, 50)
                client.flushdb()
                service = bench_service(settings, args.paced, args.burst, progress)
            client.close()
        finally:
            stack.down(["redis", "kafka"])

    plot = Path("bench/results/fanout_write_latency.png")
    _plot(samples, plot)
    section = render(samples, service, server, str(plot))
    _replace_section(args.output, section)
    print(section)
    return 0


def _replace_section(path: Path, section: str) -> None:
    """Write this benchmark's section into BENCHMARKS.md, keeping other benchmarks' sections."""
    title = section.splitlines()[0]
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEach section says the command that produced it.\n\n"
    if title in text:
        start = text.index(title)
        following = text.find("\n## ", start + len(title))
        end = len(text) if following < 0 else following + 1
        text = text[:start] + section + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
