"""Fault injection (``make faults``): python -m bench.faults --output RELIABILITY.md [--repeats 3] [--only NAME ...].

On an embedded stack of its own (state in ``.pp/faults``, free ports, so a demo or the tests can run
beside it), with the demo's services (``pp_devkit.demo``: its settings, its services, its autoscaler
spec) and its night (``pp_devkit.night.run_night``), each repeat plays one small night and injects ONE
fault (``bench.fault_injection``) at a random moment of its processing (once a random 1-75 % of its
visit-detectors are done; the fan-out's while the visits are announced), seeded (the seed is printed and
written). The nights run back to back, overlapped: the next one is announced while the previous one is
processed, and its fault waits until the previous one is measured. Then, from the work, results and
dead-letter streams (copied into memory as they grow, so a Redis that loses its data loses nothing
here) and from the alerts topic, each repeat is measured (``bench.fault_report``: visit-detectors lost,
processed twice, duplicate alerts, recovery; its docstring defines them).

Kafka: the embedded Tansu keeps topics in memory, so a broker restart loses every topic and committed
offset: "stopped 15 s" freezes it (SIGSTOP) instead, and the restart row says it is not survivable
here (with a durable ``PP_KAFKA__STORAGE_ENGINE`` it runs). Tansu's ``s3://`` storage on a second moto
server was tried: it survives a restart, but consumers stalled at holes in its offsets (the router
stopped at offset 17 of 61 in a fault-free night), so it is not used.
Writes its section of the output file and a timeline PNG per fault under ``bench/results/``.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import shutil
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, TaskID

from bench.fault_injection import (
    Injected,
    NotApplicable,
    Recorder,
    Rig,
    fanout_kill,
    kafka_pause,
    kafka_restart,
    kafka_restart_applicable,
    live_visit_detectors,
    postgres_applicable,
    postgres_drop,
    prefect_restart,
    redis_aof_applicable,
    redis_pause,
    redis_restart_aof,
    redis_restart_wiped,
    router_kill,
    s3_pause,
    sigkill_activator,
    writer_kill,
)
from bench.fault_report import (
    RepeatResult,
    Row,
    host,
    measure,
    minutes,
    plot_fault,
    render_section,
    replace_section,
    summarise,
)
from pp_devkit.demo import demo_services, demo_settings, demo_spec
from pp_devkit.night import NightPlan, run_night, seed_central_repo
from pp_devkit.sim import plan_visits
from pp_devkit.stack import Stack, free_port
from prompt_processing.adapters.redis_client import make_redis
from prompt_processing.model.instruments import LSSTCAM
from prompt_processing.settings import ActivatorSettings, Settings

STATE_DIR = Path(".pp/faults")
SERVER_PORTS = ("PP_REDIS__PORT", "PP_KAFKA__PORT", "PP_S3__PORT", "PP_PREFECT__PORT")
ANY_PORT = ("PP_ROUTER__HTTP_PORT", "PP_METRICS__FANOUT_PORT", "PP_METRICS__ROUTER_PORT", "PP_METRICS__AUTOSCALER_PORT",
            "PP_METRICS__REPORTER_PORT", "PP_METRICS__BUTLER_WRITER_PORT")  # fmt: skip
IDLE_TIMEOUT_S = 60.0
"""Activators stay warm between repeats (the demo's 10 s would make each night start cold)."""
QUIET_S = 30.0
"""A night whose missing visit-detectors are no longer in the work stream is over after this long without news."""
STUCK_S = 2 * 5.0 + 120 + QUIET_S
"""A night with no news this long is over whatever the stream says (the image wait is 2 exposures + 120 s)."""
EXPOSURE_S = 5.0


@dataclass(frozen=True)
class Fault:
    """A fault of the table: its CLI name, its row title, how to inject it and whether it applies here."""

    name: str
    title: str
    inject: Callable[[Rig], Injected]
    applicable: Callable[[Rig], str | None] | None = None
    repeats: int | None = None  # None: --repeats
    while_announcing: bool = False  # injected while the night's visits are announced, not while processed


def no_fault(_rig: Rig) -> Injected:
    """The baseline: nothing injected."""
    now = time.time()
    return Injected(now, now, "no fault")


FAULTS = (
    Fault("baseline", "none (baseline)", no_fault, repeats=1),
    Fault("activator-kill", "SIGKILL an activator mid-visit", sigkill_activator),
    Fault("redis-restart", "Redis restarted without persistence", redis_restart_wiped),
    Fault("redis-restart-aof", "Redis restarted with AOF (SIGKILL)", redis_restart_aof, redis_aof_applicable),
    Fault("redis-stop", "Redis stopped 20 s", redis_pause),
    Fault("kafka-stop", "Kafka broker stopped 15 s (frozen)", kafka_pause),
    Fault("kafka-restart", "Kafka broker stopped 15 s and restarted", kafka_restart, kafka_restart_applicable),
    Fault("prefect-restart", "Prefect server restarted", prefect_restart),
    Fault("s3-down", "S3 endpoint down 30 s", s3_pause),
    Fault("router-kill", "router killed", router_kill),
    Fault(
        "fanout-kill", "fan-out killed between Redis transaction and offset commit", fanout_kill, while_announcing=True
    ),
    Fault("writer-kill", "Butler writer killed mid-batch", writer_kill),
    Fault("postgres-drop", "PostgreSQL connections dropped", postgres_drop, postgres_applicable),
)


@dataclass(frozen=True)
class NightSize:
    """One repeat's night."""

    visits: int
    detectors: int
    cadence_s: float
    lead_s: float
    size_px: int
    seed: int  # the same sky every repeat: the central repository is seeded once

    def plan(self, detectors: tuple[int, ...]) -> NightPlan:
        return NightPlan(LSSTCAM, detectors, self.visits, self.cadence_s, self.lead_s, EXPOSURE_S,
                         (self.size_px, self.size_px), 5, seed=self.seed)  # fmt: skip

    def describe(self) -> str:
        return (f"{self.visits} visits x {self.detectors} detectors of LSSTCam ({self.visits * self.detectors} "
                f"visit-detectors), one visit every {self.cadence_s:g} s announced {self.lead_s:g} s ahead, "
                f"{EXPOSURE_S:g} s exposures, {self.size_px} x {self.size_px} px images")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    console = Console(width=None if sys.stdout.isatty() else 120)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    console.print(f"fault run seed: {seed} (--seed {seed} repeats the moments and the nights)")
    rng = random.Random(seed)
    size = NightSize(args.visits, args.detectors, args.cadence_s, args.lead_s, args.size_px, rng.randrange(1_000_000))
    faults = [f for f in FAULTS if not args.only or f.name in args.only]
    started = time.monotonic()
    with console.status("stopping an earlier fault run's stack, if any, and emptying its state"):
        settings = _fault_settings(_isolated_settings(), size.detectors)
    console.log(f"fault run state in {settings.stack.state_dir}")
    with _load_sampled() as load:
        rows = _run(settings, console, faults, size, rng, args.repeats)
    wall_s = time.monotonic() - started
    plots = {row.fault_name: plot_fault(row, args.plots) for row in rows if row.results}
    given = sys.argv[1:] if argv is None else argv
    command = ("make faults: " if given == ["--output", "RELIABILITY.md"] else "") + shlex.join(
        ["python", "-m", "bench.faults", *given])  # fmt: skip
    meta = {"command": command, "seed": str(seed), "night": size.describe(), "wall": minutes(wall_s),
            "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "host": host(),
            "kafka": settings.kafka.storage_engine, "claim_idle_s": f"{settings.queue.claim_idle_s:g}",
            "load": f"mean {statistics.fmean(load or [0.0]):.1f}, max {max(load or [0.0]):.1f}"}  # fmt: skip
    section = render_section(rows, plots, meta)
    replace_section(args.output, section)
    console.print(section, markup=False, highlight=False)
    return 0


@contextmanager
def _load_sampled(every_s: float = 10.0) -> Iterator[list[float]]:
    """The machine's 1-minute load average every ``every_s`` while the block runs (other work slows the nights)."""
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every_s):
            samples.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample, name="load", daemon=True)
    sampler.start()
    try:
        yield samples
    finally:
        stop.set()
        sampler.join()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("RELIABILITY.md"))
    parser.add_argument("--plots", type=Path, default=Path("bench/results"), help="where the timelines go")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each fault (default 3)")
    parser.add_argument("--only", nargs="*", choices=[f.name for f in FAULTS], help="only these faults")
    parser.add_argument("--seed", type=int, default=None, help="default: a random one, printed")
    parser.add_argument("--visits", type=int, default=5, help="visits per repeat's night (3 repeats: 15 per fault)")
    parser.add_argument("--detectors", type=int, default=4)
    parser.add_argument("--cadence-s", type=float, default=2.0)
    parser.add_argument("--lead-s", type=float, default=20.0, help="next-visit event before the shutter opens (>= 20)")
    parser.add_argument(
        "--size-px",
        type=int,
        default=384,
        help="384: the PSF fits on most visit-detectors (a few CalibrationErrors); 256: on few",
    )
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- settings and the stack


