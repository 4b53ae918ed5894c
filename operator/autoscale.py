"""How many workers a model should run, as one pure function of what was observed.

``decide(observed, policy, state, now)`` returns a ``Decision``: the replicas to ask for, a
CamelCase reason and a sentence, and the ``State`` to keep for the next call. It reads no
clock and talks to nothing, so the operator's loop (``tessera.operator.scaler``) and the
simulation (``bench/autoscale.py``) run the same code. The rules:

- Backlog = queued + in progress: a job a worker is running still needs its replica
  (KEDA's list-length scaler forgets it, and scales to zero mid-job: kedacore/keda#6719).
  Wanted = ceil(backlog / targetQueuePerReplica), within minReplicas..maxReplicas.
- Up at once, on the first observation that wants more, but by at most ``scale_up_step``
  replicas per ``SCALE_UP_PERIOD_SECONDS`` (counted from the replicas at the period's start,
  so a burst of wake-ups cannot add a step each).
- Down only to the highest replica count wanted during the last ``scaleDownDelaySeconds``
  (HPA's stabilisation window), so a lull shorter than the window removes nothing; with
  minReplicas 0 that means zero after the model has been idle for the whole window. Never
  below the replicas still running a job.
- GPU shortage: while some replicas are Pending because no node fits, ask for no more. Keep
  the Pending ones for ``capacity_wait_seconds`` (a cluster autoscaler may be adding nodes:
  kserve#1247); after that ask only for what fits, and try again for more no sooner than
  another ``capacity_wait_seconds`` later, so an exhausted pool is probed, not hammered.

``State`` is what must survive an operator restart; it round-trips through the ImageModel's
``status.autoscaling`` (``to_status`` / ``State.from_status``).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

# HPA's default scale-up policy period: a step is counted within it.
SCALE_UP_PERIOD_SECONDS: Final = 15.0


class ScalingReason:
    """Reasons of a decision (status.autoscaling.lastDecision.reason and Event reasons)."""

    SCALED_UP: Final = "ScaledUp"
    SCALED_DOWN: Final = "ScaledDown"
    SCALED_TO_ZERO: Final = "ScaledToZero"
    STEADY: Final = "Steady"
    STABILIZING: Final = "Stabilizing"
    BUSY: Final = "ReplicasBusy"
    STEP_LIMITED: Final = "ScaleUpLimited"
    WAITING_FOR_CAPACITY: Final = "WaitingForCapacity"
    CAPACITY_EXHAUSTED: Final = "CapacityExhausted"
    MANUAL: Final = "Manual"

    # Holds that a person should hear about (a Warning event when one begins).
    SHORTAGE: Final = frozenset({WAITING_FOR_CAPACITY, CAPACITY_EXHAUSTED})


@dataclass(frozen=True)
class Observed:
    """One model's demand and supply, as the loop read them."""

    queued: int
    in_progress: int
    # Replicas asked of the Deployment now (its spec.replicas).
    replicas: int
    # Of those, pods Pending because the scheduler found no node for them.
    unschedulable: int = 0

    @property
    def backlog(self) -> int:
        return self.queued + self.in_progress

    @property
    def busy(self) -> int:
        """Replicas that may be running a job: never more than one job each is assumed, so
        this errs towards keeping replicas (a batching worker holds several jobs)."""
        return min(self.in_progress, self.replicas)


@dataclass(frozen=True)
class Policy:
    min_replicas: int = 0
    max_replicas: int = 1
    target_per_replica: int = 4
    scale_down_delay_seconds: float = 600.0
    scale_up_step: int = 10
    capacity_wait_seconds: float = 600.0
    manual: bool = False


@dataclass(frozen=True)
class Recommendation:
    at: float
    replicas: int


