"""The Prefect API and CLI as the rest of the code uses them: work pools, deployments, flow runs.

Everything talks to the Prefect API at ``settings.prefect.url``; Prefect subprocesses get it as
``PREFECT_API_URL``. The work pools are defined in ``deployments/work-pools.yaml``, one per worker
type; the deployments in ``prefect.yaml``, which serves every pool: `pp deploy --pool-type T` picks the
pool of type T and passes it to `prefect deploy` as ``PP_DEPLOY_WORK_POOL`` and ``PP_DEPLOY_CODE_DIR``
(prefect.yaml's ``{{ $VAR }}`` placeholders).
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
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
from prefect.settings.legacy import Setting
from prefect.states import Pending
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prompt_processing.adapters import automations as prefect_automations
from prompt_processing.adapters.automations import AutomationDefinition
from prompt_processing.settings import Settings

PREFECT_YAML = "prefect.yaml"
WORK_POOLS_YAML = "deployments/work-pools.yaml"
AUTOMATIONS_YAML = "deployments/automations.yaml"


class WorkPoolDefinition(BaseModel):
    """One entry of ``deployments/work-pools.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1)
    type: str = Field(min_length=1, description="Prefect worker type: process, kubernetes, ...")
    description: str = ""
    base_job_template: dict[str, Any] = Field(
        default_factory=dict,
        description="The pool's base job template, read from the JSON file the entry's `baseJobTemplate` names "
        "(beside work-pools.yaml); empty: the worker type's default.",
    )
    code_directory: str | None = Field(
        None,
        alias="codeDirectory",
        description="Where the flows' code is when a run of this pool starts (the image's working directory); "
        "none: the project directory `pp deploy` runs in (a process worker on the same machine).",
    )

    def with_image(self, image: str) -> WorkPoolDefinition:
        """This pool with ``image`` as its job template's default image; DeployError if it has none."""
        variables = self.base_job_template.get("variables", {}).get("properties", {})
        if "image" not in variables:
            raise DeployError(f"work pool {self.name} (type {self.type}) has no image to set")
        template = json.loads(json.dumps(self.base_job_template))
        template["variables"]["properties"]["image"]["default"] = image
        return self.model_copy(update={"base_job_template": template})


class DeployError(RuntimeError):
    """The project's deployment files are missing or inconsistent, or `prefect deploy` failed."""


