"""KEDA ScaledJob's scaling decision (pure): KEDA's own table cases, our edge cases, properties.

The first tables transcribe the numbers of kedacore/keda's tests (inputs and expected outputs):
``pkg/scaling/executor/scale_jobs_test.go``, ``apis/keda/v1alpha1/scaledjob_types_test.go``
and ``pkg/scaling/scale_handler_test.go`` (``TestGetScaledJobState``, single trigger).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prompt_processing.autoscaler.rules import (
    KNOWN_STRATEGIES,
    Decision,
    decide,
    get_effective_max_scale,
    get_scaling_decision,
    jobs_to_create,
    queue_scale,
    replica_bounds,
    resolve_strategy,
    scaling_decision,
)

# --- KEDA's own cases ----------------------------------------------------------------------

# (strategy, deduction, percentage, (maxScale, running, pending, maxReplicaCount, scaleTo), expected effective max)
KEDA_EFFECTIVE_MAX_SCALE = [
    # TestDefaultScalingStrategy
    ("default", 0, None, (3, 2, 0, 5, 1), 1),
    ("default", 0, None, (2, 0, 0, 5, 1), 2),
    # TestCustomScalingStrategy: deduction 1, percentage 0.5
    ("custom", 1, 0.5, (3, 2, 0, 5, 1), 1),
    ("custom", 1, 0.5, (10, 0, 0, 10, 1), 9),
    # ... neither parameter set: behaves as default
    ("custom", 0, None, (3, 2, 0, 5, 1), 1),
    ("custom", 0, None, (2, 0, 0, 5, 1), 2),
    # ... percentage 0, deduction 2
    ("custom", 2, 0.0, (3, 2, 0, 5, 1), 1),
    # ... exceeding MaxReplicaCount: deduction -2, percentage 0
    ("custom", -2, 0.0, (3, 2, 0, 4, 1), 4),
    # TestCustomScalingStrategyNilQueueLengthDeduction: no deduction, percentage 0.5
    ("custom", 0, 0.5, (10, 2, 0, 100, 1), 9),
    ("custom", 0, 0.5, (10, 0, 0, 100, 1), 10),
    # TestAccurateScalingStrategy
    ("accurate", 0, 0.0, (3, 2, 0, 5, 1), 3),
    ("accurate", 0, 0.0, (5, 2, 0, 5, 1), 3),
    ("accurate", 0, 0.0, (3, 4, 2, 10, 1), 1),  # 2 pending jobs
    ("accurate", 0, 0.0, (5, 4, 2, 5, 1), 1),
    ("accurate", 0, 0.0, (3, 3, 3, 5, 1), 0),  # the 3 running jobs are pending
    ("accurate", 0, 0.0, (15, 15, 15, 20, 1), 0),
    ("accurate", 0, 0.0, (10, 10, 10, 15, 1), 0),
    ("accurate", 0, 0.0, (20, 15, 10, 20, 1), 5),  # partly pending
]

# TestEagerScalingStrategy: (maxScale, running, pending, maxReplicaCount, scaleTo) -> (effective max, scaleTo)
KEDA_EAGER = [
    ((4, 3, 0, 10, 1), (4, 10)),
    ((4, 0, 3, 10, 1), (4, 10)),
    ((4, 7, 0, 10, 1), (3, 10)),
    ((4, 1, 6, 10, 1), (3, 10)),
    ((15, 0, 0, 10, 1), (10, 10)),
]


@pytest.mark.parametrize(("strategy", "deduction", "percentage", "args", "expected"), KEDA_EFFECTIVE_MAX_SCALE)
def test_keda_effective_max_scale(
    strategy: str, deduction: int, percentage: float | None, args: tuple[int, int, int, int, int], expected: int
) -> None:
    effective, scale_to = get_effective_max_scale(
        strategy, *args, queue_length_deduction=deduction, running_job_percentage=percentage
    )
    assert effective == expected
    assert scale_to == args[4]  # every strategy but eager passes scaleTo through


@pytest.mark.parametrize(("args", "expected"), KEDA_EAGER)
def test_keda_eager(args: tuple[int, int, int, int, int], expected: tuple[int, int]) -> None:
    assert get_effective_max_scale("eager", *args) == expected


@pytest.mark.parametrize(
    ("strategy", "percentage", "expected"),
    [
        # TestNewNewScalingStrategy, and "empty string will be DefaultStrategy"
        ("custom", 0.0, "custom"),
        ("accurate", 0.0, "accurate"),
        ("default", None, "default"),
        ("default", 0.0, "default"),
        ("custom", None, "default"),
        ("eager", 0.0, "eager"),
        ("", None, "default"),
        ("no-such-strategy", 0.0, "default"),  # KEDA falls back; its CRD enum rejects such names
    ],
)
def test_keda_strategy_selection(strategy: str, percentage: float | None, expected: str) -> None:
    assert resolve_strategy(strategy, percentage) == expected


@pytest.mark.parametrize(
    ("min_rc", "running", "scale_to", "max_scale", "expected"),
    [
        (2, 0, 0, 0, (2, 2)),  # TestRunningJobCountSmallerMinReplicaCount
        (2, 1, 0, 0, (1, 1)),  # TestRunningJobCountIsDeductedFromMinReplicaCount
        (1, 1, 2, 2, (2, 2)),  # TestRunningJobCountGreaterOrEqualMinReplicaCountExecutesScalingStrategy
    ],
)
def test_keda_get_scaling_decision(
    min_rc: int, running: int, scale_to: int, max_scale: int, expected: tuple[int, int]
) -> None:
    bounds = replica_bounds(min_rc, 100)  # the mock ScaledJob: maxReplicaCount 100, default strategy
    assert get_scaling_decision("default", running, scale_to, max_scale, 0, *bounds) == expected


@pytest.mark.parametrize(
    ("min_spec", "max_spec", "expected"),
    [  # TestScaledJob: (MinReplicaCount(), MaxReplicaCount()); a nil min is 0
        (0, 10, (0, 10)),
        (1, 10, (1, 9)),
        (1, None, (1, 100)),
        (0, None, (0, 100)),
        (10, 1, (1, 1)),
    ],
)
def test_keda_replica_bounds(min_spec: int, max_spec: int | None, expected: tuple[int, int]) -> None:
    assert replica_bounds(min_spec, max_spec) == expected


def test_keda_scaled_job_state_single_trigger() -> None:
    # TestGetScaledJobState: min 1, max 100, queue 20, target 2 -> queueLength 20, maxValue 10
    assert queue_scale(20, 2, replica_bounds(1, 100)[1]) == (20, 10)


def test_keda_create_jobs() -> None:
    # TestCreateJobs: createJobs(scaleTo=2, maxScale=2) creates 2 jobs
    assert jobs_to_create(True, 2, 2) == 2


# --- Our edge cases (Rubin production: min 3, max 1700) ------------------------------------


def _new(strategy: str, queue: int, running: int, pending: int = 0) -> int:
    """Rubin production's min 3 / max 1700; custom with deduction 0 and percentage 1.0 (ignored by the others)."""
    return scaling_decision(strategy, queue, 1, running, pending, 3, 1700, running_job_percentage=1.0)


