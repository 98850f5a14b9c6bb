"""``pp`` commands of the long-running services: fan-out, arrival router, autoscaler; and topics."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer

from prompt_processing.adapters.redis_client import make_redis
from prompt_processing.cli import state
from prompt_processing.settings import Settings

PANEL = "Services"
CHECK_HELP = "Exit 0 if this host's service refreshed its health record recently and reports no outage (readiness)."
ALIVE_HELP = ("With --check: only that it refreshed its record, outage or not (liveness: restarting a service does "
              "not end a broker's outage).")  # fmt: skip
CheckOption = Annotated[bool, typer.Option("--check", help=CHECK_HELP)]
AliveOption = Annotated[bool, typer.Option("--alive", help=ALIVE_HELP)]


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel=PANEL)(topics)
    app.command(rich_help_panel=PANEL)(fanout)
    app.command(rich_help_panel=PANEL)(router)
    app.command(rich_help_panel=PANEL)(autoscale)
    app.command(rich_help_panel=PANEL)(reporter)


def topics(ctx: typer.Context) -> None:
    """Create the Kafka topics the services use (next-visit and its dead-letter topic)."""
    from prompt_processing.adapters.kafka import ensure_topics

    k = state(ctx).settings.kafka
    created = ensure_topics(k, [k.next_visit_topic, k.dead_letter_topic])
    print("created: " + (", ".join(created) or "nothing (all exist)"))


def fanout(ctx: typer.Context, check: CheckOption = False, alive: AliveOption = False) -> None:
    """Run the next-visit fan-out: Kafka next-visit -> Redis instrument:<name>, one entry per active detector."""
    settings = state(ctx).settings
    if check:
        raise typer.Exit(check_health(settings, "fanout", settings.fanout.consumer_name, alive=alive))
    from prompt_processing.services.fanout import FanOutService

    raise typer.Exit(FanOutService(settings).run())


def router(ctx: typer.Context, check: CheckOption = False, alive: AliveOption = False) -> None:
    """Run the arrival router: raw-image notifications -> presence keys and activator wake-ups (+ HTTP look-ups)."""
    settings = state(ctx).settings
    if check:
        raise typer.Exit(check_health(settings, "router", settings.router.consumer_name, alive=alive))
    from prompt_processing.services.router import RouterService

    raise typer.Exit(RouterService(settings).run())


def autoscale(
    ctx: typer.Context,
    spec: Annotated[Path | None, typer.Option(help="Spec file (default: PP_AUTOSCALER__SPEC_FILE).")] = None,
    check: CheckOption = False,
    alive: AliveOption = False,
) -> None:
    """Run the autoscaler: activator flow runs from the streams' backlog (KEDA ScaledJob semantics)."""
    import os

    settings = state(ctx).settings
    if check:
        raise typer.Exit(check_health(settings, "autoscaler", settings.autoscaler.name, alive=alive))
    # Prefect reads PREFECT_API_URL once, when imported; the events the autoscaler emits must go to
    # the settings' server, so point it there before the first Prefect import.
    os.environ.update(settings.prefect.client_env())
    from prompt_processing.autoscaler.loop import Autoscaler
    from prompt_processing.autoscaler.spec import load_specs

    specs = load_specs(spec or settings.autoscaler.spec_file)
    raise typer.Exit(Autoscaler(settings, specs).run())


def reporter(ctx: typer.Context, check: CheckOption = False, alive: AliveOption = False) -> None:
    """Run the reporter: the nights' table artifacts, kept current from the results streams."""
    settings = state(ctx).settings
    if check:
        raise typer.Exit(check_health(settings, "reporter", settings.reporter.name, alive=alive))
    from prompt_processing.model.instruments import active_detector_table
    from prompt_processing.services.reporter import ReporterService

    raise typer.Exit(ReporterService(settings, list(active_detector_table(settings.instruments))).run())


def check_health(settings: Settings, kind: str, name: str | None, *, alive: bool = False) -> int:
    """A probe: 0 if the service on this host refreshed its health record recently and (unless
    ``alive``) reports no outage (``adapters.retry.OutageWatch``), else 1."""

    from prompt_processing.adapters.health import read_health

    client = make_redis(settings.redis, settings.retry, name="check")
    try:
        health = read_health(client, kind, name or socket.gethostname())
    finally:
        client.close()
    if health is None:
        print(f"no fresh {kind} health record")
        return 1
    print(health)
    if health.get("healthy") is False and not alive:
        print(f"{kind} reports an outage: {health.get('outages')}")
        return 1
    return 0
