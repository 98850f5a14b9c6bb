"""What the autoscaler measures each tick: the stream's queue (Redis) and the runs (Prefect).

Queue, in one MULTI/EXEC so the numbers are one consistent snapshot:

- ``lag``: XINFO GROUPS ``lag``, entries never delivered to the group (Redis 7). When Redis
  cannot tell (``lag`` nil, after entries inside the undelivered range were deleted), the
  entries after ``last-delivered-id`` are counted with XRANGE instead, up to ``scan_limit``.
- ``pending``: XPENDING's count, entries delivered and not yet acknowledged.
- ``stream_length``: XLEN.
- ``stale_pending``: pending entries idle longer than ``claim_idle_s`` (XPENDING IDLE), up to
  ``scan_limit``: a dead activator's, which only a new reader will reclaim. KEDA never counts
  them, so with ``lagCount`` and no run left they would wait forever.
- ``tail_id``: the newest entry's id, where the autoscaler's wake-up read continues.

A missing stream or group measures as zeros, not an error; other Redis errors propagate.

Runs (``count_jobs_async``): two filtered counts on the deployment, never a scan of all runs.
KEDA's ``running_job_count`` is every run not finished: Scheduled (including Late and
AwaitingRetry, which are Scheduled-type states), Pending, Running, Paused, Cancelling;
``pending_job_count`` is those not yet started: Scheduled and Pending.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import redis
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType

from prompt_processing.autoscaler.spec import Metric

UNFINISHED_STATES = (StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED,
                     StateType.CANCELLING)  # fmt: skip
NOT_STARTED_STATES = (StateType.SCHEDULED, StateType.PENDING)


@dataclass(frozen=True, slots=True)
class QueueMetrics:
    """One snapshot of an instrument stream and its consumer group."""

    lag: int
    pending: int
    stream_length: int
    stale_pending: int
    tail_id: str
    lag_counted: bool = False  # Redis reported no lag; ``lag`` was counted with XRANGE

    def queue_length(self, metric: Metric) -> int:
        """KEDA's queue metric for ``metric``, plus the stale entries it does not already hold.

        ``pendingEntriesCount`` and ``streamLength`` already include stale pending entries
        (they are pending, and in the stream); only the lag misses them.
        """
        if metric == "lagCount":
            return self.lag + self.stale_pending
        if metric == "pendingEntriesCount":
            return self.pending
        return self.stream_length


@dataclass(frozen=True, slots=True)
class JobCounts:
    """KEDA's job counts for one deployment: ``running`` includes ``pending``."""

    running: int
    pending: int


def measure_queue(
    client: redis.Redis, stream: str, group: str, *, claim_idle_s: float, scan_limit: int
) -> QueueMetrics:
    """Measure ``stream`` / ``group`` in one transaction; zeros when either is missing."""
    pipe = client.pipeline(transaction=True)
    pipe.xinfo_groups(stream)
    pipe.xpending(stream, group)
    pipe.xlen(stream)
    pipe.xrevrange(stream, "+", "-", count=1)
    pipe.xpending_range(stream, group, "-", "+", scan_limit, idle=max(1, int(claim_idle_s * 1000)))
    groups, summary, length, newest, stale = (_or_missing(r) for r in pipe.execute(raise_on_error=False))
    info = next((g for g in groups or [] if _text(g["name"]) == group), None)
    lag, counted = 0, False
    if info is not None:
        if info.get("lag") is None:
            lag, counted = _count_undelivered(client, stream, _text(info["last-delivered-id"]), scan_limit), True
        else:
            lag = int(info["lag"])
    return QueueMetrics(
        lag=lag,
        pending=int(summary["pending"]) if summary else 0,
        stream_length=int(length or 0),
        stale_pending=len(stale or []),
        tail_id=_text(newest[0][0]) if newest else "0-0",
        lag_counted=counted,
    )


async def count_jobs_async(client: PrefectClient, deployment_id: UUID) -> JobCounts:
    """Runs of the deployment not finished, and those of them not started (two counts)."""
    pending = await client.count_flow_runs(flow_run_filter=_runs(deployment_id, NOT_STARTED_STATES))
    running = await client.count_flow_runs(flow_run_filter=_runs(deployment_id, UNFINISHED_STATES))
    # Counted in this order, a run starting in between is never pending without being counted
    # at all; one created in between only makes ``running`` larger. Either way pending <= running.
    return JobCounts(running=running, pending=min(pending, running))


def _runs(deployment_id: UUID, states: tuple[StateType, ...]) -> FlowRunFilter:
    return FlowRunFilter(
        deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(states))),
    )


def _count_undelivered(client: redis.Redis, stream: str, last_delivered_id: str, limit: int) -> int:
    entries: Any = client.xrange(stream, f"({last_delivered_id}", "+", count=limit)
    return len(entries)


def _or_missing(result: Any) -> Any:
    """A reply, or None where the stream or group does not exist; other errors are raised."""
    if isinstance(result, redis.ResponseError):
        message = str(result)
        if "no such key" in message.lower() or message.startswith("NOGROUP"):
            return None
        raise result
    return result


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