@pytest.mark.parametrize("strategy", KNOWN_STRATEGIES)
def test_zero_queue_with_min_up_creates_nothing(strategy: str) -> None:
    assert _new(strategy, 0, 3) == 0
    assert scaling_decision(strategy, 0, 1, 0, 0, 0, 1700) == 0


@pytest.mark.parametrize("strategy", KNOWN_STRATEGIES)
def test_below_min_tops_up_whatever_the_queue(strategy: str) -> None:
    assert _new(strategy, 0, 0) == 3
    assert _new(strategy, 5000, 1, 1) == 2  # the queue waits for the next poll


@pytest.mark.parametrize("strategy", KNOWN_STRATEGIES)
def test_queue_above_max_fills_to_max(strategy: str) -> None:
    assert _new(strategy, 5000, 3) == 1697  # 3 + 1697 = maxReplicaCount


@pytest.mark.parametrize("strategy", KNOWN_STRATEGIES)
def test_running_above_max_creates_nothing(strategy: str) -> None:
    assert _new(strategy, 5000, 1800) == 0


def test_accurate_counts_pending_runs_against_the_queue() -> None:
    # 10 runs beyond the minimum, all still starting: they will take the 10 waiting entries
    assert _new("accurate", 10, 13, 10) == 0
    assert _new("accurate", 15, 13, 10) == 5
    # the same 10 runs busy (not pending): the 10 waiting entries need 10 new runs
    assert _new("accurate", 10, 13, 0) == 10


def test_eager_fills_free_slots_while_entries_wait() -> None:
    # 100 busy runs beyond the minimum, 5 entries waiting: default assumes the busy runs take them
    assert _new("eager", 5, 103) == 5
    assert _new("default", 5, 103) == 0
    # eager counts pending runs twice (they are in both counts), as KEDA does
    assert _new("eager", 5, 1700 - 2, 2) == 0


def test_default_caps_at_raw_queue_not_queue_over_target() -> None:
    # scaleTo is ceil(Q), maxScale is ceil(Q / T): with T = 2, 20 entries give 10 jobs
    assert scaling_decision("default", 20, 2, 0, 0, 0, 100) == 10
    assert scaling_decision("default", 3, 2, 0, 0, 0, 100) == 2  # ceil(1.5)
    assert scaling_decision("default", 20, 0, 0, 0, 0, 100) == 0  # target 0: KEDA's maxValue stays 0