@dataclass(frozen=True)
class State:
    """What a decision leaves for the next one; times are seconds on the caller's clock."""

    # The last time the backlog was not empty.
    last_active: float | None = None
    # The current scale-up period: when it began and the replicas it began with.
    scale_up_at: float | None = None
    scale_up_base: int = 0
    # Replicas wanted within the stabilisation window, a decreasing run of maxima (the
    # first is the window's maximum), so it holds at most one entry per replica count.
    window: tuple[Recommendation, ...] = ()
    # Since when some replicas have been Pending for want of a node.
    unschedulable_since: float | None = None
    # After giving up on Pending replicas: the most that fit, and when that was found.
    capacity_ceiling: int | None = None
    capacity_found_at: float | None = None

    def to_status(self) -> dict[str, Any]:
        """The fields of status.autoscaling that hold this state; None clears a field (the
        status is written as a JSON merge patch).

        The newest recommendation is stored without its time: it held until the next
        decision sees otherwise, so a restarted operator takes it as wanted when it
        restarts. Stored thus, a steady model's state does not change between decisions,
        and costs no writes.
        """
        *earlier, newest = self.window or (Recommendation(0, 0),)
        return {
            "lastActiveTime": _time(self.last_active),
            "scaleUpPeriodStart": _time(self.scale_up_at),
            "scaleUpBase": self.scale_up_base if self.scale_up_at is not None else None,
            "wantedReplicas": newest.replicas if self.window else None,
            "recommendations": [{"time": iso_time(r.at), "replicas": r.replicas} for r in earlier],
            "unschedulableSince": _time(self.unschedulable_since),
            "capacityCeiling": self.capacity_ceiling,
            "capacityFoundTime": _time(self.capacity_found_at),
        }

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None, now: float) -> State:
        """The state an earlier decision stored, as of ``now``; anything unreadable is
        left out."""
        status = status or {}
        window = [
            Recommendation(at, int(r["replicas"]))
            for r in status.get("recommendations") or ()
            if isinstance(r, Mapping) and (at := _seconds(r.get("time"))) is not None
        ]
        wanted = status.get("wantedReplicas")
        if isinstance(wanted, int):
            window.append(Recommendation(now, wanted))
        ceiling = status.get("capacityCeiling")
        return cls(
            last_active=_seconds(status.get("lastActiveTime")),
            scale_up_at=_seconds(status.get("scaleUpPeriodStart")),
            scale_up_base=int(status.get("scaleUpBase") or 0),
            window=tuple(window),
            unschedulable_since=_seconds(status.get("unschedulableSince")),
            capacity_ceiling=int(ceiling) if ceiling is not None else None,
            capacity_found_at=_seconds(status.get("capacityFoundTime")),
        )


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    message: str
    # ceil(backlog / target) within the bounds, before the rate and capacity rules.
    wanted: int
    state: State = field(default_factory=State)


