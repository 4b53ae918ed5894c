"""An ImageModel's status as a pure function of what was observed.

The reconciler gathers the inputs (the worker Deployment, its pods, the weights Job and
claim) into an ``Observed``; a chain of checks, each returning a ``Check`` (status, reason,
message), turns them into conditions; ``compute`` assembles the status. Nothing reads a clock
except through the ``now`` argument, and nothing here talks to the API server, so the
caller writes status only when ``owned(new) != owned(old)`` and emits an event only for a
``transitions`` entry.

Conditions follow cert-manager's shape (``tessera.runtime.conditions``, shared with the
gateway, which writes the ``Served`` condition).
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tessera.operator import render
from tessera.operator.reasons import Condition, EventReason, Phase, Reason
from tessera.operator.spec import ImageModel
from tessera.runtime import conditions as conditions_
from tessera.runtime.conditions import find_condition

# The fields of status that the operator writes; others (queueDepth) belong to the autoscaler.
OWNED_FIELDS = (
    "modelName",
    "phase",
    "observedGeneration",
    "replicas",
    "readyReplicas",
    "updatedReplicas",
    "selector",
    "endpoint",
    "weights",
    "conditions",
)

# Container states that will not fix themselves without someone changing something.
FAILING_WAIT_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


# The operator's conditions, in its order of condition types.
set_condition = functools.partial(conditions_.set_condition, order=Condition.ALL)


def is_current(condition: Mapping[str, Any] | None, generation: int, status: str = "True") -> bool:
    """Whether a condition has ``status`` and describes ``generation`` (not an older spec)."""
    return (
        condition is not None
        and condition.get("status") == status
        and int(condition.get("observedGeneration") or 0) >= generation
    )


@dataclass(frozen=True)
class Observed:
    """The live objects a status is computed from (any may be missing)."""

    deployment: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = ()
    job: Mapping[str, Any] | None = None
    claim: Mapping[str, Any] | None = None
    # A refusal from the API server while applying (HTTP 422), e.g. an immutable field.
    apply_error: str | None = None

    @property
    def live_pods(self) -> list[Mapping[str, Any]]:
        return [p for p in self.pods if not p.get("metadata", {}).get("deletionTimestamp")]


@dataclass(frozen=True)
class Check:
    status: bool
    reason: str
    message: str


def _job_condition(job: Mapping[str, Any], type: str) -> Mapping[str, Any] | None:
    condition = find_condition(job.get("status", {}).get("conditions"), type)
    return condition if condition and condition.get("status") == "True" else None


def check_weights(model: ImageModel, observed: Observed) -> Check:
    weights = model.spec.weights
    if weights.hugging_face is None:
        where = {
            "pvc": f"claim {render.weights_claim_name(model)}",
            "image": f"image {weights.image.reference}" if weights.image else "",
            "demo": "a demo pipeline built when each pod starts",
        }[weights.source]
        return Check(True, Reason.WEIGHTS_MOUNTED, f"weights come from {where}")
    hub = weights.hugging_face
    what = f"{hub.repo}@{hub.revision}"
    claim = render.weights_claim_name(model)
    job = observed.job
    if job is None:
        return Check(
            False, Reason.DOWNLOADING, f"starting the download of {what} into claim {claim}"
        )
    if _job_condition(job, "Complete"):
        return Check(True, Reason.WEIGHTS_CACHED, f"{what} is cached in claim {claim}")
    failed = _job_condition(job, "Failed")
    if failed:
        name = job["metadata"]["name"]
        detail = failed.get("message") or failed.get("reason") or "the Job failed"
        return Check(
            False,
            Reason.WEIGHTS_DOWNLOAD_FAILED,
            f"downloading {what} failed: {detail} (kubectl logs job/{name}; delete the Job "
            "to retry)",
        )
    phase = (observed.claim or {}).get("status", {}).get("phase")
    if observed.claim is not None and phase != "Bound":
        return Check(
            False,
            Reason.DOWNLOADING,
            f"waiting for claim {claim} to be bound before downloading {what}",
        )
    attempts = int(job.get("status", {}).get("failed") or 0)
    retry = f" (attempt {attempts + 1})" if attempts else ""
    return Check(False, Reason.DOWNLOADING, f"downloading {what} into claim {claim}{retry}")


def _unschedulable_message(pod: Mapping[str, Any]) -> str | None:
    condition = find_condition(pod.get("status", {}).get("conditions"), "PodScheduled")
    if (
        condition
        and condition.get("status") == "False"
        and condition.get("reason") == "Unschedulable"
    ):
        return str(condition.get("message") or "the scheduler found no node for the pod")
    return None


def check_unschedulable(model: ImageModel, observed: Observed) -> Check:
    """True while a worker pod cannot be placed, quoting the scheduler's reason."""
    stuck = [(p, m) for p in observed.live_pods if (m := _unschedulable_message(p))]
    if not stuck:
        return Check(False, Reason.SCHEDULED, "every worker pod has a node")
    _, message = stuck[0]
    total = len(observed.live_pods)
    return Check(
        True,
        Reason.UNSCHEDULABLE,
        f"{len(stuck)} of {total} worker pods cannot be scheduled: {message}",
    )