def prefect_env(settings: Settings) -> dict[str, str]:
    """Environment for Prefect subprocesses (CLI, Prefect worker and, through it, flow runs): the API,
    the UI address their printed links use, the flow runs' heartbeat, and this Python's bin directory
    first on PATH (a deployment's `python -m prefect.engine` command runs the same Python as its
    worker). The Kubernetes worker copies the PREFECT_* ones into the Jobs it creates."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])
    env = os.environ | settings.prefect.client_env() | {"PREFECT_UI_URL": settings.prefect.ui,
                                                        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PATH": path}
    if settings.prefect.heartbeat_s is not None:
        env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(settings.prefect.heartbeat_s)
    return env


def client_settings(settings: Settings) -> dict[Setting, Any]:
    """Prefect's client settings for ``settings``' server (its auth string with it), for
    ``temporary_settings``: every client of this process uses them while they are in force."""
    values: dict[Setting, Any] = {PREFECT_API_URL: settings.prefect.url}
    if settings.prefect.auth_string is not None:
        values[PREFECT_API_AUTH_STRING] = settings.prefect.auth_string.get_secret_value()
    return values


def work_pool(project_dir: Path, pool_type: str) -> WorkPoolDefinition:
    """The pool of type ``pool_type`` in ``deployments/work-pools.yaml``: the one `pp deploy --pool-type`
    targets; DeployError if there is none or more than one."""
    pools = [p for p in defined_work_pools(project_dir) if p.type == pool_type]
    if len(pools) != 1:
        types = sorted({p.type for p in defined_work_pools(project_dir)})
        raise DeployError(f"{WORK_POOLS_YAML} defines {len(pools)} work pools of type {pool_type!r} (need one; "
                          f"types defined: {', '.join(types)})")  # fmt: skip
    return pools[0]


def defined_work_pools(project_dir: Path) -> list[WorkPoolDefinition]:
    """Every pool ``deployments/work-pools.yaml`` defines, base job templates read; DeployError if invalid."""
    return _load_pool_definitions(project_dir / WORK_POOLS_YAML)


def ensure_work_pools(settings: Settings, pools: list[WorkPoolDefinition]) -> dict[str, str]:
    """Create each pool, or update its base job template and description to the definition's; name ->
    ``created``, ``updated`` or ``unchanged``. The files are the pools' source: an edit made in the UI
    is overwritten by the next `pp deploy`. Updating a template changes the Jobs of runs started after
    it; running ones keep their pods."""
    done = {}
    with temporary_settings(client_settings(settings)), get_client(sync_client=True) as client:
        for pool in pools:
            try:
                client.create_work_pool(WorkPoolCreate(name=pool.name, type=pool.type, description=pool.description,
                                                       base_job_template=pool.base_job_template))  # fmt: skip
                done[pool.name] = "created"
                continue
            except ObjectAlreadyExists:
                pass
            existing = client.read_work_pool(pool.name)
            if existing.type != pool.type:
                raise DeployError(f"work pool {pool.name} exists with type {existing.type}, defined as {pool.type}")
            wanted = pool.base_job_template or existing.base_job_template
            if (existing.base_job_template, existing.description or "") == (wanted, pool.description):
                done[pool.name] = "unchanged"
                continue
            client.update_work_pool(pool.name, WorkPoolUpdate(base_job_template=wanted, description=pool.description))
            done[pool.name] = "updated"
    return done


def current_image(settings: Settings, pool_name: str) -> str | None:
    """The image the pool ``pool_name`` gives its Jobs now (its template's default), or None if the
    pool does not exist or has no image: a `pp deploy` without --image must not undo an upgrade."""
    with temporary_settings(client_settings(settings)), get_client(sync_client=True) as client:
        try:
            template = client.read_work_pool(pool_name).base_job_template
        except ObjectNotFound:
            return None
    image = template.get("variables", {}).get("properties", {}).get("image", {}).get("default")
    return str(image) if image else None


def automations(project_dir: Path) -> list[AutomationDefinition]:
    """The automations of ``deployments/automations.yaml`` (none if the file is absent)."""
    try:
        return prefect_automations.load(project_dir / AUTOMATIONS_YAML)
    except ValueError as exc:
        raise DeployError(str(exc)) from exc


def ensure_automations(settings: Settings, definitions: list[AutomationDefinition]) -> dict[str, str]:
    """Create or update each automation (``prefect_automations.ensure``); name -> what was done."""
    with temporary_settings(client_settings(settings)), get_client(sync_client=True) as client:
        return prefect_automations.ensure(client, definitions)


def deploy_all(settings: Settings, project_dir: Path, *, pool_type: str = "process", image: str | None = None,
               log: Path | None = None) -> None:  # fmt: skip
    """Create or update the work pool of type ``pool_type`` (``image``: its Jobs' image; none: the
    pool keeps the image it has), then `prefect deploy --all` in ``project_dir`` (where prefect.yaml is)
    targeting that pool, then the automations; the output goes to ``log`` if given, else to stdout.
    DeployError with the output's tail if `prefect deploy` fails."""
    pool = work_pool(project_dir, pool_type)
    image = image or current_image(settings, pool.name)
    if image:
        pool = pool.with_image(image)
    pools = ensure_work_pools(settings, [pool])
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"]
    done = subprocess.run(command, cwd=project_dir, env=prefect_env(settings) | deploy_target_env(pool, project_dir),
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        _write(log, done.stdout + done.stderr, console=done.stdout)
        raise DeployError(f"prefect deploy --all failed ({done.returncode}):\n{(done.stdout + done.stderr)[-2000:]}")
    outcome = ensure_automations(settings, automations(project_dir))
    summary = "".join(f"work pool {name}: {what}\n" for name, what in pools.items())
    summary += "".join(f"automation {name}: {what}\n" for name, what in outcome.items())
    _write(log, done.stdout + done.stderr + summary, console=done.stdout + summary)


def deploy_target_env(pool: WorkPoolDefinition, project_dir: Path) -> dict[str, str]:
    """The variables prefect.yaml's placeholders name: the pool its deployments target and where a run
    finds the flows' code (the pull step's directory)."""
    return {"PP_DEPLOY_WORK_POOL": pool.name, "PP_DEPLOY_CODE_DIR": pool.code_directory or str(project_dir.resolve())}


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
    if settings.prefect.worker_health_port is not None:
        command.append("--with-healthcheck")
    return command


def prefect_worker_env(settings: Settings) -> dict[str, str]:
    """The Prefect worker's environment: ``prefect_env``, and where its health server listens."""
    env = prefect_env(settings)
    if settings.prefect.worker_health_port is not None:
        port = str(settings.prefect.worker_health_port)
        env |= {"PREFECT_WORKER_WEBSERVER_HOST": "0.0.0.0", "PREFECT_WORKER_WEBSERVER_PORT": port}
    return env


def run_deployment(settings: Settings, name: str, parameters: dict[str, Any], *, idempotency_key: str | None = None,
                   tags: list[str] | None = None, here: bool = False) -> UUID:  # fmt: skip
    """Create a flow run of deployment ``name`` (``flow/deployment``); return its id; DeployError if
    the deployment does not exist.

    ``here``: the run is created Pending, not Scheduled, so no worker takes it: the caller executes it
    (`prefect flow-run execute <id>`), as a Kubernetes Job a worker made would."""
    with temporary_settings(client_settings(settings)), get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise DeployError(f"no deployment {name} on {settings.prefect.url}: run `pp deploy` first") from None
        run = client.create_flow_run_from_deployment(
            deployment.id, parameters=parameters, idempotency_key=idempotency_key, tags=tags or [],
            state=Pending() if here else None,
        )
    return run.id


def execute_run_command(run_id: UUID) -> list[str]:
    """The command that executes flow run ``run_id`` in this one process (Prefect's engine, no
    supervisor): a SIGTERM reaches the flow itself, so an activator hands its visits back and ends
    Cancelled. prefect.yaml gives the activator deployments' Jobs the same command."""
    return [sys.executable, "-m", "prefect.engine", str(run_id)]


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
