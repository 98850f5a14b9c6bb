"""``pp apdb init``: the Alert Production Database's tables."""

from __future__ import annotations

from typing import Annotated

import typer

from prompt_processing.cli import state

apdb_app = typer.Typer(help="The Alert Production Database (APDB).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(apdb_app, name="apdb", rich_help_panel="Data")


@apdb_app.command("init")
def init(
    ctx: typer.Context,
    drop: Annotated[bool, typer.Option("--drop", help="Drop the tables first: everything in them is lost.")] = False,
) -> None:
    """Create the APDB's tables (PP_APDB__DB_URL, schema from lsst-sdm-schemas) where missing. Safe to run again."""
    from prompt_processing.apdb.db import init_apdb, safe_url

    settings = state(ctx).settings
    version = init_apdb(settings.apdb, drop=drop)
    print(f"APDB: {safe_url(settings.apdb)} (schema {version}{', dropped and made anew' if drop else ''})")
