"""``decide``, rule by rule: each case names one rule and the smallest history that shows it.

A case is a run of observations at given times, fed through ``decide`` with the state each
decision leaves (and, like the Deployment, the replicas it asked for); the last decision is
checked.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from tessera.operator.autoscale import (
    SCALE_UP_PERIOD_SECONDS,
    Decision,
    Observed,
    Policy,
    Recommendation,
    ScalingReason,
    State,
    decide,
)

T0 = 1_800_000_000.0  # any clock: decide only subtracts
POLICY = Policy(
    min_replicas=0,
    max_replicas=10,
    target_per_replica=4,
    scale_down_delay_seconds=300,
    scale_up_step=10,
    capacity_wait_seconds=120,
)


@dataclass(frozen=True)
class Step:
    """At ``at`` seconds: queued, in progress, and pods Pending with no node."""

    at: float
    queued: int
    in_progress: int = 0
    unschedulable: int = 0


def run(
    steps: list[Step], policy: Policy = POLICY, replicas: int = 0, state: State | None = None
) -> Decision:
    state = state or State()
    decision = None
    for step in steps:
        observed = Observed(step.queued, step.in_progress, replicas, step.unschedulable)
        decision = decide(observed, policy, state, T0 + step.at)
        state, replicas = decision.state, decision.replicas
    assert decision is not None
    return decision


CASES: dict[str, tuple[list[Step], Policy, int, int, str, str]] = {
    # name: (observations, policy, starting replicas, replicas, reason, words in the message)
    "a first job at zero starts a replica at once": (
        [Step(0, 1)],
        POLICY,
        0,
        1,
        ScalingReason.SCALED_UP,
        "Scaled 0 -> 1: 1 job in backlog, 4 per replica",
    ),
    "backlog counts queued and in progress: 19 jobs at 4 a replica is 5": (
        [Step(0, 3, 16)],
        POLICY,
        3,
        5,
        ScalingReason.SCALED_UP,
        "Scaled 3 -> 5: 19 jobs in backlog, 4 per replica",
    ),
    "in-progress jobs alone keep their replicas (not a queue-length scaler)": (
        [Step(0, 8), Step(400, 0, 8)],
        POLICY,
        0,
        2,
        ScalingReason.STEADY,
        "8 jobs in backlog",
    ),
    "wanted is clamped to maxReplicas": (
        [Step(0, 100)],
        POLICY,
        0,
        10,
        ScalingReason.SCALED_UP,
        "Scaled 0 -> 10",
    ),
    "minReplicas holds with nothing to do": (
        [Step(0, 0), Step(10_000, 0)],
        replace(POLICY, min_replicas=2),
        2,
        2,
        ScalingReason.STEADY,
        "2 replicas for 0 jobs",
    ),
    "minReplicas raised above the current count scales up": (
        [Step(0, 0)],
        replace(POLICY, min_replicas=3),
        1,
        3,
        ScalingReason.SCALED_UP,
        "Scaled 1 -> 3",
    ),
    "a burst beyond the step adds one step now": (
        [Step(0, 40)],
        replace(POLICY, scale_up_step=3),
        0,
        3,
        ScalingReason.SCALED_UP,
        "Scaled 0 -> 3",
    ),
    "more wake-ups within the period add nothing more": (
        [Step(0, 40), Step(1, 40), Step(SCALE_UP_PERIOD_SECONDS - 1, 41)],
        replace(POLICY, scale_up_step=3),
        0,
        3,
        ScalingReason.STEP_LIMITED,
        "at most 3 are added per 15 s",
    ),
    "the next period adds the next step": (
        [Step(0, 40), Step(1, 40), Step(SCALE_UP_PERIOD_SECONDS, 40)],
        replace(POLICY, scale_up_step=3),
        0,
        6,
        ScalingReason.SCALED_UP,
        "Scaled 3 -> 6",
    ),
    "a lull shorter than the window removes nothing": (
        [Step(0, 20), Step(60, 4), Step(299, 4)],
        POLICY,
        0,
        5,
        ScalingReason.STABILIZING,
        "1 wanted now, 5 within the last 300 s; keeping 5",
    ),
    "down to the most wanted within the window once it passes": (
        [Step(0, 20), Step(60, 12), Step(120, 4), Step(361, 4)],
        POLICY,
        0,
        3,
        ScalingReason.SCALED_DOWN,
        "Scaled 5 -> 3: 4 jobs in backlog, 4 per replica; 3 is the most wanted in the last 300 s",
    ),
    "to zero after a whole window idle": (
        [Step(0, 1), Step(5, 0), Step(305, 0)],
        POLICY,
        0,
        0,
        ScalingReason.SCALED_TO_ZERO,
        "Scaled 1 -> 0: no jobs in the last 300 s; releasing every GPU",
    ),
    "not to zero a moment before the window ends": (
        [Step(0, 1), Step(5, 0), Step(304, 0)],
        POLICY,
        0,
        1,
        ScalingReason.STABILIZING,
        "keeping 1",
    ),
    "never below the replicas still running jobs": (
        [Step(0, 0, 3)],
        replace(POLICY, scale_down_delay_seconds=0),
        3,
        3,
        ScalingReason.BUSY,
        "1 wanted, but 3 replicas still run jobs",
    ),
    "never below running jobs after the window either": (
        [Step(0, 40), Step(10, 0, 2), Step(400, 0, 2)],
        replace(POLICY, target_per_replica=8),
        0,
        2,
        ScalingReason.SCALED_DOWN,
        "Scaled 5 -> 2",
    ),
    "a long job keeps its replica past the window, at zero minReplicas": (
        [Step(0, 0, 1), Step(1_000, 0, 1)],
        POLICY,
        1,
        1,
        ScalingReason.STEADY,
        "1 replica for 1 job",
    ),
    "busy replicas hold a scale-down the window allows": (
        [Step(0, 0, 2)],
        replace(POLICY, scale_down_delay_seconds=0),
        3,
        2,
        ScalingReason.SCALED_DOWN,
        "Scaled 3 -> 2",
    ),
    "no delay: straight down with the backlog": (
        [Step(0, 20), Step(1, 0)],
        replace(POLICY, scale_down_delay_seconds=0),
        0,
        0,
        ScalingReason.SCALED_TO_ZERO,
        "Scaled 5 -> 0",
    ),
    "GPU shortage: Pending replicas stop the request growing": (
        [Step(0, 20), Step(10, 40, 0, 3)],
        POLICY,
        0,
        5,
        ScalingReason.WAITING_FOR_CAPACITY,
        "3 of 5 replicas Pending with no node since 08:00:10Z; asking for no more",
    ),
    "GPU shortage: Pending replicas are kept while nodes may come": (
        [Step(0, 20), Step(10, 40, 0, 3), Step(129, 40, 0, 3)],
        POLICY,
        0,
        5,
        ScalingReason.WAITING_FOR_CAPACITY,
        "keeping them until 08:02:10Z in case nodes are being added",
    ),
    "GPU shortage: after the wait, ask only for what fits": (
        [Step(0, 20), Step(10, 40, 0, 3), Step(130, 40, 0, 3)],
        POLICY,
        0,
        2,
        ScalingReason.CAPACITY_EXHAUSTED,
        "Scaled 5 -> 2: 3 of 5 replicas Pending with no node for 120 s",
    ),
    "GPU shortage: what fits is not grown again until the wait has passed": (
        [Step(0, 20), Step(10, 40, 0, 3), Step(130, 40, 0, 3), Step(140, 40), Step(249, 40)],
        POLICY,
        0,
        2,
        ScalingReason.CAPACITY_EXHAUSTED,
        "2 replicas is what fitted at 08:02:10Z; trying for 10 again at 08:04:10Z",
    ),
    "GPU shortage: then it tries again, one step": (
        [Step(0, 20), Step(10, 40, 0, 3), Step(130, 40, 0, 3), Step(250, 40)],
        POLICY,
        0,
        10,
        ScalingReason.SCALED_UP,
        "Scaled 2 -> 10",
    ),
    "GPU shortage: Pending replicas go when the work goes": (
        [Step(0, 20), Step(10, 0, 0, 3), Step(310, 0, 0, 3)],
        POLICY,
        0,
        0,
        ScalingReason.SCALED_TO_ZERO,
        "Scaled 5 -> 0",
    ),
    "GPU shortage: minReplicas is not shed": (
        [Step(0, 0, 0, 2), Step(200, 0, 0, 2)],
        replace(POLICY, min_replicas=2),
        2,
        2,
        ScalingReason.WAITING_FOR_CAPACITY,
        "all of them needed",
    ),
    "manual mode leaves the replicas alone and still reports demand": (
        [Step(0, 40)],
        replace(POLICY, manual=True),
        1,
        1,
        ScalingReason.MANUAL,
        "scaling.mode is Manual: 1 replica as set (40 jobs in backlog, 4 per replica)",
    ),
}


@pytest.mark.parametrize(
    ("steps", "policy", "start", "replicas", "reason", "words"),
    list(CASES.values()),
    ids=list(CASES),
)
def test_rule(
    steps: list[Step], policy: Policy, start: int, replicas: int, reason: str, words: str
) -> None:
    decision = run(steps, policy, start)
    assert (decision.replicas, decision.reason) == (replicas, reason), decision.message
    assert words in decision.message


def test_wanted_is_reported_before_the_rate_rules() -> None:
    decision = run([Step(0, 40)], replace(POLICY, scale_up_step=3))
    assert (decision.replicas, decision.wanted) == (3, 10)


def test_the_window_keeps_one_entry_per_falling_maximum() -> None:
    steps = [Step(float(t), q) for t, q in enumerate([20, 4, 12, 8, 8, 8, 4, 0])]
    state = run(steps).state
    assert [r.replicas for r in state.window] == [5, 3, 2, 1, 0]


def test_state_survives_a_round_trip_through_status() -> None:
    """What a restarted operator reads back decides as the state it wrote."""
    steps = [Step(0, 20), Step(10, 40, 0, 3), Step(130, 40, 0, 3), Step(140, 8)]
    state = run(steps).state
    assert state.capacity_ceiling == 2
    restored = State.from_status(state.to_status(), T0 + 140)
    assert restored == state
    for later in (Step(200, 8), Step(260, 40), Step(600, 0)):
        observed = Observed(later.queued, later.in_progress, 2)
        a = decide(observed, POLICY, state, T0 + later.at)
        b = decide(observed, POLICY, restored, T0 + later.at)
        assert (a.replicas, a.reason, a.message) == (b.replicas, b.reason, b.message)


def test_a_drop_in_demand_counts_from_when_it_was_seen() -> None:
    """Demand is sampled: the higher recommendation held until the decision that saw less."""
    state = run([Step(0, 20), Step(10, 20)]).state
    late = decide(Observed(0, 0, 5), POLICY, state, T0 + 400)
    assert late.reason == ScalingReason.STABILIZING
    assert decide(Observed(0, 0, 5), POLICY, late.state, T0 + 700).replicas == 0


def test_a_steady_state_stores_the_same_status_at_every_decision() -> None:
    """No write for an idle model: hundreds of them cost nothing."""
    idle = replace(POLICY, min_replicas=1)
    first = run([Step(0, 0)], idle, replicas=1).state
    later = run([Step(0, 0), Step(30, 0), Step(600, 0)], idle, replicas=1).state
    assert first.to_status() == later.to_status()


def test_unreadable_status_is_left_out() -> None:
    state = State.from_status(
        {"lastActiveTime": "yesterday", "recommendations": [{"time": 3, "replicas": 2}]}, T0
    )
    assert state == State()


def test_times_keep_milliseconds() -> None:
    state = State(last_active=T0 + 0.123, window=(Recommendation(T0 + 0.5, 1),))
    restored = State.from_status(state.to_status(), T0 + 9)
    assert restored.last_active == state.last_active
    assert restored.window == (Recommendation(T0 + 9, 1),)
