"""The gateway's models from the ImageModel resources of its cluster, kept current by a watch.

A model applied is served as soon as its event arrives; a model deleted leaves the
catalogue, and its queued jobs fail saying so. When two resources claim one public name,
the older keeps it (``assign_names``, the same rule on every replica) and the other gets a
``Served=False`` condition that says why. The watch runs the kubernetes client in a thread
(it blocks); everything it learns is applied on the event loop.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
from collections.abc import Mapping
from typing import Any

from tessera.runtime.conditions import find_condition, set_condition
from tessera.runtime.errors import StoreUnavailable
from tessera.runtime.imagemodel import (
    GROUP,
    PLURAL,
    VERSION,
    ImageModel,
    InvalidImageModel,
    assign_names,
    parse,
)
from tessera.runtime.jobs.base import JobStore
from tessera.runtime.models import ModelCatalog

log = logging.getLogger(__name__)

# The condition the gateway writes on each ImageModel, and its reasons.
SERVED = "Served"
REASON_SERVED = "Served"
REASON_NAME_TAKEN = "NameTaken"

# A watch ends after this long and is reopened with a fresh list, so a missed event is
# corrected within it whatever happened to the connection.
RELIST_SECONDS = 300


def load_kube_configuration() -> None:
    """In-cluster credentials (the pod's ServiceAccount), else the kubeconfig."""
    from kubernetes import config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]


def removed_reason(name: str) -> str:
    return f"model {name!r} was removed; the job did not run and is not billed"


class ClusterModels:
    """Keeps ``catalog`` equal to the served ImageModels of the cluster."""

    def __init__(self, catalog: ModelCatalog, store: JobStore):
        from kubernetes import client

        self.catalog = catalog
        self.store = store
        self._api = client.CustomObjectsApi()
        self._resources: dict[str, ImageModel] = {}  # by uid
        self._bodies: dict[str, Mapping[str, Any]] = {}
        self._events: asyncio.Queue[tuple[str, Mapping[str, Any]]] = asyncio.Queue()
        self._stop = threading.Event()
        self.synced = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        thread = threading.Thread(
            target=self._watch, args=(loop,), name="tessera-imagemodel-watch", daemon=True
        )
        thread.start()
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                getting = asyncio.create_task(self._events.get())
                await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    break
                await self._apply(*getting.result())
        finally:
            stopping.cancel()
            self._stop.set()

    # -- the watch thread ------------------------------------------------------------------

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        def send(kind: str, body: Mapping[str, Any]) -> None:
            loop.call_soon_threadsafe(self._events.put_nowait, (kind, body))

        while not self._stop.is_set():
            try:
                listed: Any = self._api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
                send("LISTED", listed)
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    self._api.list_cluster_custom_object,
                    GROUP,
                    VERSION,
                    PLURAL,
                    resource_version=listed["metadata"]["resourceVersion"],
                    timeout_seconds=RELIST_SECONDS,
                )
                for event in stream:
                    if self._stop.is_set():
                        return
                    send(event["type"], event["object"])
            except ApiException as error:  # 410 Gone and the like: list again
                log.warning("ImageModel watch ended (%s); listing again", error.reason)
                self._stop.wait(1)
            except Exception:  # a broken connection: keep serving what we know, retry
                log.exception("ImageModel watch failed; retrying")
                self._stop.wait(1)

    # -- on the event loop -----------------------------------------------------------------

    async def _apply(self, kind: str, body: Mapping[str, Any]) -> None:
        if kind == "LISTED":
            self._resources.clear()
            self._bodies.clear()
            for item in body.get("items") or ():
                self._remember(item)
        elif kind in ("ADDED", "MODIFIED"):
            self._remember(body)
        elif kind == "DELETED":
            uid = (body.get("metadata") or {}).get("uid", "")
            self._resources.pop(uid, None)
            self._bodies.pop(uid, None)
        else:
            return
        await self._publish()
        if kind == "LISTED":
            self.synced.set()

    def _remember(self, body: Mapping[str, Any]) -> None:
        uid = (body.get("metadata") or {}).get("uid", "")
        try:
            self._resources[uid] = parse(body)
            self._bodies[uid] = body
        except InvalidImageModel as error:
            # The operator reports an invalid spec on the resource; nothing to serve.
            log.warning("not serving %s: %s", (body.get("metadata") or {}).get("name"), error)
            self._resources.pop(uid, None)
            self._bodies.pop(uid, None)

    async def _publish(self) -> None:
        served, conflicts = assign_names(self._resources.values())
        before = {model.queue_name: model.name for model in self.catalog.all()}
        self.catalog.replace(resource.model_spec() for resource in served.values())
        # By queue, not by public name: a name that passes to the next claim still leaves
        # the queue of the resource that went, with no worker behind it.
        for queue in sorted(before.keys() - {r.queue_name for r in served.values()}):
            name = before[queue]
            log.info("model %s (%s) was removed; failing its queued jobs", name, queue)
            try:
                await self.store.expire(queue, 0, removed_reason(name))
            except StoreUnavailable as error:
                log.warning("could not fail the queued jobs of %s: %s", queue, error)
        for resource in served.values():
            await self._set_served(
                resource, True, REASON_SERVED, f"served as {resource.model_name!r}"
            )
        for conflict in conflicts:
            await self._set_served(conflict.loser, False, REASON_NAME_TAKEN, conflict.message)

    async def _set_served(
        self, resource: ImageModel, served: bool, reason: str, message: str
    ) -> None:
        """Write the Served condition, only when it says something new (every replica
        writes the same one; writes that change nothing would wake every watcher)."""
        body = self._bodies.get(resource.uid) or {}
        conditions = (body.get("status") or {}).get("conditions")
        old = find_condition(conditions, SERVED)
        value = "True" if served else "False"
        if (
            old
            and old.get("status") == value
            and old.get("message") == message
            and int(old.get("observedGeneration") or 0) == resource.generation
        ):
            return
        new = set_condition(
            conditions,
            SERVED,
            served,
            reason,
            message,
            resource.generation,
            datetime.datetime.now(datetime.UTC),
        )
        try:
            await asyncio.to_thread(
                self._api.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                resource.namespace,
                PLURAL,
                resource.name,
                {"status": {"conditions": new}},
            )
        except Exception as error:  # a status write is advice, never fatal
            log.warning("could not write the Served condition of %s: %s", resource.reference, error)