def _isolated_settings() -> Settings:
    """Settings of a stack of the fault run's own: its state directory (emptied) and free ports, set in the
    environment so that every service and flow run the harness starts reads the same."""
    state = STATE_DIR.absolute()
    os.environ["PP_STACK__STATE_DIR"] = str(state)
    for variable in SERVER_PORTS:
        os.environ[variable] = str(free_port())
    for variable in ANY_PORT:
        os.environ[variable] = "0"
    settings = Settings()
    Stack(settings).down()  # an earlier run's leftovers, if any (only what that stack started)
    shutil.rmtree(state, ignore_errors=True)
    return settings


def _fault_settings(settings: Settings, detectors: int) -> Settings:
    """The demo's settings, with warm activators."""
    settings = demo_settings(settings, detectors)
    activator = ActivatorSettings(**settings.activator.model_dump() | {"idle_timeout_s": IDLE_TIMEOUT_S})
    return settings.model_copy(update={"activator": activator})


@contextmanager
def _stack(settings: Settings, console: Console) -> Iterator[Rig]:
    """The stack up, the demo's services running; a Rig on them; all stopped after."""
    stack = Stack(settings)
    client = make_redis(settings.redis, settings.retry, name="faults", socket_timeout_s=2.0)
    try:
        with console.status("starting the fault run's stack (the Prefect server takes ~20 s)"):
            stack.up()
        rig = Rig(settings, stack, client, Path(settings.stack.state_dir) / "logs", lambda: None)
        with demo_services(settings, console, demo_spec(len(_detectors(settings)))):
            rig.snapshot_services()
            try:
                yield rig
            finally:
                rig.stop_respawned()
    finally:
        client.close()
        stack.down()