def _failing(observed: Observed) -> str | None:
    for pod in observed.live_pods:
        status = pod.get("status", {})
        for key in ("initContainerStatuses", "containerStatuses"):
            for container in status.get(key) or ():
                waiting = (container.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in FAILING_WAIT_REASONS:
                    detail = f": {waiting['message']}" if waiting.get("message") else ""
                    return (
                        f"pod {pod['metadata']['name']}: container {container.get('name')} is "
                        f"waiting in {waiting['reason']}{detail}"
                    )
    return None


def _deployment_condition(observed: Observed, type: str) -> Mapping[str, Any] | None:
    deployment = observed.deployment or {}
    return find_condition(deployment.get("status", {}).get("conditions"), type)


def _deadline_exceeded(observed: Observed) -> Mapping[str, Any] | None:
    condition = _deployment_condition(observed, "Progressing")
    if condition and condition.get("reason") == "ProgressDeadlineExceeded":
        return condition
    return None


def check_progressing(model: ImageModel, observed: Observed, weights: Check) -> Check:
    deployment = observed.deployment
    if deployment is None:
        return Check(True, Reason.CREATING, "creating the worker Deployment")
    if not weights.status:
        return Check(True, Reason.WEIGHTS_NOT_READY, "replicas start once the weights are ready")
    exceeded = _deadline_exceeded(observed)
    if exceeded:
        return Check(False, Reason.PROGRESS_DEADLINE_EXCEEDED, str(exceeded.get("message", "")))
    status = deployment.get("status", {})
    if int(deployment.get("metadata", {}).get("generation") or 0) > int(
        status.get("observedGeneration") or 0
    ):
        return Check(
            True, Reason.ROLLING_OUT, "the Deployment controller has yet to act on the new spec"
        )
    want = int(deployment.get("spec", {}).get("replicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if updated < want:
        return Check(True, Reason.ROLLING_OUT, f"{updated} of {want} replicas run the current spec")
    if total > updated:
        return Check(True, Reason.ROLLING_OUT, f"{total - updated} old replicas are stopping")
    if available < want:
        return Check(True, Reason.SCALING, f"{available} of {want} replicas are available")
    return Check(False, Reason.ROLLOUT_COMPLETE, f"{want} replicas run the current spec")


def check_degraded(
    model: ImageModel, observed: Observed, weights: Check, unschedulable: Check
) -> Check:
    if observed.apply_error:
        return Check(True, Reason.APPLY_FAILED, observed.apply_error)
    if weights.reason == Reason.WEIGHTS_DOWNLOAD_FAILED:
        return Check(True, weights.reason, weights.message)
    exceeded = _deadline_exceeded(observed)
    if exceeded:
        return Check(True, Reason.PROGRESS_DEADLINE_EXCEEDED, str(exceeded.get("message", "")))
    failing = _failing(observed)
    if failing:
        return Check(True, Reason.POD_FAILING, failing)
    if unschedulable.status:
        return Check(True, Reason.UNSCHEDULABLE, unschedulable.message)
    return Check(False, Reason.AS_EXPECTED, "no faults seen")


def check_ready(
    model: ImageModel, observed: Observed, weights: Check, unschedulable: Check
) -> Check:
    desired = model.desired_replicas
    if not weights.status:
        return Check(False, Reason.WEIGHTS_NOT_READY, weights.message)
    if desired == 0:
        return Check(
            True, Reason.SCALED_TO_ZERO, "scaled to zero; a replica starts when work arrives"
        )
    ready = int((observed.deployment or {}).get("status", {}).get("readyReplicas") or 0)
    if ready > 0:
        return Check(True, Reason.AVAILABLE, f"{ready} of {desired} replicas ready")
    if unschedulable.status:
        return Check(False, Reason.UNSCHEDULABLE, unschedulable.message)
    if observed.live_pods:
        return Check(
            False,
            Reason.LOADING,
            f"waiting for the workers to load the pipeline (0 of {desired} replicas ready)",
        )
    return Check(False, Reason.PENDING, "waiting for the Deployment to create worker pods")


def phase_of(model: ImageModel, observed: Observed, checks: Mapping[str, Check]) -> str:
    ready, weights = checks[Condition.READY], checks[Condition.WEIGHTS_READY]
    degraded, unschedulable = checks[Condition.DEGRADED], checks[Condition.UNSCHEDULABLE]
    if weights.reason == Reason.WEIGHTS_DOWNLOAD_FAILED:
        return str(Phase.FAILED)
    if ready.status:
        if ready.reason == Reason.SCALED_TO_ZERO:
            return str(Phase.SCALED_TO_ZERO)
        return str(Phase.DEGRADED if degraded.status else Phase.READY)
    if not weights.status:
        return str(Phase.DOWNLOADING_WEIGHTS)
    if unschedulable.status:
        return str(Phase.UNSCHEDULABLE)
    if degraded.status:
        return str(Phase.DEGRADED)
    return str(Phase.LOADING if observed.live_pods else Phase.PENDING)


def weights_status(model: ImageModel) -> dict[str, str]:
    found = {"source": model.spec.weights.source, "path": render.weights_path(model)}
    claim, job = render.weights_claim_name(model), render.weights_job_name(model)
    if claim:
        found["claimName"] = claim
    if job:
        found["job"] = job
    return found


def compute(
    model: ImageModel,
    observed: Observed,
    previous: Mapping[str, Any] | None,
    generation: int,
    now: datetime.datetime,
) -> dict[str, Any]:
    """The operator's fields of status; ``generation`` is the spec the children were
    rendered from (status.observedGeneration)."""
    weights = check_weights(model, observed)
    unschedulable = check_unschedulable(model, observed)
    checks = {
        Condition.WEIGHTS_READY: weights,
        Condition.UNSCHEDULABLE: unschedulable,
        Condition.PROGRESSING: check_progressing(model, observed, weights),
        Condition.DEGRADED: check_degraded(model, observed, weights, unschedulable),
        Condition.READY: check_ready(model, observed, weights, unschedulable),
    }
    conditions: list[dict[str, Any]] = list((previous or {}).get("conditions") or ())
    for type in Condition.ALL:
        check = checks[type]
        conditions = set_condition(
            conditions, type, check.status, check.reason, check.message, generation, now
        )
    deployment_status = (observed.deployment or {}).get("status", {})
    return {
        "modelName": model.model_name,
        "phase": phase_of(model, observed, checks),
        "observedGeneration": generation,
        "replicas": int(deployment_status.get("replicas") or 0),
        "readyReplicas": int(deployment_status.get("readyReplicas") or 0),
        "updatedReplicas": int(deployment_status.get("updatedReplicas") or 0),
        "selector": render.selector_string(model),
        "endpoint": render.endpoint(model),
        "weights": weights_status(model),
        "conditions": conditions,
    }


def invalid(
    previous: Mapping[str, Any] | None, message: str, generation: int, now: datetime.datetime
) -> dict[str, Any]:
    """Status for a spec the operator cannot serve: Failed, with the reason in Ready."""
    conditions = list((previous or {}).get("conditions") or ())
    conditions = set_condition(
        conditions, Condition.READY, False, Reason.INVALID_SPEC, message, generation, now
    )
    conditions = set_condition(
        conditions, Condition.DEGRADED, True, Reason.INVALID_SPEC, message, generation, now
    )
    return {
        **owned(previous),
        "phase": Phase.FAILED,
        "observedGeneration": generation,
        "conditions": conditions,
    }


def owned(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """The operator's fields of a status, for comparing before writing."""
    return {k: status[k] for k in OWNED_FIELDS if status and k in status}


@dataclass(frozen=True)
class Notice:
    """An event to emit about the model."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    extra: Mapping[str, Any] = field(default_factory=dict)


def transitions(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[Notice]:
    """Events for what changed between two statuses; nothing when nothing flipped."""
    notices: list[Notice] = []
    before = (previous or {}).get("conditions")
    after = new.get("conditions")

    def pair(type: str) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        return find_condition(before, type) or {}, find_condition(after, type) or {}

    old, cur = pair(Condition.WEIGHTS_READY)
    if (
        cur.get("status") == "True"
        and old.get("status") != "True"
        and cur.get("reason") == Reason.WEIGHTS_CACHED
    ):
        notices.append(Notice("Normal", Reason.WEIGHTS_CACHED, str(cur.get("message"))))
    if cur.get("reason") == Reason.WEIGHTS_DOWNLOAD_FAILED and old.get("reason") != cur.get(
        "reason"
    ):
        notices.append(Notice("Warning", Reason.WEIGHTS_DOWNLOAD_FAILED, str(cur.get("message"))))

    old, cur = pair(Condition.UNSCHEDULABLE)
    if cur.get("status") == "True" and old.get("status") != "True":
        notices.append(Notice("Warning", Reason.UNSCHEDULABLE, str(cur.get("message"))))

    old, cur = pair(Condition.DEGRADED)
    if cur.get("status") == "True" and (
        old.get("status") != "True" or old.get("reason") != cur.get("reason")
    ):
        # Unschedulable and a failed download have events of their own above.
        if cur.get("reason") not in (Reason.UNSCHEDULABLE, Reason.WEIGHTS_DOWNLOAD_FAILED):
            notices.append(Notice("Warning", str(cur.get("reason")), str(cur.get("message"))))
    elif cur.get("status") == "False" and old.get("status") == "True":
        notices.append(
            Notice("Normal", EventReason.RECOVERED, f"no longer degraded ({old.get('reason')})")
        )

    old, cur = pair(Condition.READY)
    if cur.get("status") == "True" and old.get("status") != "True":
        notices.append(
            Notice(
                "Normal",
                EventReason.READY,
                f"model {new.get('modelName')} is ready: {cur.get('message')}",
            )
        )
    elif cur.get("status") == "False" and old.get("status") == "True":
        notices.append(
            Notice("Warning", EventReason.NOT_READY, f"{cur.get('reason')}: {cur.get('message')}")
        )
    return notices
