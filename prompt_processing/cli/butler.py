"""``pp butler init`` (the central repository) and ``pp butler-writer`` (its only registry writer)."""

from __future__ import annotations

from typing import Annotated

import typer

from prompt_processing.cli import state
from prompt_processing.cli.services import PANEL, AliveOption, CheckOption, check_health

butler_app = typer.Typer(help="The central Butler repository.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(butler_app, name="butler", rich_help_panel="Data")
    app.command("butler-writer", rich_help_panel=PANEL)(butler_writer)


@butler_app.command("init")
def init(
    ctx: typer.Context,
    registry_db: Annotated[
        str | None,
        typer.Option(help="Registry database URL, e.g. postgresql+psycopg://user@host/db (default: SQLite in "
                     "the repository; an s3:// repository needs one)."),
    ] = None,
) -> None:
    """Create the central repository (PP_BUTLER__CENTRAL_REPO) if missing; register LSSTCam, LATISS and HSC,
    the dataset types and the collections. Safe to run again."""
    from prompt_processing.butler import repo

    settings = state(ctx).settings
    butler = repo.init_central(settings.butler, settings.s3, registry_db)
    collections = sorted(butler.collections.query("*"))
    print(f"central Butler: {repo.central_uri(settings.butler)}")
    print(f"instruments: {', '.join(r.name for r in butler.query_dimension_records('instrument'))}")
    print(f"collections: {', '.join(collections)}")


def butler_writer(ctx: typer.Context, check: CheckOption = False, alive: AliveOption = False) -> None:
    """Run the Butler writer: pp-output events -> the central registry, in batches, idempotently."""
    import os

    settings = state(ctx).settings
    if check:
        raise typer.Exit(check_health(settings, "butler-writer", settings.butler.writer_name, alive=alive))
    # Prefect reads PREFECT_API_URL once, at import: the batch events go to the settings' server.
    os.environ.update(settings.prefect.client_env())
    from prompt_processing.services.butler_writer import ButlerWriterService

    raise typer.Exit(ButlerWriterService(settings).run())
