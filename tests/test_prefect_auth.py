"""The Prefect API behind its basic auth (PP_PREFECT__AUTH_STRING): the server refuses calls without it,
and every client of ours sends it (in-process clients, `pp deploy`'s `prefect deploy` subprocess), never
printing it. A server of its own (SQLite), so the session's server stays open."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import temporary_settings
from pydantic import SecretStr

from pp_devkit.stack import Stack, free_port
from prompt_processing.adapters import prefect_api
from prompt_processing.settings import PrefectSettings, Settings, StackSettings

ROOT = Path(__file__).resolve().parents[1]
AUTH = f"pp-operator:{secrets.token_urlsafe(18)}"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    state_dir = tmp_path_factory.mktemp("pp-auth")
    settings = Settings(prefect=PrefectSettings(port=free_port(), auth_string=SecretStr(AUTH)),
                        stack=StackSettings(state_dir=state_dir))  # fmt: skip
    stack = Stack(settings)
    stack.up(["prefect"])
    try:
        yield settings
    finally:
        stack.down(["prefect"])


def test_the_server_refuses_calls_without_the_auth_string(guarded: Settings) -> None:
    url = guarded.prefect.url
    assert httpx.post(f"{url}/work_pools/filter", json={}).status_code == 401
    assert httpx.post(f"{url}/work_pools/filter", json={}, auth=("pp-operator", "wrong")).status_code == 401
    user, password = AUTH.split(":", 1)
    assert httpx.post(f"{url}/work_pools/filter", json={}, auth=(user, password)).status_code == 200
    assert httpx.get(f"{url}/health").status_code == 200  # Kubernetes probes need no credentials


def test_our_clients_send_it_in_process_and_to_prefect_subprocesses(guarded: Settings) -> None:
    with temporary_settings(prefect_api.client_settings(guarded)), get_client(sync_client=True) as client:
        assert client.read_work_pools() == []
    done = subprocess.run([sys.executable, "-m", "prompt_processing.cli", "deploy", "--project-dir", str(ROOT)],
                          env=prefect_api.prefect_env(guarded) | {"PP_PREFECT__API_URL": guarded.prefect.url,
                                                                   "PP_PREFECT__AUTH_STRING": AUTH},
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert AUTH.split(":", 1)[1] not in done.stdout + done.stderr
    with temporary_settings(prefect_api.client_settings(guarded)), get_client(sync_client=True) as client:
        assert client.read_deployment_by_name("activator/activator-lsstcam").work_pool_name == "prompt-processing"


def test_the_server_and_its_clients_get_it_as_prefects_variables() -> None:
    prefect = PrefectSettings(auth_string=SecretStr("u:p"))
    assert prefect.server_env(Path("/tmp"))["PREFECT_SERVER_API_AUTH_STRING"] == "u:p"
    assert prefect.client_env()["PREFECT_API_AUTH_STRING"] == "u:p"
    assert "PREFECT_API_AUTH_STRING" not in PrefectSettings().client_env()
    assert "u:p" not in repr(prefect)  # a secret: never in a log line of the settings