def _detectors(settings: Settings) -> tuple[int, ...]:
    return tuple(settings.instruments["LSSTCam"].only_detectors or [])


# --------------------------------------------------------------------------- the run


def _run(
    settings: Settings, console: Console, faults: list[Fault], size: NightSize, rng: random.Random, repeats: int
) -> list[Row]:
    """Every fault's repeats on one stack; a row per fault."""
    started = time.monotonic()
    with _stack(settings, console) as rig:
        recorder = Recorder(make_redis(settings.redis, settings.retry, name="faults-recorder", socket_timeout_s=2.0))
        rig.before_redis_loss = recorder.poll
        recorder.start()
        with console.status("seeding the central repository and the APDB for the night's sky"):
            plan = size.plan(_detectors(settings))
            visits = [replace(v, duration_s=plan.duration_s) for v in plan_visits(LSSTCAM, size.visits, seed=size.seed)]
            seed_central_repo(settings, plan, visits)
        console.log(f"stack, services and the central repository ready in {time.monotonic() - started:.0f} s")
        with Progress(console=console) as progress:
            task = progress.add_task("fault run", total=sum(f.repeats or repeats for f in faults))
            rows = _Schedule(rig, recorder, size, rng, progress, task).run(faults, repeats)
        recorder.stop()
    return rows


