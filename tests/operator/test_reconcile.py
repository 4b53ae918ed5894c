"""The reconciler's steps against an in-memory API (no cluster): what it writes, and when not.

The cluster tests prove the same against a real API server; these pin the decisions down
in milliseconds: a second reconcile of an unchanged model sends nothing, status is written
only when it changes, and events follow transitions.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from tessera.operator import render
from tessera.operator.reconcile import Inventory, Key, Reconciler
from tessera.operator.spec import InvalidSpec

CONFIG = render.RenderConfig(worker_image="example/worker:1")
KEY: Key = ("ml", "flux")


class FakeKube:
    """Stores what is applied, numbers resourceVersions, records every call."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, ...]] = []
        self._versions = itertools.count(100)

    def _stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        return obj

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        name = obj["metadata"]["name"]
        self.calls.append(("apply", obj["kind"], name))
        stored = self._stamp(copy.deepcopy(obj))
        stored["metadata"]["managedFields"] = [{"manager": "tessera-operator"}]
        stored["metadata"]["generation"] = 1
        self.objects[(obj["kind"], name)] = stored
        return copy.deepcopy(stored)

    def get(self, path: str) -> dict[str, Any] | None:
        self.calls.append(("get", path))
        return None

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.calls.append(("delete", kind, name))

    def patch_status(self, obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("status", obj["metadata"]["name"]))
        stored = copy.deepcopy(dict(obj))
        stored["status"] = {**(stored.get("status") or {}), **copy.deepcopy(status)}
        return self._stamp(stored)

    def post_event(self, regarding: Any, *, type: str, reason: str, message: str) -> None:
        self.calls.append(("event", type, reason))

    def writes(self) -> list[tuple[str, ...]]:
        return [c for c in self.calls if c[0] in ("apply", "status", "delete")]

    def events(self) -> list[str]:
        return [c[2] for c in self.calls if c[0] == "event"]


