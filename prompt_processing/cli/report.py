"""``pp report``: one night per instrument, counted from where the outcomes and alerts are.

Prints, per instrument, the visit-detectors by outcome, the failures by error, the latency from
image landed to alerts sent (p50 / p95 / max and the share within 60 s), and the alerts recorded
against those on the alerts topic; writes a PNG per instrument (with the ``report`` extra) and the
night's artifacts in Prefect.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from prompt_processing.adapters.redis_client import make_redis
from prompt_processing.cli import state

if TYPE_CHECKING:
    from rich.console import Console

    from prompt_processing.reporting.night import Night
    from prompt_processing.settings import Settings

PANEL = "Reports"


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel=PANEL)(report)


def report(
    ctx: typer.Context,
    night: Annotated[str | None, typer.Option(help="The night, YYYYMMDD (dayObs); default: tonight's.")] = None,
    instrument: Annotated[list[str] | None, typer.Option(help="Cameras (repeatable); default: all enabled.")] = None,
    output_dir: Annotated[Path, typer.Option(help="Where the PNGs go.")] = Path(".pp/reports"),
    alerts: Annotated[bool, typer.Option(help="Count the alerts on the alerts topic (reads the night's part).")] = True,
    artifact: Annotated[bool, typer.Option(help="Write the night's artifacts in Prefect.")] = True,
) -> None:  # fmt: skip
    """Report a night: outcomes, failures by error, latency against the 60 s requirement, alerts; a PNG."""
    from prompt_processing.model.events import day_obs
    from prompt_processing.model.instruments import active_detector_table

    settings = state(ctx).settings
    night_id = night or day_obs(time.time())
    instruments = instrument or list(active_detector_table(settings.instruments))
    nights = [_read(settings, name, night_id, alerts=alerts) for name in instruments]
    console = state(ctx).console
    for read, on_topic in nights:
        _print(console, read, on_topic)
        _plot(console, read, output_dir)
    if artifact:
        _write_artifacts(console, settings, [read for read, _ in nights])


def _read(settings: Settings, instrument: str, night_id: str, *, alerts: bool) -> tuple[Night, int | None]:

    from prompt_processing.reporting.report import count_alerts, read_night

    client = make_redis(settings.redis, settings.retry, name="report")
    try:
        night = read_night(client, instrument, night_id)
    finally:
        client.close()
    on_topic = sum(count_alerts(settings.kafka, night).values()) if alerts and night.latest else None
    return night, on_topic


def _print(console: Console, night: Night, alerts_on_topic: int | None) -> None:
    from rich.table import Table

    s = night.summary()
    table = Table(title=f"{night.instrument} night {night.day_obs}", show_header=False)
    table.add_row("visit-detectors (outcome records)", f"{s['visit_detectors']} ({s['records']})")
    table.add_row("succeeded / failed / ignored", f"{s['succeeded']} / {s['failed']} / {s['ignored']}")
    if "latency_p50_s" in s:
        table.add_row("image landed -> alerts sent, p50 / p95 / max",
                      f"{s['latency_p50_s']:.2f} s / {s['latency_p95_s']:.2f} s / {s['latency_max_s']:.2f} s")
        table.add_row("within 60 s (Rubin: 98%)", f"{s['within_60s']:.1%}")
    topic = "not counted" if alerts_on_topic is None else str(alerts_on_topic)
    table.add_row("alerts recorded / on the alerts topic", f"{s['alerts_recorded']} / {topic}")
    for label, count, example in night.failures_by_error():
        table.add_row(f"[red]{label}[/]", f"{count}, e.g. {example[:90]}")
    console.print(table)


def _plot(console: Console, night: Night, output_dir: Path) -> None:
    from prompt_processing.reporting.plot import plot_night

    if not night.latest:
        return
    try:
        path = plot_night(night, output_dir / f"{night.instrument}-night-{night.day_obs}.png")
    except ImportError as exc:
        console.print(f"[yellow]no plot:[/] {exc}")
        return
    console.print(f"plot: {path}")


def _write_artifacts(console: Console, settings: Settings, nights: list[Night]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.events.worker import EventsWorker
    from prefect.settings import temporary_settings

    from prompt_processing.adapters import prefect_api
    from prompt_processing.reporting.report import NightArtifacts

    with temporary_settings(prefect_api.client_settings(settings)), get_client(sync_client=True) as client:
        writer = NightArtifacts(settings, client, table_rows=settings.reporter.table_rows)
        for night in nights:
            if night.latest:
                writer.write(night)
                console.print(f"artifact: {settings.prefect.ui}/artifacts (key {night.instrument.lower()}-night-"
                              f"{night.day_obs})")  # fmt: skip
        # The client's artifact-created events go out before the command ends; the worker's "still
        # processing items" warning while it drains is expected here, not news for an operator.
        logging.getLogger(EventsWorker.__name__).setLevel(logging.ERROR)
        EventsWorker.drain_all()
