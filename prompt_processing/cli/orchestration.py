"""``pp`` commands that talk to Prefect: deploy, the Prefect worker, activator runs, reruns."""

from __future__ import annotations

import enum
import os
import warnings
from pathlib import Path
from typing import Annotated

import typer

from prompt_processing.cli import reruns, state

PANEL = "Prefect"


class PoolType(enum.StrEnum):
    """The worker types deployments/work-pools.yaml defines a pool for."""

    process = "process"
    kubernetes = "kubernetes"


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel=PANEL)(deploy)
    app.command("prefect-worker", rich_help_panel=PANEL)(prefect_worker)
    app.command("worker", hidden=True, deprecated=True)(worker)
    app.command(rich_help_panel=PANEL)(activators)
    app.command("run-activator", rich_help_panel=PANEL)(run_activator)
    app.command(rich_help_panel=PANEL)(reruns.rerun)


def deploy(
    ctx: typer.Context,
    pool_type: Annotated[
        PoolType, typer.Option(help="The target: the local process pool, or the kubernetes pool (production).")
    ] = PoolType.process,
    image: Annotated[
        str | None, typer.Option(help="kubernetes: the image of the runs' Jobs (default: the pool's current one; "
                                 "a new pool's: the template's).")
    ] = None,
    project_dir: Annotated[Path, typer.Option(help="Where prefect.yaml and deployments/ are.")] = Path("."),
) -> None:
    """Create or update the work pool of --pool-type (deployments/work-pools.yaml) and deploy every
    deployment of prefect.yaml to it (prefect deploy --all)."""
    from prompt_processing.adapters import prefect_api

    prefect_api.deploy_all(state(ctx).settings, project_dir, pool_type=pool_type.value, image=image)


def prefect_worker(
    ctx: typer.Context, limit: Annotated[int | None, typer.Option(help="Most flow runs at once.")] = None
) -> None:
    """Run a Prefect worker for PP_PREFECT__WORK_POOL: it starts the flow runs (activators, reruns).

    SIGTERM/SIGINT are passed on to it; it is killed if it has not stopped within
    PP_PREFECT__WORKER_SHUTDOWN_DEADLINE_S."""
    from prompt_processing.adapters import prefect_api
    from prompt_processing.services.lifecycle import supervise

    settings = state(ctx).settings
    command = prefect_api.prefect_worker_command(settings, limit=limit)
    status = supervise(command, prefect_api.prefect_worker_env(settings), name="the Prefect worker",
                       shutdown_deadline_s=settings.prefect.worker_shutdown_deadline_s)  # fmt: skip
    raise typer.Exit(status)


def worker(
    ctx: typer.Context, limit: Annotated[int | None, typer.Option(help="Most flow runs at once.")] = None
) -> None:
    """Old name of `pp prefect-worker` (removed in the next release)."""
    warnings.warn("`pp worker` is deprecated; use `pp prefect-worker`", FutureWarning, stacklevel=1)
    prefect_worker(ctx, limit)


def activators(
    ctx: typer.Context,
    instrument: Annotated[str, typer.Option(help="Camera whose stream the activators read.")] = "LSSTCam",
    count: Annotated[int, typer.Option(min=1, help="How many activator flow runs to create.")] = 1,
) -> None:
    """Create activator flow runs by hand (the autoscaler does this as work lands)."""
    from prompt_processing.adapters import prefect_api
    from prompt_processing.model.naming import activator_deployment
    from prompt_processing.model.queue_contract import QueueContract

    settings = state(ctx).settings
    contract = QueueContract.for_instrument(instrument, settings.queue)
    for _ in range(count):
        run_id = prefect_api.run_deployment(settings, activator_deployment(instrument),
                                            {"instrument": instrument, "queue": contract.model_dump()},
                                            tags=["activator"])  # fmt: skip
        print(f"activator flow run {run_id}: {prefect_api.flow_run_url(settings, run_id)}")


def run_activator(
    ctx: typer.Context,
    instrument: Annotated[str, typer.Argument(help="Camera whose stream the activator reads.")],
) -> None:
    """Be one activator: a run of activator/activator-<instrument>, executed in this process (a KEDA
    ScaledJob's pod). It shows in the Prefect UI like the autoscaler's runs and ends when idle.

    The run is created Pending, so no Prefect worker starts it too; then this process becomes
    Prefect's engine for it (`python -m prefect.engine <run>`): the pod's SIGTERM reaches the
    activator, which hands its visits back and ends Cancelled."""
    from prompt_processing.adapters import prefect_api
    from prompt_processing.model.naming import activator_deployment
    from prompt_processing.model.queue_contract import QueueContract

    settings = state(ctx).settings
    contract = QueueContract.for_instrument(instrument, settings.queue)
    run_id = prefect_api.run_deployment(settings, activator_deployment(instrument),
                                        {"instrument": instrument, "queue": contract.model_dump()},
                                        tags=["activator", "run-activator"], here=True)  # fmt: skip
    print(f"activator flow run {run_id}: {prefect_api.flow_run_url(settings, run_id)}", flush=True)
    command = prefect_api.execute_run_command(run_id)
    os.execve(command[0], command, prefect_api.prefect_env(settings))
