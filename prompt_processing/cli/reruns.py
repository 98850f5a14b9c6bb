"""``pp rerun``: one visit-detector, or every one whose latest outcome is a failure.

Each rerun is a run of the ``process-visit-detector/rerun`` deployment with ``rerun_of`` set to
the failed run (found in the results stream), tagged ``rerun``, ``instrument:``, ``group:``,
``detector:`` and ``rerun-of:``. Its creation is idempotent per failed run: asking again before
the rerun finished returns the same run instead of a second one.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Annotated

import typer

from prompt_processing.adapters.redis_client import make_redis
from prompt_processing.cli import state
from prompt_processing.model.events import is_group_id

if TYPE_CHECKING:
    from prompt_processing.reporting.outcomes import Outcome

SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def rerun(
    ctx: typer.Context,
    instrument: Annotated[str | None, typer.Argument(help="Camera, e.g. LSSTCam.", show_default=False)] = None,
    group: Annotated[str | None, typer.Argument(help="The visit's groupId.", show_default=False)] = None,
    detector: Annotated[int | None, typer.Argument(help="Detector id, e.g. 94.", show_default=False)] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Rerun every visit-detector whose latest outcome "
                                         "(since --since) is a failure.")] = False,
    since: Annotated[str, typer.Option(help="With --failed: how far back to look, e.g. 2h, 30m, 1d.")] = "12h",
    only_instrument: Annotated[str | None, typer.Option("--instrument", help="With --failed: one camera.")] = None,
    only_group: Annotated[str | None, typer.Option("--group", help="With --failed: one visit.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Reprocess visit-detectors the APDB already holds: "
                                        "new outputs; nothing stored, no alert sent again.")] = False,
) -> None:  # fmt: skip
    """Rerun one visit-detector (INSTRUMENT GROUP DETECTOR), or with --failed every failed one."""
    if failed == (instrument is not None):
        raise typer.BadParameter("give either INSTRUMENT GROUP DETECTOR or --failed")
    if not failed and (group is None or detector is None):
        raise typer.BadParameter("give INSTRUMENT GROUP DETECTOR")
    for value in (group, only_group):
        if value is not None and not is_group_id(value):
            raise typer.BadParameter(f"group: {value!r:.140} is not a groupId (1-128 printable ASCII characters)")
    if detector is not None and detector < 0:
        raise typer.BadParameter(f"detector: {detector} is not a detector id (>= 0)")
    settings = state(ctx).settings

    from prompt_processing.model.instruments import active_detector_table
    from prompt_processing.reporting.outcomes import Outcome, failed_since

    client = make_redis(settings.redis, settings.retry, name="rerun")
    try:
        if failed:
            instruments = [only_instrument] if only_instrument else list(active_detector_table(settings.instruments))
            targets = failed_since(client, instruments, time.time() - _seconds(since), group=only_group)
        else:
            assert instrument is not None and group is not None and detector is not None
            window_s = settings.visit.results_retention_s
            latest = [o for o in failed_since(client, [instrument], time.time() - window_s, group=group)
                      if o.detector == detector]  # fmt: skip
            targets = latest or [Outcome(instrument, group, detector, "unknown", time.time())]
    finally:
        client.close()
    _create(ctx, targets, force=force)


def _create(ctx: typer.Context, targets: list[Outcome], *, force: bool) -> None:
    from rich.progress import Progress

    from prompt_processing.adapters import prefect_api
    from prompt_processing.model import naming

    settings = state(ctx).settings
    if not targets:
        print("nothing to rerun: no visit-detector's latest outcome is a failure")
        return
    with Progress(disable=len(targets) < 2) as progress:
        task = progress.add_task(f"creating {len(targets)} reruns", total=len(targets))
        for target in targets:
            rerun_of = target.run_id
            parameters = {"instrument": target.instrument, "group": target.group, "detector": target.detector,
                          "rerun_of": rerun_of, "force": force}  # fmt: skip
            run_tags = ["rerun", *naming.visit_tags(target.instrument, target.group, target.detector)]
            run_tags += [naming.rerun_of_tag(rerun_of)] if rerun_of else []
            key = f"pp-rerun/{rerun_of}{'/force' if force else ''}" if rerun_of else None
            run_id = prefect_api.run_deployment(settings, naming.RERUN_DEPLOYMENT, parameters, tags=run_tags,
                                                idempotency_key=key)  # fmt: skip
            why = f" ({target.reason})" if target.reason else ""
            progress.console.print(f"{target.instrument} {target.group} det{target.detector:03d}{why}: "
                                   f"{prefect_api.flow_run_url(settings, run_id)}")  # fmt: skip
            progress.advance(task)


def _seconds(since: str) -> float:
    match = SINCE.match(since.strip())
    if match is None:
        raise typer.BadParameter(f"{since!r} is not a duration like 90s, 30m, 2h, 1d", param_hint="--since")
    return float(match[1]) * SECONDS[match[2]]