def test_custom_truncates_running_share_toward_zero() -> None:
    # maxScale 10 - 0 - trunc(3 * 0.5) = 9; with -0.5: 10 - trunc(-1.5) = 11 (Go's int64 conversion)
    assert get_effective_max_scale("custom", 10, 3, 0, 100, 100, running_job_percentage=0.5) == (9, 100)
    assert get_effective_max_scale("custom", 10, 3, 0, 100, 100, running_job_percentage=-0.5) == (11, 100)


def test_activation_threshold_and_inactive_trigger() -> None:
    assert scaling_decision("eager", 5, 1, 0, 0, 0, 100, activation_threshold=5) == 0
    assert scaling_decision("eager", 6, 1, 0, 0, 0, 100, activation_threshold=5) == 6
    # min > 0 keeps the ScaledJob active, but an inactive trigger adds nothing beyond the top-up
    assert scaling_decision("eager", 5, 1, 3, 0, 3, 100, activation_threshold=5) == 0


def test_min_above_max_and_unset_max_follow_keda() -> None:
    assert scaling_decision("default", 0, 1, 0, 0, 10, 1) == 1  # min clamped to max
    assert scaling_decision("eager", 500, 1, 1, 0, 1, None) == 100  # unset max: 100 beyond the min


def test_decide_reports_kedas_numbers() -> None:
    decision = decide("eager", 40, 1, 13, 2, 3, 1700)
    assert decision == Decision(
        strategy="eager", is_active=True, scale_to=1697, max_scale=40, effective_max_scale=40, new_jobs=40
    )
    assert decide("custom", 1, running_job_percentage=None).strategy == "default"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"queue_length": -1},
        {"target_average_value": -1},
        {"running_job_count": -1},
        {"pending_job_count": -1},
        {"min_replica_count": -1},
        {"max_replica_count": -1},
        {"activation_threshold": -1},
        {"running_job_percentage": math.nan, "strategy": "custom"},
    ],
)
def test_negative_inputs_raise(kwargs: dict[str, float | str]) -> None:
    args: dict[str, float | str] = {"strategy": "default", "queue_length": 1}
    args.update(kwargs)
    with pytest.raises(ValueError, match="must be"):
        scaling_decision(**args)  # type: ignore[arg-type]


def test_effective_max_scale_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="running_job_count"):
        get_effective_max_scale("default", 1, -1, 0, 5, 1)


# --- Properties ---------------------------------------------------------------------------

counts = st.integers(min_value=0, max_value=3000)
inputs = st.fixed_dictionaries(
    {
        "queue_length": counts,
        "target_average_value": st.integers(min_value=0, max_value=5),
        "running_job_count": counts,
        "pending_job_count": counts,
        "min_replica_count": st.integers(min_value=0, max_value=50),
        "max_replica_count": st.integers(min_value=0, max_value=2000),
    }
)
custom_kw = st.fixed_dictionaries(
    {
        "queue_length_deduction": st.integers(min_value=-20, max_value=20),
        "running_job_percentage": st.none() | st.floats(min_value=-2, max_value=2),
    }
)


@given(strategy=st.sampled_from(KNOWN_STRATEGIES), kw=inputs, extra=custom_kw)
def test_never_negative(strategy: str, kw: dict[str, int], extra: dict[str, float | None]) -> None:
    assert scaling_decision(strategy, **kw, **extra) >= 0  # type: ignore[arg-type]


@given(strategy=st.sampled_from(("default", "accurate", "eager")), kw=inputs)
def test_never_beyond_max_replica_count(strategy: str, kw: dict[str, int]) -> None:
    # Holds for min <= max. Not for custom: a negative deduction or a percentage below 1 can go
    # beyond (KEDA's own case: deduction -2 gives 4 with 2 running and MaxReplicaCount 4).
    if kw["min_replica_count"] > kw["max_replica_count"]:
        return
    new = scaling_decision(strategy, **kw)
    assert new <= max(0, kw["max_replica_count"] - kw["running_job_count"])


@given(kw=inputs)
def test_eager_at_least_default_when_nothing_is_pending(kw: dict[str, int]) -> None:
    # True by construction only without pending jobs: eager subtracts them, default does not
    # (maxRC 10, 5 running beyond min, all 5 pending, queue 10: default 5, eager 0).
    kw = kw | {"pending_job_count": 0}
    assert scaling_decision("eager", **kw) >= scaling_decision("default", **kw)


def test_eager_below_default_with_pending_jobs() -> None:
    assert scaling_decision("default", 10, 1, 5, 5, 0, 10) == 5
    assert scaling_decision("eager", 10, 1, 5, 5, 0, 10) == 0
