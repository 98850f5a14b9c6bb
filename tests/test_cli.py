"""The `pp` command: groups and help, lazy settings, the dev-kit plugin, deprecated names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import psutil
import pytest
import redis
import typer
import typer.core
from prefect.client.orchestration import get_client
from typer.testing import CliRunner

from pp_devkit import cli as devkit_cli
from pp_devkit.stack import free_port
from prompt_processing.adapters.health import HealthKey
from prompt_processing.adapters.prefect_api import WorkPoolDefinition, ensure_work_pools
from prompt_processing.cli import build_app, main
from prompt_processing.cli.services import check_health
from prompt_processing.settings import Settings
from tests.helpers import wait_for


def run_pp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`pp` in a child process, as a user runs it (COLUMNS wide enough that help lines do not wrap)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PP_")} | {"COLUMNS": "200"} | (env or {})
    command = [sys.executable, "-m", "prompt_processing.cli", *args]
    return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=60, check=False)


def test_help_lists_every_command_in_its_group() -> None:
    done = run_pp("--help")
    assert done.returncode == 0, done.stderr
    for panel, commands in {"Services": ("topics", "fanout", "router", "autoscale", "reporter"),
                            "Prefect": ("deploy", "prefect-worker", "activators", "rerun"),
                            "Reports": ("report",),
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


@pytest.mark.timeout(120)
def test_prefect_worker_wrapper_stops_its_prefect_worker(stack_settings: Settings, prefect_server: str) -> None:
    """`pp prefect-worker` passes SIGTERM on and leaves no Prefect worker behind, within its deadline."""
    pool = f"pp-test-{uuid.uuid4().hex[:8]}"
    ensure_work_pools(stack_settings, [WorkPoolDefinition(name=pool, type="process")])
    health_port = free_port()
    env = {"PP_PREFECT__PORT": str(stack_settings.prefect.port), "PP_PREFECT__WORK_POOL": pool,
           "PP_PREFECT__WORKER_SHUTDOWN_DEADLINE_S": "10",
           "PP_PREFECT__WORKER_HEALTH_PORT": str(health_port)}  # fmt: skip
    environ = os.environ | env
    with subprocess.Popen([sys.executable, "-m", "prompt_processing.cli", "prefect-worker"], env=environ,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as wrapper:  # fmt: skip
        try:
            with get_client(sync_client=True) as client:
                wait_for(lambda: bool(client.read_workers_for_work_pool(pool)), timeout_s=60, what="the worker")
            # What the pod's probes ask (infra/base/prefect-worker.yaml).
            wait_for(lambda: _health(health_port) == 200, timeout_s=30, what="the worker's health server")
            workers = psutil.Process(wrapper.pid).children(recursive=True)
            assert workers, "no Prefect worker process under the wrapper"
            started = time.monotonic()
            wrapper.send_signal(signal.SIGTERM)
            wrapper.wait(30)
            stopped_s = time.monotonic() - started
        finally:
            if wrapper.poll() is None:
                wrapper.kill()
    assert stopped_s < 10 + 5, stopped_s  # the deadline, plus a poll
    assert not [p for p in workers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _health(port: int) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code
    except httpx.HTTPError:
        return None


def test_the_probes_tell_an_outage_from_a_hang(stack_settings: Settings, redis_client: redis.Redis) -> None:
    """Readiness (`--check`) fails while the service reports an outage; liveness (`--check --alive`) only when
    it stops refreshing its record; a missing record fails both."""
    name = f"probe-{uuid.uuid4().hex[:6]}"
    assert check_health(stack_settings, "fanout", name) == check_health(stack_settings, "fanout", name, alive=True) == 1
    HealthKey(redis_client, "fanout", name, ttl_s=5).refresh(lambda: {"healthy": False, "outages": ["kafka"]})
    assert check_health(stack_settings, "fanout", name) == 1
    assert check_health(stack_settings, "fanout", name, alive=True) == 0
    HealthKey(redis_client, "fanout", name, ttl_s=5).refresh(lambda: {"healthy": True})
    assert check_health(stack_settings, "fanout", name) == 0


def test_an_activator_of_an_undeployed_instrument_says_to_deploy(
    stack_settings: Settings, prefect_server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PP_PREFECT__PORT", str(stack_settings.prefect.port))
    assert main(["run-activator", "NoSuchCam"]) == 1
    printed = capsys.readouterr()
    out = " ".join((printed.out + printed.err).split())  # the console wraps long lines
    assert "no deployment activator/activator-nosuchcam on" in out and "run `pp deploy` first" in out, out
