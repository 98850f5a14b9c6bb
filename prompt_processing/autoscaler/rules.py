"""KEDA ScaledJob's scaling decision, re-done as pure functions.

Every rule here mirrors the KEDA operator (kedacore/keda, ``main``), so that a queue and a set
of runs measured by our autoscaler give the same number of new runs that KEDA would create:

- ``pkg/scaling/scaledjob/metrics.go``: ``CalculateQueueLengthAndMaxValue`` and
  ``IsScaledJobActive`` turn the queue metric into ``scaleTo`` and ``maxScale``;
- ``apis/keda/v1alpha1/scaledjob_types.go``: ``MinReplicaCount()`` and ``MaxReplicaCount()``;
- ``pkg/scaling/executor/scale_jobs.go``: ``getScalingDecision``, the four strategies'
  ``GetEffectiveMaxScale``, and the clamping in ``RequestJobScale`` / ``createJobs``.

Vocabulary (KEDA's): ``running_job_count`` is every job not yet finished (neither Complete nor
Failed), *including* the pending ones; ``pending_job_count`` is the unfinished jobs with no pod
Running or Succeeded (or, with ``pendingPodConditions``, with no pod meeting all of them).
Negative counts cannot be measured, so every function raises ValueError for them instead of
computing KEDA's arithmetic on nonsense.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT = "default"
CUSTOM = "custom"
ACCURATE = "accurate"
EAGER = "eager"
KNOWN_STRATEGIES = (DEFAULT, CUSTOM, ACCURATE, EAGER)
KEDA_DEFAULT_MAX_REPLICA_COUNT = 100  # a ScaledJob without spec.maxReplicaCount


def _require_non_negative(**values: float) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def resolve_strategy(strategy: str, running_job_percentage: float | None = None) -> str:
    """The strategy KEDA actually runs for ``strategy``; mirrors ``NewScalingStrategy``.

    ``custom`` without a (parseable) ``customScalingRunningJobPercentage`` falls back to
    ``default``, as does any unknown name: KEDA never fails here. (Its CRD enumerates
    default/custom/accurate/eager, so the API server rejects other names before KEDA sees them.)
    """
    if strategy == CUSTOM:
        return CUSTOM if running_job_percentage is not None else DEFAULT
    if strategy in (ACCURATE, EAGER):
        return strategy
    return DEFAULT


def replica_bounds(min_replica_count: int, max_replica_count: int | None) -> tuple[int, int]:
    """Return KEDA's (``MinReplicaCount()``, ``MaxReplicaCount()``) for a ScaledJob spec.

    The returned max is the room for jobs *beyond* the minimum: ``max - min``. KEDA's quirks,
    kept: with min > max both become ``max`` (not ``max - max``), and with no max set it is
    100 whatever the min.
    """
    _require_non_negative(min_replica_count=min_replica_count)
    if max_replica_count is None:
        return min_replica_count, KEDA_DEFAULT_MAX_REPLICA_COUNT
    _require_non_negative(max_replica_count=max_replica_count)
    if min_replica_count > max_replica_count:
        return max_replica_count, max_replica_count
    return min_replica_count, max_replica_count - min_replica_count


def queue_scale(
    queue_length: int, target_average_value: float, max_replica_count: int, *, trigger_active: bool = True
) -> tuple[int, int]:
    """Return (scale_to, max_scale) for one trigger; mirrors ``CalculateQueueLengthAndMaxValue``
    followed by ``IsScaledJobActive`` (multipleScalersCalculation ``max``, the default).

    ``scale_to = ceil(Q)`` (the raw metric, *not* divided by the target) and
    ``max_scale = ceil(min(Q / T, max_replica_count))``, 0 when T is 0. An inactive trigger
    contributes nothing: both are 0. ``max_replica_count`` is KEDA's ``MaxReplicaCount()``.
    """
    _require_non_negative(
        queue_length=queue_length, target_average_value=target_average_value, max_replica_count=max_replica_count
    )
    if not trigger_active or queue_length == 0:
        return 0, 0
    max_value = 0.0
    if target_average_value != 0:
        max_value = min(queue_length / target_average_value, float(max_replica_count))
    return math.ceil(queue_length), math.ceil(min(max_value, float(max_replica_count)))


def get_effective_max_scale(
    strategy: str,
    max_scale: int,
    running_job_count: int,
    pending_job_count: int,
    max_replica_count: int,
    scale_to: int,
    *,
    queue_length_deduction: int = 0,
    running_job_percentage: float | None = None,
) -> tuple[int, int]:
    """Return (effective_max_scale, scale_to) exactly as KEDA's ``GetEffectiveMaxScale``.

    Arguments as KEDA passes them: ``running_job_count`` already less minReplicaCount,
    ``max_replica_count`` is ``MaxReplicaCount()`` (max - min). With M = max_scale,
    R = running, P = pending, maxRC = max_replica_count:

    - default: (M - R, scale_to)
    - custom: (min(M - deduction - trunc(R * percentage), maxRC), scale_to); with no
      percentage KEDA runs ``default`` instead (see ``resolve_strategy``); no deduction is 0
    - accurate: (maxRC - R if M + R - P > maxRC else M - P, scale_to)
    - eager: (min(maxRC - R - P, M), maxRC): eager ignores the queue's scale_to
    - anything else: default, as KEDA does

    The effective max may be negative; ``jobs_to_create`` clamps it, as ``RequestJobScale`` does.
    """
    _require_non_negative(
        max_scale=max_scale,
        running_job_count=running_job_count,
        pending_job_count=pending_job_count,
        max_replica_count=max_replica_count,
        scale_to=scale_to,
    )
    if running_job_percentage is not None and not math.isfinite(running_job_percentage):
        raise ValueError(f"running_job_percentage must be finite, got {running_job_percentage}")
    selected = resolve_strategy(strategy, running_job_percentage)
    if selected == CUSTOM and running_job_percentage is not None:  # custom is chosen only with one
        running_share = math.trunc(running_job_count * running_job_percentage)  # Go's int64(float64)
        return min(max_scale - queue_length_deduction - running_share, max_replica_count), scale_to
    if selected == ACCURATE:
        if max_scale + running_job_count - pending_job_count > max_replica_count:
            return max_replica_count - running_job_count, scale_to
        return max_scale - pending_job_count, scale_to
    if selected == EAGER:
        return min(max_replica_count - running_job_count - pending_job_count, max_scale), max_replica_count
    return max_scale - running_job_count, scale_to


def get_scaling_decision(
    strategy: str,
    running_job_count: int,
    scale_to: int,
    max_scale: int,
    pending_job_count: int,
    min_replica_count: int,
    max_replica_count: int,
    *,
    queue_length_deduction: int = 0,
    running_job_percentage: float | None = None,
) -> tuple[int, int]:
    """Return (effective_max_scale, scale_to); mirrors KEDA's ``getScalingDecision``.

    ``min_replica_count`` / ``max_replica_count`` are KEDA's ``MinReplicaCount()`` /
    ``MaxReplicaCount()`` (see ``replica_bounds``). While fewer than min jobs are unfinished,
    KEDA only tops up: both numbers become ``min - running``, whatever the queue and strategy.
    Otherwise the strategy runs with ``running - min`` as its running count.
    """
    _require_non_negative(running_job_count=running_job_count, min_replica_count=min_replica_count)
    if running_job_count < min_replica_count:
        top_up = min_replica_count - running_job_count
        return top_up, top_up
    return get_effective_max_scale(
        strategy,
        max_scale,
        running_job_count - min_replica_count,
        pending_job_count,
        max_replica_count,
        scale_to,
        queue_length_deduction=queue_length_deduction,
        running_job_percentage=running_job_percentage,
    )


def jobs_to_create(is_active: bool, scale_to: int, effective_max_scale: int) -> int:
    """Return how many jobs KEDA creates; mirrors ``RequestJobScale`` then ``createJobs``.

    Nothing unless the ScaledJob is active; a negative effective max counts as 0; otherwise
    ``min(scale_to, effective_max_scale)``.
    """
    if not is_active or effective_max_scale <= 0:
        return 0
    return max(0, min(scale_to, effective_max_scale))


@dataclass(frozen=True, slots=True)
class Decision:
    """One polling interval's decision, with KEDA's intermediate numbers for logs and metrics."""

    strategy: str  # the strategy KEDA runs (after its fallbacks)
    is_active: bool
    scale_to: int
    max_scale: int
    effective_max_scale: int
    new_jobs: int


def decide(
    strategy: str,
    queue_length: int,
    target_average_value: float = 1,
    running_job_count: int = 0,
    pending_job_count: int = 0,
    min_replica_count: int = 0,
    max_replica_count: int | None = KEDA_DEFAULT_MAX_REPLICA_COUNT,
    *,
    queue_length_deduction: int = 0,
    running_job_percentage: float | None = None,
    activation_threshold: int = 0,
) -> Decision:
    """Return the whole ``Decision`` for one polling interval (see ``scaling_decision``)."""
    _require_non_negative(
        running_job_count=running_job_count,
        pending_job_count=pending_job_count,
        activation_threshold=activation_threshold,
    )
    min_rc, max_rc = replica_bounds(min_replica_count, max_replica_count)
    trigger_active = queue_length > activation_threshold  # KEDA: metric > activationLagCount etc.
    scale_to, max_scale = queue_scale(queue_length, target_average_value, max_rc, trigger_active=trigger_active)
    effective, scale_to = get_scaling_decision(
        strategy,
        running_job_count,
        scale_to,
        max_scale,
        pending_job_count,
        min_rc,
        max_rc,
        queue_length_deduction=queue_length_deduction,
        running_job_percentage=running_job_percentage,
    )
    is_active = trigger_active or min_rc > 0  # IsScaledJobActive: minReplicaCount > 0 keeps it active
    return Decision(
        strategy=resolve_strategy(strategy, running_job_percentage),
        is_active=is_active,
        scale_to=scale_to,
        max_scale=max_scale,
        effective_max_scale=max(effective, 0),
        new_jobs=jobs_to_create(is_active, scale_to, effective),
    )


def scaling_decision(
    strategy: str,
    queue_length: int,
    target_average_value: float = 1,
    running_job_count: int = 0,
    pending_job_count: int = 0,
    min_replica_count: int = 0,
    max_replica_count: int | None = KEDA_DEFAULT_MAX_REPLICA_COUNT,
    *,
    queue_length_deduction: int = 0,
    running_job_percentage: float | None = None,
    activation_threshold: int = 0,
) -> int:
    """Return the number of new jobs (runs) to create this polling interval, as KEDA would.

    Mirrors one ScaledJob poll end to end: ``IsScaledJobActive`` (Q -> scaleTo, maxScale),
    ``getScalingDecision`` (minReplicaCount top-up, else the strategy's
    ``GetEffectiveMaxScale``), then ``RequestJobScale`` / ``createJobs`` (negative -> 0, only
    when active, at most scaleTo). Inputs are the spec values and the measured counts:
    ``running_job_count`` = unfinished jobs including pending ones, ``pending_job_count`` =
    those not yet running. ``max_replica_count=None`` is a ScaledJob with none set (KEDA: 100).
    ``activation_threshold`` is the trigger's activation value (Redis streams:
    ``activationLagCount``, default 0): the trigger is active while Q exceeds it.
    Raises ValueError for a negative count, queue length, target or threshold.
    """
    return decide(
        strategy,
        queue_length,
        target_average_value,
        running_job_count,
        pending_job_count,
        min_replica_count,
        max_replica_count,
        queue_length_deduction=queue_length_deduction,
        running_job_percentage=running_job_percentage,
        activation_threshold=activation_threshold,
    ).new_jobs
