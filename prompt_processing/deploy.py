"""Prefect plumbing of the CLI: the work pool, `prefect deploy --all`, the worker, flow runs.

Everything talks to the Prefect API at ``settings.prefect.url``; subprocesses get it as
PREFECT_API_URL.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists
from prefect.settings import PREFECT_API_URL, temporary_settings

from prompt_processing.settings import Settings

PROJECT_DIR = Path(__file__).resolve().parent.parent


def prefect_env(settings: Settings) -> dict[str, str]:
    """Environment for Prefect subprocesses (CLI, worker, flow runs)."""
    return os.environ | {"PREFECT_API_URL": settings.prefect.url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def ensure_work_pool(settings: Settings) -> bool:
    """Create the `process` work pool if missing; True if created."""
    with temporary_settings({PREFECT_API_URL: settings.prefect.url}), get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=settings.worker.work_pool, type="process"))
        except ObjectAlreadyExists:
            return False
    return True


def deploy_all(settings: Settings, *, log: Path | None = None) -> None:
    """`prefect deploy --all` from the project directory; its output goes to ``log`` if given.

    Raises RuntimeError with the output's tail if it fails.
    """
    ensure_work_pool(settings)
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"]
    done = subprocess.run(
        command, cwd=PROJECT_DIR, env=prefect_env(settings), capture_output=True, text=True, check=False
    )
    if log is not None:
        log.write_text(done.stdout + done.stderr)
    else:
        print(done.stdout, end="")
    if done.returncode != 0:
        raise RuntimeError(f"prefect deploy --all failed ({done.returncode}):\n{(done.stdout + done.stderr)[-2000:]}")


def worker_command(settings: Settings, *, limit: int | None = None) -> list[str]:
    """The `prefect worker start` command line for the pool."""
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", settings.worker.work_pool,
               "--type", "process"]  # fmt: skip
    if limit is not None:
        command += ["--limit", str(limit)]
    return command


def run_deployment(settings: Settings, name: str, parameters: dict[str, Any], *, idempotency_key: str | None = None,
                   tags: list[str] | None = None) -> UUID:  # fmt: skip
    """Create a flow run of deployment ``name`` (``flow/deployment``); return its id."""
    with temporary_settings({PREFECT_API_URL: settings.prefect.url}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        run = client.create_flow_run_from_deployment(
            deployment.id, parameters=parameters, idempotency_key=idempotency_key, tags=tags or []
        )
    return run.id