@dataclass
class _Night:
    """A repeat in flight: its night being played (``player``), its fault waiting for its moment."""

    fault: Fault
    repeat: int
    began: float
    injector: _Injector
    restarted: list[str]
    sent: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""
    measured: threading.Event = field(default_factory=threading.Event)
    player: threading.Thread = field(init=False)


class _Schedule:
    """Runs the repeats one after the other, overlapped: the next night starts (its events are announced
    ``lead_s`` ahead) once the previous one sent its last images and its fault is over, while the previous
    one is still being processed; the next fault waits until the previous night is measured."""

    def __init__(
        self, rig: Rig, recorder: Recorder, size: NightSize, rng: random.Random, progress: Progress, task: TaskID
    ) -> None:  # fmt: skip
        self._rig, self._recorder, self._size, self._rng = rig, recorder, size, rng
        self._progress, self._task = progress, task
        self._results: dict[str, list[RepeatResult]] = {}

    def run(self, faults: list[Fault], repeats: int) -> list[Row]:
        rows, previous = [], None
        for fault in faults:
            n = fault.repeats or repeats
            why_not = fault.applicable(self._rig) if fault.applicable else None
            if why_not is not None:
                self._progress.console.print(f"{fault.name}: {why_not}", markup=False)
                self._progress.advance(self._task, n)
            for repeat in range(1, n + 1 if why_not is None else 1):
                previous = self._next(previous, fault, repeat)
            rows.append(Row(fault.name, fault.title, self._results.setdefault(fault.name, []), why_not))
        if previous is not None:
            self._finish(previous)
        return rows

    def _next(self, previous: _Night | None, fault: Fault, repeat: int) -> _Night:
        """Start ``fault``'s repeat once ``previous`` sent its night and its fault is over; then measure it."""
        if previous is not None:
            previous.player.join()
            if not previous.sent:
                previous.injector.cancelled.set()
            previous.injector.join()
        current = self._start(fault, repeat, previous.measured if previous else None)
        if previous is not None:
            self._finish(previous)
        return current

    def _start(self, fault: Fault, repeat: int, gate: threading.Event | None) -> _Night:
        restarted = _ready(self._rig)
        self._progress.update(self._task, description=f"{fault.name} #{repeat}")
        size = self._size
        began = time.time()
        if fault.while_announcing:  # before the night's last visit is announced, whatever the previous night does
            moment = _Moment(began, None, self._rng.uniform(0.0, (size.visits - 2) * size.cadence_s), 0)
        else:  # once the previous night is measured, after 1 to 75 % of this night's visit-detectors are done
            done = max(1, round(self._rng.uniform(0.0, 0.75) * size.visits * size.detectors))
            moment = _Moment(began, gate or _open(), 0.0, done)
        injector = _Injector(self._rig, self._recorder, fault, moment)
        night = _Night(fault, repeat, began, injector, restarted)
        plan = size.plan(_detectors(self._rig.settings))
        night.player = threading.Thread(target=_play, args=(self._rig.settings, plan, night), daemon=True,
                                        name=f"night-{fault.name}-{repeat}")  # fmt: skip
        injector.start()
        night.player.start()
        return night

    def _finish(self, night: _Night) -> None:
        night.player.join()
        if not night.sent:
            night.injector.cancelled.set()
        groups = [body["groupId"] for body in night.sent]
        detectors = _detectors(self._rig.settings)
        _wait_for_night(self._rig, self._recorder, night.injector, groups, detectors)
        injected = night.injector.result or Injected(night.began, night.began, "not injected")
        restarted = f"restarted before it: {', '.join(night.restarted)}" if night.restarted else ""
        notes = [n for n in (night.note, night.injector.error, restarted) if n]
        result = measure(self._rig.settings, self._recorder, night.fault.name, night.repeat, night.began, groups,
                         detectors, injected)  # fmt: skip
        result = replace(result, notes=result.notes + notes)
        night.measured.set()
        self._results.setdefault(night.fault.name, []).append(result)
        self._progress.console.print(f"{summarise(result)} [{time.time() - night.began:.0f} s]", markup=False)
        self._progress.advance(self._task)


def _open() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


