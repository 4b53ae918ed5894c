"""The autoscaler's I/O: one loop reads every model's queue, decides, and scales.

- Inputs: the ImageModels, their worker Deployments and pods from the operator's kopf
  indices (``Inventory``, no API reads), and queue depths from the job store, for every
  model in one Redis round trip.
- When: at once for the models the store names (a job submitted or changing status, told
  over Redis pub/sub, so a gateway wakes the operator with no Kubernetes rights of its
  own), and for every model each ``SWEEP_SECONDS`` (a wake-up lost in a reconnect costs at
  most one sweep). Two hundred models are one loop and one round trip per pass.
- Per model, ``autoscale.decide`` chooses; then, only when something changed,
  ``status.autoscaling`` is written first (a restarted operator renders the decision and
  resumes from its state), the Deployment's scale subresource second, and an Event says
  why: ``Scaled 3 -> 5: 19 jobs in backlog, 4 per replica``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from tessera.operator import apply, metrics, status
from tessera.operator.autoscale import (
    Decision,
    Observed,
    Policy,
    ScalingReason,
    State,
    decide,
    iso_time,
)
from tessera.operator.reasons import Condition
from tessera.operator.reconcile import Inventory, Key, Reconciler, revision
from tessera.operator.spec import ImageModel, InvalidSpec, parse
from tessera.runtime.conditions import find_condition
from tessera.runtime.errors import StoreUnavailable
from tessera.runtime.jobs.base import QueueDepth

log = logging.getLogger(__name__)

SWEEP_SECONDS = 5.0
# A model whose backlog moves but whose replicas do not writes status at most this often.
STATUS_INTERVAL_SECONDS = 2.0
# What brought a decision about (status.autoscaling.lastDecision.trigger): a change in the
# model's queue, heard as it happened, or the periodic sweep.
QUEUE_EVENT = "QueueEvent"
# How soon a woken queue whose model the watches have not delivered yet is looked at again
# (for up to SWEEP_SECONDS; the sweep covers it after that).
LAG_RETRY_SECONDS = 0.2
SWEEP = "Sweep"
# status.autoscaling.coldStart: seconds from the scale-up decision to each of the worker's
# recorded phases, and the worker's own import and pipeline-building times.
MILESTONES = (
    ("startedSeconds", "started"),
    ("loadedSeconds", "loaded"),
    ("firstImageSeconds", "firstImage"),
)
COLD_START_FIELDS = (
    "scheduledSeconds",
    *(field for field, _ in MILESTONES),
    "importSeconds",
    "pipelineSeconds",
)


class Demand(Protocol):
    """What the autoscaler reads from the job store (``RedisJobStore`` provides it)."""

    async def queue_depths(self, models: Sequence[str]) -> dict[str, QueueDepth]: ...

    def changed_models(self) -> AsyncIterator[str]: ...

    async def starts(
        self, model: str, worker_ids: Sequence[str]
    ) -> dict[str, dict[str, float]]: ...


def policy_of(model: ImageModel) -> Policy:
    scaling = model.spec.scaling
    return Policy(
        min_replicas=scaling.min_replicas,
        max_replicas=scaling.max_replicas,
        target_per_replica=scaling.target_queue_per_replica,
        scale_down_delay_seconds=scaling.scale_down_delay_seconds,
        scale_up_step=scaling.scale_up_step,
        capacity_wait_seconds=scaling.capacity_wait_seconds,
        manual=scaling.mode == "Manual",
    )


@dataclass
class _Held:
    """One model's autoscaling as this process last left it (ahead of the watch)."""

    state: State
    written: dict[str, Any]
    written_at: float
    # The replicas last set through the scale subresource, and the resourceVersion after.
    asked: int | None = None
    asked_revision: int = 0
    # The last scale-up being timed: when it was decided, and the pods that existed then.
    timing: tuple[float, frozenset[str]] | None = None
    # Its milestones so far, kept until written (the measurement may end between writes).
    cold_start: dict[str, Any] | None = None


def _weights_ready(body: Mapping[str, Any]) -> bool:
    conditions = (body.get("status") or {}).get("conditions")
    found = find_condition(conditions, Condition.WEIGHTS_READY)
    return bool(found and found.get("status") == "True")


