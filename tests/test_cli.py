"""The `pp` command: groups and help, lazy settings, the dev-kit plugin, deprecated names."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer
import typer.core
from typer.testing import CliRunner

from pp_devkit import cli as devkit_cli
from prompt_processing.cli import build_app, main


def run_pp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`pp` in a child process, as a user runs it (COLUMNS wide enough that help lines do not wrap)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PP_")} | {"COLUMNS": "200"} | (env or {})
    command = [sys.executable, "-m", "prompt_processing.cli", *args]
    return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=60, check=False)


def test_help_lists_every_command_in_its_group() -> None:
    done = run_pp("--help")
    assert done.returncode == 0, done.stderr
    for panel, commands in {"Services": ("topics", "fanout", "router", "autoscale"),
                            "Prefect": ("deploy", "prefect-worker", "activators", "rerun"),
                            "Dev kit": ("stack", "sim", "demo")}.items():  # fmt: skip
        assert panel in done.stdout
        for command in commands:
            assert f"│ {command} " in done.stdout, command
    assert "│ worker " not in done.stdout  # the deprecated name is hidden


def test_subcommand_help_works_even_with_a_broken_environment() -> None:
    done = run_pp("stack", "up", "--help", env={"PP_REDIS__PORT": "not-a-port"})
    assert done.returncode == 0, done.stderr
    assert "--only" in done.stdout


def test_a_broken_environment_is_reported_with_the_setting_named(capsys: pytest.CaptureFixture[str]) -> None:
    os.environ["PP_REDIS__PORT"] = "not-a-port"
    try:
        assert main(["fanout", "--check"]) == 2
    finally:
        del os.environ["PP_REDIS__PORT"]
    assert "invalid PP_* configuration" in capsys.readouterr().err


def test_usage_errors_exit_2_and_name_the_problem() -> None:
    done = run_pp("sim", "night", "--size-px", "10")
    assert done.returncode == 2
    assert "Invalid value for '--size-px': Input should be greater than or equal to 64" in done.stderr


def test_old_worker_command_still_runs_and_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    from prompt_processing.cli import orchestration

    calls: list[int | None] = []
    monkeypatch.setattr(orchestration, "prefect_worker", lambda _ctx, limit: calls.append(limit))
    with pytest.warns(FutureWarning, match="`pp worker` is deprecated; use `pp prefect-worker`"):
        result = CliRunner().invoke(build_app(), ["worker", "--limit", "3"], obj=None, catch_exceptions=False)
    assert result.exit_code == 0 and calls == [3]


def test_dev_kit_commands_are_left_out_without_the_dev_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    def commands(app: typer.Typer) -> set[str]:
        group = typer.main.get_command(app)
        assert isinstance(group, typer.core.TyperGroup)
        return set(group.commands)

    monkeypatch.setattr(devkit_cli, "dev_extra_missing", lambda: ["moto"])
    without = typer.Typer()
    without.command("one")(lambda: None)
    without.command("two")(lambda: None)
    devkit_cli.register(without)
    assert commands(without) == {"one", "two"}
    monkeypatch.setattr(devkit_cli, "dev_extra_missing", lambda: [])
    devkit_cli.register(without)
    assert commands(without) == {"one", "two", "stack", "sim", "demo"}