def _ready(rig: Rig) -> list[str]:
    """Every server and service running and healthy before a night: start what a fault left stopped, wait for
    what does not answer; return what was started."""
    statuses = rig.stack.status()
    if any(s.state != "running" for s in statuses):
        rig.stack.up([s.name for s in statuses if s.state != "running"])
    return [s.name for s in statuses if s.state == "stopped"] + rig.restart_dead_services()


def _play(settings: Settings, plan: NightPlan, night: _Night) -> None:
    """The night, as ``pp demo`` plays it, into ``night.sent`` (``night.note`` if the simulator failed: its
    traceback goes to ``logs/faults.log``)."""
    try:
        night.sent = run_night(settings, plan, show_progress=False)
    except Exception as exc:  # the simulator hit the fault itself: the repeat says so
        with (Path(settings.stack.state_dir) / "logs" / "faults.log").open("a") as log:
            traceback.print_exc(file=log)
        night.note = f"the simulator failed: {type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class _Moment:
    """When a night's fault is injected, counted from its first visit fanned out (at ``since`` or after): a random
    moment of its processing, drawn as ``done`` outcomes of the night recorded, once ``gate`` (the previous night
    measured) is set; or, without a gate, ``after_s`` after that first visit (a fault of the announcements)."""

    since: float
    gate: threading.Event | None
    after_s: float
    done: int


class _Injector(threading.Thread):
    """Injects the fault once, at its ``_Moment``."""

    def __init__(self, rig: Rig, recorder: Recorder, fault: Fault, moment: _Moment) -> None:
        super().__init__(name=f"inject-{fault.name}", daemon=True)
        self._rig, self._recorder, self._fault, self._moment = rig, recorder, fault, moment
        self.result: Injected | None = None
        self.error = ""
        self.cancelled = threading.Event()

    def run(self) -> None:
        first = self._recorder.first_entry_after(self._moment.since, 300, self.cancelled)
        if first is None:
            self.error = "no visit of the night fanned out: fault not injected"
        elif self._wait(first):
            self.error = "the night failed: fault not injected"
        else:
            self._inject()

    def _wait(self, first: float) -> bool:
        """Until the moment; True if cancelled meanwhile."""
        moment = self._moment
        if moment.gate is None:
            return self.cancelled.wait(max(0.0, first + moment.after_s - time.time()))
        while not moment.gate.wait(0.1):
            if self.cancelled.is_set():
                return True
        deadline = time.monotonic() + STUCK_S  # a night that stopped moving gets its fault anyway
        while self._recorder.outcomes_of_night(moment.since) < moment.done and time.monotonic() < deadline:
            if self.cancelled.wait(0.1):
                return True
        return False

    def _inject(self) -> None:
        try:
            self.result = self._fault.inject(self._rig)
        except NotApplicable as exc:
            self.error = str(exc)
        except Exception as exc:
            self.error = f"injection failed: {type(exc).__name__}: {exc}"


def _wait_for_night(
    rig: Rig, recorder: Recorder, injector: _Injector, groups: list[str], detectors: tuple[int, ...]
) -> None:
    """Until every visit-detector of ``groups`` has an outcome (or was dead-lettered) and the fault is over;
    or none of the missing ones is still in the stream and nothing came for ``QUIET_S``; or nothing came for
    ``STUCK_S`` (an image wait: 2 exposures + 120 s, plus ``QUIET_S``)."""
    wanted = {(g, d) for g in groups for d in detectors}
    last_progress, last_missing = time.monotonic(), len(wanted) + 1
    while True:
        missing = wanted - recorder.visit_detectors()
        if not missing and not injector.is_alive():
            break
        if len(missing) != last_missing:
            last_progress, last_missing = time.monotonic(), len(missing)
        idle_s = time.monotonic() - last_progress
        busy = injector.is_alive() or bool(missing & live_visit_detectors(rig.redis, recorder))
        if (not busy and idle_s > QUIET_S) or idle_s > STUCK_S:
            break
        time.sleep(0.5)
    injector.join(120)
    time.sleep(2.0)  # a late second record of a visit-detector would land now
    recorder.poll()


if __name__ == "__main__":
    raise SystemExit(main())
