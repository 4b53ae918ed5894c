"""The kopf handlers: thin wiring between watch events and the reconciler.

- An ImageModel created, changed (a new ``metadata.generation`` or new labels), or found
  when the operator starts: the reconciler parses, renders, adopts, applies and sets status.
  An invalid spec is a ``PermanentError``: status says why, and the next edit tries again.
- Owned Deployments, Services, Pods, Jobs and claims are indexed (kopf fills every index
  before any handler runs), and their events ask the reconciler for a status refresh; a
  deleted Deployment or Service, or a finished weights download, asks for a reconcile.
- The scale subresource writes ``spec.replicas``, which is an ordinary spec change here.

Why ``on.event`` and a generation check rather than kopf's ``on.create/update/resume``:
kopf's change detection deep-copies the whole object on every event to compare it with a
diff-base it keeps in an annotation. ImageModels change status often (every pod that
starts), and at 200 models that copying was most of the operator's CPU; the generation,
which the API server bumps on every spec change, says the same for free, and no
bookkeeping annotations are written.

Importing this module registers the handlers with kopf's default registry; ``tessera
operator`` (``tessera.operator.cli``) runs them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, cast

import kopf

from tessera.operator import apply, render
from tessera.operator.reconcile import Key, Reconciler, key_of
from tessera.operator.scaler import Autoscaler
from tessera.operator.spec import GROUP, PLURAL, VERSION
from tessera.runtime.jobs.redis import RedisJobStore

OWNED: dict[str, Any] = {
    render.LABEL_MANAGED_BY: render.MANAGED_BY,
    render.LABEL_MODEL: kopf.PRESENT,
}
WORKERS: dict[str, Any] = {**OWNED, render.LABEL_COMPONENT: render.COMPONENT_WORKER}


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff-base: this operator has no change-detecting handlers to feed.

    kopf builds an object's "essence" (a deep copy) on every event of every watched kind,
    even when no create/update handler will read it; that copying was the largest CPU cost
    at scale. Returning an empty essence skips it.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def _selector(labels: Mapping[str, Any]) -> str:
    return ",".join(k if v is kopf.PRESENT else f"{k}={v}" for k, v in sorted(labels.items()))


def _reconciler(memo: kopf.Memo) -> Reconciler:
    reconciler = memo["reconciler"]
    assert isinstance(reconciler, Reconciler)
    return reconciler


def _autoscaler(memo: kopf.Memo) -> Autoscaler:
    autoscaler = memo["autoscaler"]
    assert isinstance(autoscaler, Autoscaler)
    return autoscaler


def _handling(memo: kopf.Memo) -> Reconciler:
    """The reconciler, from a handler: kopf runs handlers only once every index is full,
    so from now on a status computed from the indices is a true one."""
    reconciler = _reconciler(memo)
    reconciler.ready = True
    return reconciler


def _owner_key(namespace: str | None, labels: Mapping[str, str]) -> Key:
    return namespace or "default", labels[render.LABEL_MODEL]


def _trimmed(body: Mapping[str, Any]) -> dict[str, Any]:
    """An object without managedFields (most of its size, none of our business).

    A shallow copy is enough: every watch event brings freshly parsed dicts, and neither
    kopf nor the operator changes them afterwards.
    """
    obj = dict(body)
    obj["metadata"] = {k: v for k, v in obj.get("metadata", {}).items() if k != "managedFields"}
    return obj


# -- start-up and shutdown ----------------------------------------------------------------


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    # kopf's per-handler chatter stays out of Events: the reconciler posts one Event per
    # decision itself. Nothing of kopf's is stored on the objects (no changing handlers).
    settings.posting.level = logging.WARNING
    settings.persistence.diffbase_storage = NoDiffBase()
    # Watch only what the operator owns (server-side): not every pod of the cluster.
    workers, owned = _selector(WORKERS), _selector(OWNED)
    for plural in ("deployments", "services", "pods"):
        settings.watching.label_selectors[plural] = workers
    for plural in ("jobs", "persistentvolumeclaims"):
        settings.watching.label_selectors[plural] = owned
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    if "reconciler" not in memo:
        memo["reconciler"] = Reconciler(apply.Kube(), render.RenderConfig.from_env())
    reconciler = _reconciler(memo)
    reconciler.inventory.attach(kwargs)
    reconciler.start()
    if "autoscaler" not in memo:
        # The workers' queue: the same Redis the operator renders into their command.
        queues = RedisJobStore(reconciler.config.own_queue_url())
        memo["autoscaler"] = Autoscaler(reconciler, queues)
    _autoscaler(memo).start()


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    if "autoscaler" in memo:
        await _autoscaler(memo).stop()
    if "reconciler" in memo:
        await _reconciler(memo).stop()


# -- the models ---------------------------------------------------------------------------


@kopf.index(GROUP, VERSION, PLURAL)
async def tessera_models(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> dict[Key, Any]:
    return {(namespace or "default", name): _trimmed(body)}


@kopf.on.event(GROUP, VERSION, PLURAL)
async def model_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    reconciler = _handling(memo)
    reconciler.seen("ImageModel", body)
    if event.get("type") == "DELETED":
        reconciler.forget(key_of(body))
        if "autoscaler" in memo:
            _autoscaler(memo).forget(key_of(body))
    else:
        # Created, changed, or seen for the first time since start: reconcile it.
        reconciler.consider(body)


# -- the children -------------------------------------------------------------------------
#
# Index functions run for every event of a child (kopf fills them before any handler runs);
# the busy kinds (Deployments, Pods) also ask for a status refresh from there, which saves a
# second pass through kopf per event. Deletions never reach an index function, hence the
# ``on.event`` handlers filtered to DELETED.


def _deleted(event: kopf.RawEvent, **_: Any) -> bool:
    return bool(event.get("type") == "DELETED")


@kopf.index("apps", "v1", "deployments", labels=WORKERS)
async def tessera_deployments(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> dict[Key, Any]:
    key = _owner_key(namespace, labels)
    reconciler = _reconciler(memo)
    reconciler.seen("Deployment", body)
    reconciler.touch(key)
    return {key: _trimmed(body)}


@kopf.index("v1", "services", labels=WORKERS)
async def tessera_services(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> dict[Key, Any]:
    _reconciler(memo).seen("Service", body)
    return {_owner_key(namespace, labels): _trimmed(body)}


@kopf.index("v1", "pods", labels=WORKERS)
async def tessera_pods(
    name: str,
    namespace: str | None,
    labels: kopf.Labels,
    meta: kopf.Meta,
    status: kopf.Status,
    memo: kopf.Memo,
    **_: Any,
) -> dict[Key, Any]:
    key = _owner_key(namespace, labels)
    _reconciler(memo).touch(key)
    # Only what status needs: scheduling and container states.
    slim_status = {
        k: status.get(k)
        for k in ("phase", "conditions", "containerStatuses", "initContainerStatuses")
        if k in status
    }
    metadata = {"name": name, "namespace": namespace}
    if meta.get("deletionTimestamp"):
        metadata["deletionTimestamp"] = meta["deletionTimestamp"]
    return {key: {"metadata": metadata, "status": slim_status}}


@kopf.index("batch", "v1", "jobs", labels=OWNED)
async def tessera_jobs(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> dict[Key, Any]:
    return {_owner_key(namespace, labels): _trimmed(body)}


@kopf.index("v1", "persistentvolumeclaims", labels=OWNED)
async def tessera_claims(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> dict[Key, Any]:
    return {_owner_key(namespace, labels): _trimmed(body)}


@kopf.on.event("apps", "v1", "deployments", labels=WORKERS, when=_deleted)
async def deployment_deleted(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    # Someone deleted what the model needs: put it back. (When the model itself is deleted,
    # it has left the index first, and nothing comes back.)
    _handling(memo).request(_owner_key(namespace, labels))


@kopf.on.event("v1", "services", labels=WORKERS, when=_deleted)
async def service_deleted(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    _handling(memo).request(_owner_key(namespace, labels))


@kopf.on.event("batch", "v1", "jobs", labels=OWNED)
async def job_event(
    event: kopf.RawEvent,
    body: kopf.Body,
    namespace: str | None,
    labels: kopf.Labels,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    reconciler = _handling(memo)
    reconciler.seen("Job", body)
    # A finished download releases the Deployment's replicas: that takes a reconcile.
    finished = any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in body.get("status", {}).get("conditions") or ()
    )
    key = _owner_key(namespace, labels)
    if finished or event.get("type") == "DELETED":
        reconciler.request(key)
    else:
        reconciler.touch(key)


@kopf.on.event("v1", "persistentvolumeclaims", labels=OWNED)
async def claim_event(
    event: kopf.RawEvent,
    body: kopf.Body,
    namespace: str | None,
    labels: kopf.Labels,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    _child_event(
        memo, "PersistentVolumeClaim", event, body, namespace, labels, reconcile_on_delete=True
    )


def _child_event(
    memo: kopf.Memo,
    kind: str,
    event: kopf.RawEvent,
    body: kopf.Body,
    namespace: str | None,
    labels: kopf.Labels,
    *,
    reconcile_on_delete: bool,
) -> None:
    reconciler = _handling(memo)
    reconciler.seen(kind, body)
    key = _owner_key(namespace, labels)
    if reconcile_on_delete and event.get("type") == "DELETED":
        # Someone deleted what the model needs; put it back (a deleted model's children
        # go too, and then the model is no longer in the index, so nothing comes back).
        reconciler.request(key)
    else:
        reconciler.touch(key)