def iso_time(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _time(seconds: float | None) -> str | None:
    return None if seconds is None else iso_time(seconds)


def _clock(seconds: float) -> str:
    """A time of day for messages: they stay the same from one decision to the next."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%H:%M:%SZ")


def _seconds(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _jobs(n: int) -> str:
    return f"{n} job" if n == 1 else f"{n} jobs"


def _replicas(n: int) -> str:
    return f"{n} replica" if n == 1 else f"{n} replicas"


def wanted_replicas(backlog: int, policy: Policy) -> int:
    """ceil(backlog / targetQueuePerReplica), within minReplicas..maxReplicas."""
    raw = math.ceil(backlog / policy.target_per_replica)
    return max(policy.min_replicas, min(policy.max_replicas, raw))


def _windowed(
    window: tuple[Recommendation, ...], wanted: int, now: float, span: float
) -> tuple[Recommendation, ...]:
    """The window with ``wanted`` added and entries older than ``span`` dropped: a
    sliding-window maximum, so the first entry is the most wanted within the window.

    Demand is seen only when a decision runs: a recommendation that was higher than this
    one held until now, so it is stamped now (a scale-down never starts early)."""
    if window and window[-1].replicas > wanted:
        window = (*window[:-1], Recommendation(now, window[-1].replicas))
    kept = [r for r in window if r.at > now - span and r.replicas > wanted]
    return (*kept, Recommendation(now, wanted))


def decide(observed: Observed, policy: Policy, state: State, now: float) -> Decision:
    """The replicas to ask for now, why, and the state to keep."""
    current = observed.replicas
    backlog = observed.backlog
    demand = f"{_jobs(backlog)} in backlog, {policy.target_per_replica} per replica"
    wanted = wanted_replicas(backlog, policy)
    if policy.manual:
        return Decision(
            current,
            ScalingReason.MANUAL,
            f"scaling.mode is Manual: {_replicas(current)} as set ({demand})",
            wanted,
            state,
        )
    state = replace(
        state,
        last_active=now if backlog else state.last_active,
        window=_windowed(state.window, wanted, now, policy.scale_down_delay_seconds),
        unschedulable_since=(
            (state.unschedulable_since or now) if observed.unschedulable else None
        ),
    )

    def hold(reason: str, message: str) -> Decision:
        return Decision(current, reason, message, wanted, state)

    def scale(to: int, reason: str, message: str, new_state: State = state) -> Decision:
        return Decision(to, reason, f"Scaled {current} -> {to}: {message}", wanted, new_state)

    # -- down: the most wanted within the window is below what runs -------------------------
    stable = state.window[0].replicas
    if stable < current:
        to = max(stable, observed.busy)
        if to >= current:
            return hold(
                ScalingReason.BUSY,
                f"{stable} wanted, but {_replicas(observed.busy)} still run jobs ({demand})",
            )
        # The ReplicaSet controller removes Pending pods first.
        if to == 0:
            return scale(
                0,
                ScalingReason.SCALED_TO_ZERO,
                f"no jobs in the last {policy.scale_down_delay_seconds:.0f} s; releasing every GPU",
            )
        return scale(
            to,
            ScalingReason.SCALED_DOWN,
            f"{demand}; {to} is the most wanted in the last "
            f"{policy.scale_down_delay_seconds:.0f} s",
        )

    # -- GPU shortage ----------------------------------------------------------------------
    if observed.unschedulable:
        pending_since = state.unschedulable_since or now
        waited = now - pending_since
        pending = f"{observed.unschedulable} of {_replicas(current)} Pending with no node"
        if waited < policy.capacity_wait_seconds:
            until = pending_since + policy.capacity_wait_seconds
            return hold(
                ScalingReason.WAITING_FOR_CAPACITY,
                f"{pending} since {_clock(pending_since)}; asking for no more, and keeping them "
                f"until {_clock(until)} in case nodes are being added ({demand})",
            )
        fits = max(current - observed.unschedulable, observed.busy, policy.min_replicas)
        if fits < current:
            return scale(
                fits,
                ScalingReason.CAPACITY_EXHAUSTED,
                f"{pending} for {waited:.0f} s; asking only for what fits and trying for "
                f"more again in {policy.capacity_wait_seconds:.0f} s ({demand})",
                replace(
                    state, capacity_ceiling=fits, capacity_found_at=now, unschedulable_since=None
                ),
            )
        return hold(
            ScalingReason.WAITING_FOR_CAPACITY,
            f"{pending} since {_clock(pending_since)}, all of them needed (minReplicas or "
            "running jobs)",
        )

    # -- up --------------------------------------------------------------------------------
    if wanted > current:
        ceiling = state.capacity_ceiling
        if ceiling is not None and state.capacity_found_at is not None:
            found = state.capacity_found_at
            if now - found < policy.capacity_wait_seconds and current >= ceiling:
                return hold(
                    ScalingReason.CAPACITY_EXHAUSTED,
                    f"{_replicas(ceiling)} is what fitted at {_clock(found)}; trying for "
                    f"{wanted} again at {_clock(found + policy.capacity_wait_seconds)} "
                    f"({demand})",
                )
        in_period = (
            state.scale_up_at is not None and now - state.scale_up_at < SCALE_UP_PERIOD_SECONDS
        )
        base = state.scale_up_base if in_period else current
        to = min(wanted, base + policy.scale_up_step)
        if to <= current:
            return hold(
                ScalingReason.STEP_LIMITED,
                f"{wanted} wanted but at most {policy.scale_up_step} are added per "
                f"{SCALE_UP_PERIOD_SECONDS:.0f} s ({demand})",
            )
        period = state if in_period else replace(state, scale_up_at=now, scale_up_base=current)
        return scale(to, ScalingReason.SCALED_UP, demand, replace(period, capacity_ceiling=None))

    # -- steady ----------------------------------------------------------------------------
    if wanted < current:
        return hold(
            ScalingReason.STABILIZING,
            f"{wanted} wanted now, {stable} within the last "
            f"{policy.scale_down_delay_seconds:.0f} s; keeping {current} ({demand})",
        )
    return hold(ScalingReason.STEADY, f"{_replicas(current)} for {demand}")
