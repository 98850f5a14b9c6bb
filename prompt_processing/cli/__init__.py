"""The ``pp`` command: one entry point, subcommand groups, settings built once and passed down.

``main()`` builds the ``typer`` app: the runtime commands (``services``, ``orchestration``), then
the commands of installed plugins (entry point group ``pp.commands``: the dev kit adds ``stack``,
``sim`` and ``demo`` when its extra is installed). Each command imports what it needs when it
runs, so ``pp --help`` and ``pp stack status`` stay fast. ``Settings()`` is built on the first
command that needs it (so ``--help`` works even with a broken ``PP_*`` environment) and kept in
the ``CliState`` every command receives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import typer
from pydantic import ValidationError
from rich.console import Console

from prompt_processing import logs
from prompt_processing.settings import Settings

PLUGIN_GROUP = "pp.commands"
DEV_HINT = "Dev kit commands (stack, sim, demo) need the dev extra: pip install 'prompt-processing\\[dev]'."


@dataclass
class CliState:
    """What one ``pp`` invocation shares between its commands: the console and the settings."""

    console: Console = field(default_factory=lambda: Console(stderr=True))
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        """The settings, built (and logging configured) on first use; exit 2 naming a bad ``PP_*``."""
        if self._settings is None:
            try:
                self._settings = Settings()
            except ValidationError as exc:
                self.console.print(f"[red]invalid PP_* configuration:[/red]\n{exc}")
                raise typer.Exit(2) from None
            logs.configure(self._settings)
        return self._settings

    @property
    def debug(self) -> bool:
        return self._settings is not None and self._settings.log_level == "DEBUG"


def state(ctx: typer.Context) -> CliState:
    """The invocation's ``CliState`` (commands take ``ctx: typer.Context``)."""
    obj = ctx.find_root().obj
    assert isinstance(obj, CliState)
    return obj


def build_app() -> typer.Typer:
    """The ``pp`` app with the runtime commands and every installed plugin's."""
    from prompt_processing.cli import apdb, butler, orchestration, report, services

    app = typer.Typer(name="pp", help="Prompt processing on Prefect.", no_args_is_help=True,
                      rich_markup_mode="rich", epilog=DEV_HINT, pretty_exceptions_enable=False)  # fmt: skip
    services.register(app)
    butler.register(app)
    apdb.register(app)
    orchestration.register(app)
    report.register(app)
    for plugin in entry_points(group=PLUGIN_GROUP):
        plugin.load()(app)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pp`` with ``argv`` (default: the command line); return the exit status.

    Usage errors exit 2 with typer's message; an unexpected error prints one ``error:`` line and
    exits 1 (its traceback only with ``PP_LOG_LEVEL=DEBUG``); Ctrl-C exits 130.
    """
    cli_state = CliState()
    command = typer.main.get_command(build_app())
    try:
        command.main(args=list(argv) if argv is not None else None, prog_name="pp", obj=cli_state)
    except SystemExit as exc:  # how typer ends every command, with its status
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if cli_state.debug:
            raise
        cli_state.console.print(f"[red]error:[/red] {exc}")
        return 1
    return 0
