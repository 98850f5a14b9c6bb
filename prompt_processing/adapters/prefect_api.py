"""The Prefect API and CLI as the rest of the code uses them: work pools, deployments, flow runs.

Everything talks to the Prefect API at ``settings.prefect.url``; Prefect subprocesses get it as
``PREFECT_API_URL``. The work pools are defined in ``deployments/work-pools.yaml`` (every pool a
deployment of ``prefect.yaml`` names must be defined there); the deployments in ``prefect.yaml``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote
from uuid import UUID

import yaml  # type: ignore[import-untyped]
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prompt_processing.settings import Settings

PREFECT_YAML = "prefect.yaml"
WORK_POOLS_YAML = "deployments/work-pools.yaml"
AUTOMATIONS_YAML = "deployments/automations.yaml"


class WorkPoolDefinition(BaseModel):
    """One entry of ``deployments/work-pools.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    type: str = Field(min_length=1, description="Prefect worker type: process, kubernetes, ...")
    description: str = ""
    base_job_template: dict[str, Any] = Field(
        default_factory=dict,
        description="The pool's base job template, read from the JSON file the entry's `baseJobTemplate` names "
        "(beside work-pools.yaml); empty: the worker type's default.",
    )


class Notify(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    block: str = Field(pattern=r"^[a-z0-9-]+/[^/]+$", description="<block type slug>/<block name>.")
    subject: str
    body: str


class AutomationDefinition(BaseModel):
    """One entry of ``deployments/automations.yaml``: a Prefect event trigger and a notification."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str = ""
    enabled: bool = False
    trigger: dict[str, Any]
    notify: Notify


class DeployError(RuntimeError):
    """The project's deployment files are missing or inconsistent, or `prefect deploy` failed."""


def prefect_env(settings: Settings) -> dict[str, str]:
    """Environment for Prefect subprocesses (CLI, Prefect worker and, through it, flow runs): the API,
    and the UI address their printed links use."""
    return os.environ | {"PREFECT_API_URL": settings.prefect.url, "PREFECT_UI_URL": settings.prefect.ui,
                         "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip


def work_pools(project_dir: Path) -> list[WorkPoolDefinition]:
    """The work pools the deployments of ``project_dir/prefect.yaml`` use, as defined in
    ``deployments/work-pools.yaml``; DeployError naming what is missing."""
    defined = {p.name: p for p in defined_work_pools(project_dir)}
    prefect_yaml = _read_yaml(project_dir / PREFECT_YAML)
    used = {d["work_pool"]["name"] for d in prefect_yaml.get("deployments", []) if d.get("work_pool")}
    missing = sorted(used - set(defined))
    if missing:
        raise DeployError(f"{PREFECT_YAML} uses work pool(s) {', '.join(missing)}, not defined in {WORK_POOLS_YAML}")
    return [defined[name] for name in sorted(used)]


def defined_work_pools(project_dir: Path) -> list[WorkPoolDefinition]:
    """Every pool ``deployments/work-pools.yaml`` defines, base job templates read; DeployError if invalid."""
    return _load_pool_definitions(project_dir / WORK_POOLS_YAML)


def ensure_work_pools(settings: Settings, pools: list[WorkPoolDefinition]) -> list[str]:
    """Create the pools that do not exist yet; return the names created (existing ones are kept)."""
    created = []
    with temporary_settings({PREFECT_API_URL: settings.prefect.url}), get_client(sync_client=True) as client:
        for pool in pools:
            try:
                client.create_work_pool(WorkPoolCreate(name=pool.name, type=pool.type, description=pool.description,
                                                       base_job_template=pool.base_job_template))  # fmt: skip
            except ObjectAlreadyExists:
                continue
            created.append(pool.name)
    return created


def automations(project_dir: Path) -> list[AutomationDefinition]:
    """The automations of ``deployments/automations.yaml`` (none if the file is absent)."""
    path = project_dir / AUTOMATIONS_YAML
    if not path.exists():
        return []
    try:
        return [AutomationDefinition.model_validate(e) for e in _read_yaml(path).get("automations") or []]
    except ValidationError as exc:
        raise DeployError(f"{path}: invalid automation: {exc}") from exc


def ensure_automations(settings: Settings, definitions: list[AutomationDefinition]) -> dict[str, str]:
    """Create or update each automation whose notification block exists; name -> what was done.

    An existing automation keeps its enabled/paused state (an operator's choice); a missing block
    is reported, not created.
    """
    done: dict[str, str] = {}
    with temporary_settings({PREFECT_API_URL: settings.prefect.url}), get_client(sync_client=True) as client:
        for definition in definitions:
            slug, block_name = definition.notify.block.split("/", 1)
            try:
                block = client.read_block_document_by_name(block_name, slug, include_secrets=False)
            except ObjectNotFound:
                done[definition.name] = (f"not created: no {definition.notify.block} notification block "
                                         "(create it, then run pp deploy again)")  # fmt: skip
                continue
            existing = client.read_automations_by_name(definition.name)
            automation = AutomationCore(
                name=definition.name, description=definition.description,
                enabled=existing[0].enabled if existing else definition.enabled,
                trigger=EventTrigger.model_validate(definition.trigger),
                actions=[SendNotification(block_document_id=block.id, subject=definition.notify.subject,
                                          body=definition.notify.body)],
            )  # fmt: skip
            if existing:
                client.update_automation(existing[0].id, automation)
                done[definition.name] = "updated"
            else:
                client.create_automation(automation)
                done[definition.name] = "created" if automation.enabled else "created (disabled: enable to be notified)"
    return done


def deploy_all(settings: Settings, project_dir: Path, *, log: Path | None = None) -> None:
    """Create the work pools, then `prefect deploy --all` in ``project_dir`` (where prefect.yaml is), then
    the automations; the output goes to ``log`` if given, else to stdout. DeployError with the output's
    tail if `prefect deploy` fails."""
    ensure_work_pools(settings, work_pools(project_dir))
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"]
    done = subprocess.run(
        command, cwd=project_dir, env=prefect_env(settings), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        _write(log, done.stdout + done.stderr, console=done.stdout)
        raise DeployError(f"prefect deploy --all failed ({done.returncode}):\n{(done.stdout + done.stderr)[-2000:]}")
    outcome = ensure_automations(settings, automations(project_dir))
    summary = "".join(f"automation {name}: {what}\n" for name, what in outcome.items())
    _write(log, done.stdout + done.stderr + summary, console=done.stdout + summary)


def _write(log: Path | None, text: str, *, console: str | None = None) -> None:
    """``text`` to ``log`` if given, else ``console`` (or ``text``) to stdout."""
    if log is not None:
        log.write_text(text)
    else:
        print(text if console is None else console, end="")


def prefect_worker_command(settings: Settings, *, limit: int | None = None) -> list[str]:
    """The `prefect worker start` command line for ``settings.prefect.work_pool`` (type from the pool)."""
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", settings.prefect.work_pool]
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


def run_form_url(ui: str, deployment_id: str, parameters: dict[str, Any]) -> str:
    """The UI's run form of a deployment, pre-filled with ``parameters``.

    The UI reads its ``parameters`` query as encodeURIComponent(JSON), itself encoded once more.
    """
    encoded = quote(quote(json.dumps(parameters, separators=(",", ":")), safe=""), safe="")
    return f"{ui.rstrip('/')}/deployments/deployment/{deployment_id}/run?parameters={encoded}"


def flow_run_url(settings: Settings, run_id: UUID) -> str:
    """Where the Prefect UI shows the flow run ``run_id``."""
    return f"{settings.prefect.ui}/runs/flow-run/{run_id}"


def _load_pool_definitions(path: Path) -> list[WorkPoolDefinition]:
    entries = _read_yaml(path).get("workPools")
    if not isinstance(entries, list):
        raise DeployError(f"{path}: expected a `workPools:` list")
    try:
        return [WorkPoolDefinition.model_validate(_with_template(entry, path.parent)) for entry in entries]
    except ValidationError as exc:
        raise DeployError(f"{path}: invalid work pool: {exc}") from exc


def _with_template(entry: Any, directory: Path) -> Any:
    """The entry with its ``baseJobTemplate`` file (relative to ``directory``) read in as ``base_job_template``."""
    if not isinstance(entry, dict) or "baseJobTemplate" not in entry:
        return entry
    path = directory / str(entry["baseJobTemplate"])
    try:
        template = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DeployError(f"{path}: cannot read the base job template of work pool {entry.get('name')}: {exc}") from exc
    return {k: v for k, v in entry.items() if k != "baseJobTemplate"} | {"base_job_template": template}


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise DeployError(f"cannot read {path} ({exc.strerror}); run from the project directory") from exc
    if not isinstance(data, dict):
        raise DeployError(f"{path}: expected a YAML mapping")
    return data