class Autoscaler:
    def __init__(
        self,
        reconciler: Reconciler,
        demand: Demand,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # The reconciler's client, indices and events; it renders what this decides.
        self.reconciler = reconciler
        self.kube: apply.Kube = reconciler.kube
        self.inventory: Inventory = reconciler.inventory
        self.demand = demand
        self.clock = clock
        self._held: dict[Key, _Held] = {}
        self._woken: set[str] = set()
        # Woken queues whose ImageModel or Deployment the watches had not delivered yet (a
        # submit right after `kubectl apply`), and when each was first heard of.
        self._lagging: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- the loop --------------------------------------------------------------------------

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._listen(), name="tessera autoscaler wake-ups"),
                asyncio.create_task(self._run(), name="tessera autoscaler"),
            ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _listen(self) -> None:
        async for model in self.demand.changed_models():
            self._woken.add(model)
            self._wake.set()

    async def _run(self) -> None:
        next_sweep = 0.0
        while True:
            due = next_sweep
            if self._lagging:
                due = min(due, time.monotonic() + LAG_RETRY_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, due - time.monotonic()))
            self._wake.clear()
            # Until kopf's indices hold the whole cluster, a missing Deployment may exist.
            if not self.reconciler.ready:
                continue
            woken = frozenset(self._woken | self._lagging.keys())
            self._woken.clear()
            only: set[str] | None = set(woken)
            if time.monotonic() >= next_sweep:
                only, next_sweep = None, time.monotonic() + SWEEP_SECONDS
            try:
                await self.step(only, woken)
            except StoreUnavailable as error:
                log.warning("autoscaler: cannot read the queues (%s); trying again", error)
            except Exception:
                log.exception("autoscaler pass failed; trying again at the next sweep")

    async def step(
        self, only: set[str] | None = None, woken: frozenset[str] = frozenset()
    ) -> list[Decision]:
        """One pass: decide for every model (or those named in ``only``) and act; the models
        in ``woken`` are here because their queue changed, the others on the sweep."""
        models: dict[str, tuple[Key, Mapping[str, Any], ImageModel]] = {}
        for key, body in self.inventory.models():
            try:
                model = parse(body)
            except InvalidSpec:
                continue  # the reconciler reports it
            # By queue name: two resources may claim one public name, never one queue.
            if only is None or model.queue_name in only:
                models[model.queue_name] = (key, body, model)
        decided: dict[str, Decision | None] = {}
        if models:
            depths = await self.demand.queue_depths(list(models))
            decisions = await asyncio.gather(
                *(
                    self._scale(*found, depths[name], QUEUE_EVENT if name in woken else SWEEP)
                    for name, found in models.items()
                )
            )
            decided = dict(zip(models, decisions, strict=True))
        # A woken model with no decision yet (its resource, Deployment or weights status not
        # delivered by the watches: a submit right after `kubectl apply`) is tried again soon.
        now = time.monotonic()
        self._lagging = {
            name: self._lagging.get(name, now)
            for name in woken
            if decided.get(name) is None and now - self._lagging.get(name, now) < SWEEP_SECONDS
        }
        return [d for d in decided.values() if d is not None]

    # -- one model -------------------------------------------------------------------------

    async def _scale(
        self,
        key: Key,
        body: Mapping[str, Any],
        model: ImageModel,
        depth: QueueDepth,
        trigger: str,
    ) -> Decision | None:
        deployment = self.inventory.deployment(key)
        if deployment is None or not _weights_ready(body):
            return None  # the reconciler holds it at zero until the weights are there
        now = self.clock()
        previous = (body.get("status") or {}).get("autoscaling") or {}
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = _Held(State.from_status(previous, now), {}, 0.0)
        current = int(deployment.get("spec", {}).get("replicas") or 0)
        if held.asked is not None and held.asked_revision > revision(deployment):
            current = held.asked  # our scale, not yet in the watch
        pods = self.inventory.pods(key)
        observed = Observed(
            depth.queued, depth.in_progress, current, status.unschedulable_pods(pods)
        )
        decision = decide(observed, policy_of(model), held.state, now)
        held.state = decision.state
        metrics.observe(
            key,
            model.model_name,
            desired=decision.replicas,
            ready=int(deployment.get("status", {}).get("readyReplicas") or 0),
            unschedulable=observed.unschedulable,
        )
        last = previous.get("lastDecision") or held.written.get("lastDecision") or {}
        turned = decision.reason != last.get("reason")
        scales = decision.replicas != current
        autoscaling = {
            "queued": depth.queued,
            "inProgress": depth.in_progress,
            "desiredReplicas": decision.replicas,
            "unschedulableReplicas": observed.unschedulable,
            **decision.state.to_status(),
        }
        if scales or turned:
            autoscaling["lastDecision"] = {
                "time": iso_time(now),
                "reason": decision.reason,
                "message": decision.message,
                "trigger": trigger,
            }
        if scales:
            autoscaling["lastScaleTime"] = iso_time(now)
        if scales and decision.replicas > current:
            held.timing = (now, frozenset(p["metadata"]["name"] for p in pods))
        measured = False
        if held.timing is not None:
            cold = await self._cold_start(model, pods, *held.timing)
            if cold is not None:
                held.cold_start = cold
                if cold["firstImageSeconds"] is not None:
                    held.timing = None  # measured to the end
                    measured = True
        if held.cold_start is not None:
            autoscaling["coldStart"] = held.cold_start
        written = {**held.written, **autoscaling}
        due = now - held.written_at >= STATUS_INTERVAL_SECONDS
        if written != held.written and (scales or turned or due or measured):
            await asyncio.to_thread(
                self.kube.patch_status,
                body,
                {"queueDepth": depth.total, "autoscaling": autoscaling},
            )
            held.written, held.written_at = written, now
        if scales:
            scale = await asyncio.to_thread(
                self.kube.scale, model.namespace, model.name, decision.replicas
            )
            held.asked, held.asked_revision = decision.replicas, revision(scale)
            log.info("%s/%s: %s", *key, decision.message)
        if scales or (turned and decision.reason in ScalingReason.SHORTAGE):
            warn = decision.reason in ScalingReason.SHORTAGE
            kind: Literal["Normal", "Warning"] = "Warning" if warn else "Normal"
            await self.reconciler.event(body, kind, decision.reason, decision.message)
        return decision

    async def _cold_start(
        self,
        model: ImageModel,
        pods: Sequence[Mapping[str, Any]],
        decided: float,
        before: frozenset[str],
    ) -> dict[str, Any] | None:
        """Seconds from a scale-up decision to the first new pod's milestones: scheduled
        (the pod's condition), worker process started, pipeline loaded and first image
        (the worker's record)."""
        new = [p for p in pods if p["metadata"]["name"] not in before]
        if not new:
            return None
        records = await self.demand.starts(model.queue_name, [p["metadata"]["name"] for p in new])

        def order(pod: Mapping[str, Any]) -> tuple[float, float]:
            record = records.get(pod["metadata"]["name"], {})
            return record.get("firstImage", math.inf), record.get("loaded", math.inf)

        pod = min(new, key=order)
        record = records.get(pod["metadata"]["name"], {})
        # Every field named, those not reached yet as null: the merge patch then clears what
        # an earlier cold start left in the status.
        cold: dict[str, Any] = dict.fromkeys(COLD_START_FIELDS) | {"pod": pod["metadata"]["name"]}
        scheduled = find_condition(pod.get("status", {}).get("conditions"), "PodScheduled")
        if scheduled and scheduled.get("status") == "True" and scheduled.get("lastTransitionTime"):
            at = datetime.datetime.fromisoformat(
                str(scheduled["lastTransitionTime"]).replace("Z", "+00:00")
            ).timestamp()
            # The condition has whole seconds; the decision, milliseconds.
            cold["scheduledSeconds"] = round(max(0.0, at - decided), 1)
        for field, phase in MILESTONES:
            if phase in record:
                cold[field] = round(record[phase] - decided, 2)
        for field in ("importSeconds", "pipelineSeconds"):
            if field in record:
                cold[field] = round(record[field], 2)
        return cold

    def forget(self, key: Key) -> None:
        self._held.pop(key, None)
        metrics.forget(key)
