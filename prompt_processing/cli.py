"""The ``pp`` command. Settings are built here, once, and passed down.

pp stack up|down|status [--only redis,kafka]   the embedded stack
pp topics                                       create the Kafka topics
pp fanout [--check]                             the next-visit fan-out service
pp router [--check]                             the arrival router (raw notifications -> presence)
pp deploy                                       work pool + `prefect deploy --all`
pp worker                                       a Prefect worker for the pool
pp activators --instrument LSSTCam --count N    start N activator flow runs
pp rerun LSSTCam <group> <detector>             rerun one visit-detector (process-visit deployment)
pp autoscale [--spec FILE] [--check]            create activator flow runs from the streams' backlog (KEDA-like)
pp sim next-visits --instrument LSSTCam --visits N --cadence-s S
pp sim night --instrument LSSTCam --visits N --detectors 0,1,2 [--size-px 512]
pp demo                                         a short simulated night, end to end
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler

from prompt_processing.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pp", description="Prompt processing on Prefect.")
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="start, stop or inspect the embedded stack")
    stack.add_argument("action", choices=("up", "down", "status"))
    stack.add_argument("--only", default="", help="comma-separated services (redis,kafka,s3,prefect)")

    sub.add_parser("topics", help="create the Kafka topics the services use")

    fanout = sub.add_parser("fanout", help="run the next-visit fan-out service")
    fanout.add_argument("--check", action="store_true", help="exit 0 if this host's fan-out is healthy")

    router = sub.add_parser("router", help="run the arrival router")
    router.add_argument("--check", action="store_true", help="exit 0 if this host's router is healthy")

    sub.add_parser("deploy", help="create the work pool and register the deployments (prefect deploy --all)")
    worker = sub.add_parser("worker", help="run a Prefect worker for the work pool")
    worker.add_argument("--limit", type=int, default=None, help="most flow runs at once")
    act = sub.add_parser("activators", help="create activator flow runs")
    act.add_argument("--instrument", default="LSSTCam")
    act.add_argument("--count", type=int, default=1)
    rerun = sub.add_parser("rerun", help="rerun one visit-detector through the process-visit deployment")
    rerun.add_argument("instrument")
    rerun.add_argument("group")
    rerun.add_argument("detector", type=int)

    autoscale = sub.add_parser("autoscale", help="scale activator flow runs to the streams' backlog (KEDA ScaledJob)")
    autoscale.add_argument("--spec", type=Path, default=None, help="spec file (default: PP_AUTOSCALER__SPEC_FILE)")
    autoscale.add_argument("--check", action="store_true", help="exit 0 if this host's autoscaler is healthy")

    sim = sub.add_parser("sim", help="summit simulator")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True)
    nv = sim_sub.add_parser("next-visits", help="emit NextVisit events")
    nv.add_argument("--instrument", default="LSSTCam")
    nv.add_argument("--visits", type=int, default=10)
    nv.add_argument("--cadence-s", type=float, default=36.0)
    nv.add_argument("--lead-s", type=float, default=25.0, help="startTime ahead of sending (>= 20)")
    nv.add_argument("--seed", type=int, default=0)
    night = sim_sub.add_parser("night", help="next-visit events, then raws + notifications at each exposure end")
    night.add_argument("--instrument", default="LSSTCam")
    night.add_argument("--visits", type=int, default=4)
    night.add_argument("--cadence-s", type=float, default=36.0)
    night.add_argument("--lead-s", type=float, default=20.0, help="startTime ahead of the event (>= 20)")
    night.add_argument("--duration-s", type=float, default=30.0, help="exposure time per visit")
    night.add_argument("--size-px", type=int, default=512, help="image side; 4096 = a full LSSTCam CCD")
    night.add_argument("--transients", type=int, default=5, help="injected per detector image")
    night.add_argument("--seed", type=int, default=0)

    demo = sub.add_parser("demo", help="the embedded stack, all services, a short simulated night, a report")
    demo.add_argument("--visits", type=int, default=3, help="LSSTCam visits")
    demo.add_argument("--detectors", type=int, default=4, help="active detectors per visit")
    demo.add_argument("--workers", type=int, default=None,
                      help="most activator flow runs at once (the autoscaler's max; default: one per detector)")
    demo.add_argument("--size-px", type=int, default=512, help="image side; 4096 = a full LSSTCam CCD")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(stderr=True)
    try:
        settings = Settings()
    except ValidationError as exc:
        console.print(f"[red]invalid PP_* configuration:[/red]\n{exc}")
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(name)s: %(message)s", datefmt="[%X]",
        handlers=[RichHandler(console=console, show_path=False)],
    )  # fmt: skip
    for noisy in ("httpx", "httpcore"):  # one line per Prefect API call otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return _dispatch(args, settings)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if settings.log_level == "DEBUG":
            raise
        console.print(f"[red]error:[/red] {exc}")
        return 1


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    # Imported per command so `pp stack status` does not pay for Prefect or Kafka imports.
    if args.command == "stack":
        from prompt_processing.stack import Stack, render_statuses

        stack = Stack(settings)
        only = [s for s in args.only.split(",") if s] or None
        statuses = getattr(stack, args.action)(only)
        Console(width=None if sys.stdout.isatty() else 120).print(render_statuses(statuses))
        return 0
    if args.command == "topics":
        from prompt_processing.kafka import ensure_topics

        k = settings.kafka
        created = ensure_topics(k, [k.next_visit_topic, k.dead_letter_topic])
        print("created: " + (", ".join(created) or "nothing (all exist)"))
        return 0
    if args.command == "fanout":
        return _fanout(args, settings)
    if args.command == "autoscale":
        return _autoscale(args, settings)
    if args.command == "sim":
        return _sim(args, settings) if args.sim_command == "next-visits" else _night(args, settings)
    if args.command in ("router", "deploy", "worker", "activators", "rerun"):
        return _prefect_side(args, settings)
    if args.command == "demo":
        from prompt_processing.demo import run_demo

        return run_demo(settings, visits=args.visits, detectors=args.detectors, workers=args.workers,
                        size_px=args.size_px)  # fmt: skip
    raise AssertionError(args.command)


def _fanout(args: argparse.Namespace, settings: Settings) -> int:
    from prompt_processing.fanout import FanOutService

    if args.check:
        return _check_health(settings, "fanout", settings.fanout.consumer_name)
    return FanOutService(settings).run()


def _autoscale(args: argparse.Namespace, settings: Settings) -> int:
    import os

    if args.check:
        return _check_health(settings, "autoscaler", settings.autoscaler.name)
    # Prefect reads PREFECT_API_URL once, when imported; the events the autoscaler emits must go to
    # the settings' server, so point it there before the first Prefect import.
    os.environ["PREFECT_API_URL"] = settings.prefect.url
    from prompt_processing.autoscaler import Autoscaler
    from prompt_processing.autoscaler_spec import load_specs

    specs = load_specs(args.spec or settings.autoscaler.spec_file)
    return Autoscaler(settings, specs).run()


def _check_health(settings: Settings, kind: str, name: str | None) -> int:
    """A liveness probe: 0 if the service on this host refreshed its health key recently."""
    import socket

    import redis

    from prompt_processing.service import read_health

    client = redis.Redis.from_url(settings.redis.url, socket_timeout=settings.redis.socket_timeout_s)
    try:
        health = read_health(client, kind, name or socket.gethostname())
    finally:
        client.close()
    print(health or f"no fresh {kind} health record")
    return 0 if health else 1


def _sim(args: argparse.Namespace, settings: Settings) -> int:
    from prompt_processing.instruments import get_instrument
    from prompt_processing.sim import send_visits

    instrument = get_instrument(args.instrument)
    if instrument is None:
        raise SystemExit(f"pp sim: unknown instrument {args.instrument!r}")
    if args.cadence_s < 0.01 or args.visits < 1:
        raise SystemExit("pp sim: --visits must be >= 1 and --cadence-s >= 0.01 (groupIds are ms times)")
    sent = send_visits(
        settings.kafka, instrument, args.visits, cadence_s=args.cadence_s, lead_s=args.lead_s, seed=args.seed
    )
    print(f"sent {len(sent)} {instrument.name} next-visit events to {settings.kafka.next_visit_topic}")
    return 0


def _prefect_side(args: argparse.Namespace, settings: Settings) -> int:
    import subprocess

    from prompt_processing import deploy

    if args.command == "router":
        from prompt_processing.router import RouterService

        if args.check:
            return _check_health(settings, "router", settings.router.consumer_name)
        return RouterService(settings).run()
    if args.command == "deploy":
        deploy.deploy_all(settings)
        return 0
    if args.command == "worker":
        return subprocess.call(deploy.worker_command(settings, limit=args.limit), env=deploy.prefect_env(settings))
    if args.command == "activators":
        for _ in range(args.count):
            run_id = deploy.run_deployment(settings, f"activator/activator-{args.instrument.lower()}",
                                           {"instrument": args.instrument}, tags=["activator"])  # fmt: skip
            print(f"activator flow run {run_id}")
        return 0
    run_id = deploy.run_deployment(
        settings, "process-visit/process-visit",
        {"instrument": args.instrument, "group": args.group, "detector": args.detector}, tags=["rerun"],
    )  # fmt: skip
    print(f"process-visit flow run {run_id}: {settings.prefect.url.removesuffix('/api')}/runs/flow-run/{run_id}")
    return 0


def _night(args: argparse.Namespace, settings: Settings) -> int:
    from prompt_processing.instruments import active_detector_table, get_instrument
    from prompt_processing.night import NightPlan, run_night

    instrument = get_instrument(args.instrument)
    if instrument is None:
        raise SystemExit(f"pp sim: unknown instrument {args.instrument!r}")
    detectors = active_detector_table(settings.instruments).get(instrument.name)
    if not detectors:
        raise SystemExit(f"pp sim: {instrument.name} has no active detectors in PP_INSTRUMENTS")
    plan = NightPlan(instrument, detectors, args.visits, args.cadence_s, args.lead_s, args.duration_s,
                     (args.size_px, args.size_px), args.transients, args.seed)  # fmt: skip
    sent = run_night(settings, plan)
    print(f"night done: {len(sent)} visits x {len(detectors)} detectors of {instrument.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
