"""The ``pp`` command. Settings are built here, once, and passed down.

    pp stack up|down|status [--only redis,kafka]   the embedded stack
    pp topics                                       create the Kafka topics
    pp fanout [--check]                             the next-visit fan-out service
    pp sim next-visits --instrument LSSTCam --visits N --cadence-s S
    pp demo                                         a short simulated night, end to end
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

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

    sim = sub.add_parser("sim", help="summit simulator")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True)
    nv = sim_sub.add_parser("next-visits", help="emit NextVisit events")
    nv.add_argument("--instrument", default="LSSTCam")
    nv.add_argument("--visits", type=int, default=10)
    nv.add_argument("--cadence-s", type=float, default=36.0)
    nv.add_argument("--lead-s", type=float, default=25.0, help="startTime ahead of sending (>= 20)")
    nv.add_argument("--seed", type=int, default=0)

    demo = sub.add_parser("demo", help="stack up, fan-out, a short simulated night, summary")
    demo.add_argument("--visits", type=int, default=12, help="LSSTCam visits (plus a few LATISS and HSC)")
    demo.add_argument("--cadence-s", type=float, default=0.5)
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
    if args.command == "sim":
        return _sim(args, settings)
    if args.command == "demo":
        from prompt_processing.demo import run_demo

        return run_demo(settings, lsstcam_visits=args.visits, cadence_s=args.cadence_s)
    raise AssertionError(args.command)


def _fanout(args: argparse.Namespace, settings: Settings) -> int:
    from prompt_processing.fanout import FanOutService, read_health

    if args.check:
        health = read_health(settings)
        print(health or "no fresh health record")
        return 0 if health else 1
    return FanOutService(settings).run()


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


if __name__ == "__main__":
    sys.exit(main())