class Cluster:
    """The fake API plus the indices a watch would fill from it."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.kube = FakeKube()
        self.model: dict[str, Any] = {
            "apiVersion": "tessera.dev/v1alpha1",
            "kind": "ImageModel",
            "metadata": {
                "name": "flux",
                "namespace": "ml",
                "uid": "uid-1",
                "generation": 1,
                "resourceVersion": "1",
            },
            "spec": spec,
        }
        self.pods: list[dict[str, Any]] = []
        self.indices: dict[str, dict[Key, list[dict[str, Any]]]] = {
            name: {}
            for name in (
                Inventory.MODELS,
                Inventory.DEPLOYMENTS,
                Inventory.SERVICES,
                Inventory.PODS,
                Inventory.JOBS,
                Inventory.CLAIMS,
            )
        }
        clock = iter(
            datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(seconds=i)
            for i in itertools.count()
        )
        self.reconciler = Reconciler(
            self.kube,  # type: ignore[arg-type]
            CONFIG,
            Inventory(self.indices),
            clock=lambda: next(clock),
        )
        self.reconciler.ready = True

    def watch(self) -> None:
        """Deliver what the fake API holds to the indices, as the watches would."""
        for (kind, _), obj in self.kube.objects.items():
            index = {
                "Deployment": Inventory.DEPLOYMENTS,
                "Service": Inventory.SERVICES,
                "Job": Inventory.JOBS,
                "PersistentVolumeClaim": Inventory.CLAIMS,
            }[kind]
            self.indices[index][KEY] = [obj]
            self.reconciler.seen(kind, obj)
        self.indices[Inventory.PODS][KEY] = self.pods
        written = self.reconciler._written.statuses.get(KEY)
        if written is not None:
            self.model = written
        self.indices[Inventory.MODELS][KEY] = [self.model]
        self.reconciler.seen("ImageModel", self.model)

    async def create(self) -> None:
        """The first reconcile and the status write that follows it, seen by the watches;
        then forget the calls so far."""
        await self.reconciler.reconcile(self.model)
        await self.settle()
        self.watch()
        await self.reconciler.sync_status(KEY)
        await self.settle()
        self.watch()
        self.kube.calls.clear()

    async def settle(self) -> None:
        """Let background work (events being posted) finish."""
        await asyncio.gather(*self.reconciler._background)

    def set_deployment_status(self, **status: int) -> None:
        self.kube.objects[("Deployment", "flux")]["status"] = {"observedGeneration": 1, **status}


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    return Cluster({"weights": {"demo": {}}})


def test_first_reconcile_creates_children_without_reading(cluster: Cluster) -> None:
    async def go() -> None:
        await cluster.reconciler.reconcile(cluster.model)
        await cluster.settle()
        # Status follows once the Deployment controller has had a moment to answer.
        assert ("status", "flux") not in cluster.kube.calls
        assert KEY in cluster.reconciler._want_status
        cluster.watch()
        await cluster.reconciler.sync_status(KEY)

    run(go())
    assert sorted(c for c in cluster.kube.calls if c[0] == "apply") == [
        ("apply", "Deployment", "flux"),
        ("apply", "Service", "flux"),
    ]
    assert not [c for c in cluster.kube.calls if c[0] == "get"]
    assert ("status", "flux") in cluster.kube.calls
    assert cluster.reconciler._written.statuses[KEY]["status"]["observedGeneration"] == 1
    assert cluster.kube.events() == ["Created"]
    deployment = cluster.kube.objects[("Deployment", "flux")]
    owner = deployment["metadata"]["ownerReferences"][0]
    assert owner["uid"] == "uid-1"
    assert owner["controller"] is True


def test_an_unchanged_model_is_not_written_again(cluster: Cluster) -> None:
    async def go() -> None:
        await cluster.create()
        await cluster.reconciler.reconcile(cluster.model)  # a resync, or a restart
        await cluster.reconciler.sync_status(KEY)
        await cluster.settle()

    run(go())
    assert cluster.kube.calls == []


def test_status_follows_the_pods_and_events_follow_transitions(cluster: Cluster) -> None:
    async def go() -> None:
        await cluster.create()
        cluster.pods.append(
            {
                "metadata": {"name": "flux-1"},
                "status": {"conditions": [{"type": "PodScheduled", "status": "True"}]},
            }
        )
        cluster.set_deployment_status(
            replicas=1, updatedReplicas=1, readyReplicas=1, availableReplicas=1
        )
        cluster.watch()
        cluster.kube.calls.clear()
        await cluster.reconciler.sync_status(KEY)
        await cluster.settle()
        assert cluster.kube.writes() == [("status", "flux")]
        assert cluster.kube.events() == ["Ready"]
        cluster.watch()
        cluster.kube.calls.clear()
        await cluster.reconciler.sync_status(KEY)  # nothing moved
        await cluster.settle()
        assert cluster.kube.calls == []

    run(go())
    status = cluster.model["status"]
    assert status["phase"] == "Ready"
    assert status["readyReplicas"] == 1


def test_a_scale_change_is_one_apply_and_one_scaled_event(cluster: Cluster) -> None:
    cluster.model["spec"]["scaling"] = {"mode": "Manual", "minReplicas": 1, "maxReplicas": 3}

    async def go() -> None:
        await cluster.create()
        cluster.model = copy.deepcopy(cluster.model)
        cluster.model["spec"]["replicas"] = 2
        cluster.model["metadata"]["generation"] = 2
        await cluster.reconciler.reconcile(cluster.model)
        await cluster.settle()

    run(go())
    assert [c for c in cluster.kube.calls if c[0] == "apply"] == [("apply", "Deployment", "flux")]
    assert cluster.kube.events() == ["Scaled"]
    assert cluster.kube.objects[("Deployment", "flux")]["spec"]["replicas"] == 2


def test_consider_reconciles_only_new_generations_and_labels(cluster: Cluster) -> None:
    async def go() -> None:
        reconciler = cluster.reconciler
        reconciler.consider(cluster.model)
        assert KEY in reconciler._want_reconcile
        reconciler._want_reconcile.clear()
        await reconciler.reconcile(cluster.model)
        reconciler.consider({**cluster.model, "status": {"phase": "Ready"}})  # our own write
        assert KEY not in reconciler._want_reconcile
        relabelled = copy.deepcopy(cluster.model)
        relabelled["metadata"]["labels"] = {"team": "a"}
        reconciler.consider(relabelled)
        assert KEY in reconciler._want_reconcile

    run(go())


def test_an_invalid_spec_fails_once_with_status(cluster: Cluster) -> None:
    cluster.model["spec"] = {"weights": {}}

    async def go() -> None:
        with pytest.raises(InvalidSpec):
            await cluster.reconciler.reconcile(cluster.model)
        await cluster.settle()

    run(go())
    assert cluster.kube.writes() == [("status", "flux")]
    assert [c for c in cluster.kube.calls if c[0] == "apply"] == []
    written = cluster.reconciler._written.statuses[KEY]["status"]
    assert written["phase"] == "Failed"
    assert "exactly one source" in written["conditions"][0]["message"]


def test_first_block_cache_on_kontext_is_refused_with_a_condition_and_an_event(
    cluster: Cluster,
) -> None:
    cluster.model["spec"] = {
        "weights": {"demo": {}},
        "pipeline": {"className": "FluxKontextPipeline", "firstBlockCache": 0.12},
    }

    async def go() -> None:
        with pytest.raises(InvalidSpec):
            await cluster.reconciler.reconcile(cluster.model)
        await cluster.settle()

    run(go())
    assert [c for c in cluster.kube.calls if c[0] == "apply"] == []
    assert cluster.kube.events() == ["InvalidSpec"]
    conditions = cluster.reconciler._written.statuses[KEY]["status"]["conditions"]
    ready = next(c for c in conditions if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "spec.pipeline.firstBlockCache: FluxKontextPipeline" in ready["message"]
