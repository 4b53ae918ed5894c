"""The autoscaler's one loop for many models: an in-memory API (as in test_reconcile.py) and
a real redis-server, counting what each pass reads and writes.

Two hundred models must not mean two hundred timers hammering Redis: a sweep reads every
queue in one call, a submit wakes a pass that reads that one model's queue, and a pass that
finds nothing changed writes nothing.
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from tessera.operator import scaler
from tessera.operator.reasons import Condition
from tessera.operator.reconcile import Inventory, Key, Reconciler
from tessera.operator.scaler import QUEUE_EVENT, SWEEP, Autoscaler
from tessera.runtime.jobs.base import QueueDepth
from tessera.runtime.jobs.redis import RedisJobStore
from tests.support.params import job_params
from tests.support.redis_server import RedisServer

from .test_reconcile import CONFIG, FakeKube

MODELS = 200
NAMESPACE = "fleet"
PARAMS = job_params(prompt="p")


class CountingStore(RedisJobStore):
    """The real store; it records the queues each read of the depths asked for."""

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(url, prefix=prefix)
        self.depth_reads: list[list[str]] = []

    async def queue_depths(self, models: Sequence[str]) -> dict[str, QueueDepth]:
        self.depth_reads.append(list(models))
        return await super().queue_depths(models)


class ScalingKube(FakeKube):
    """The in-memory API with the Deployments' scale subresource, and every event's text."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[tuple[str, dict[str, Any]]] = []
        self.messages: list[tuple[str, str, str]] = []

    def forget(self) -> None:
        self.calls.clear()
        self.statuses.clear()

    def scale(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        self.calls.append(("scale", name, str(replicas)))
        return self._stamp({"metadata": {"name": name}, "spec": {"replicas": replicas}})

    def patch_status(self, obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        self.statuses.append((obj["metadata"]["name"], copy.deepcopy(status)))
        return super().patch_status(obj, status)

    def post_event(self, regarding: Any, *, type: str, reason: str, message: str) -> None:
        super().post_event(regarding, type=type, reason=reason, message=message)
        self.messages.append((regarding["metadata"]["name"], reason, message))

    def writes(self) -> list[tuple[str, ...]]:
        return [c for c in self.calls if c[0] in ("apply", "status", "delete", "scale")]


def name(i: int) -> str:
    return f"model-{i:03d}"


def queue(i: int) -> str:
    return f"{NAMESPACE}/{name(i)}"


def fleet(kube: ScalingKube) -> Reconciler:
    """MODELS ImageModels at zero replicas with their weights ready, in kopf's indices."""
    indices: dict[str, dict[Key, list[dict[str, Any]]]] = {
        index: {} for index in (Inventory.MODELS, Inventory.DEPLOYMENTS, Inventory.PODS)
    }
    for i in range(MODELS):
        key = (NAMESPACE, name(i))
        metadata = {"name": name(i), "namespace": NAMESPACE, "uid": f"uid-{i}"}
        indices[Inventory.MODELS][key] = [
            {
                "apiVersion": "tessera.dev/v1alpha1",
                "kind": "ImageModel",
                "metadata": {**metadata, "generation": 1, "resourceVersion": "1"},
                "spec": {
                    "weights": {"demo": {}},
                    "scaling": {"minReplicas": 0, "maxReplicas": 8},
                },
                "status": {"conditions": [{"type": Condition.WEIGHTS_READY, "status": "True"}]},
            }
        ]
        indices[Inventory.DEPLOYMENTS][key] = [
            {"metadata": {**metadata, "resourceVersion": "1"}, "spec": {"replicas": 0}}
        ]
    reconciler = Reconciler(kube, CONFIG, Inventory(indices))  # type: ignore[arg-type]
    reconciler.ready = True
    return reconciler


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[CountingStore]:
    store = CountingStore(redis_server.url, prefix=f"test-{uuid.uuid4().hex[:8]}")
    yield store
    await store.close()


@pytest.fixture
def kube() -> ScalingKube:
    return ScalingKube()


async def until(what: str, probe: Callable[[], bool], timeout: float = 30) -> float:
    """Seconds until ``probe`` holds, checked every 5 ms; fails after ``timeout``."""
    started = time.monotonic()
    while not probe():
        if time.monotonic() - started > timeout:
            pytest.fail(f"no {what} within {timeout} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def settle(reconciler: Reconciler) -> None:
    """Let the events being posted in the background finish."""
    await asyncio.gather(*reconciler._background)


async def test_a_sweep_reads_every_queue_at_once_and_writes_only_what_changed(
    store: CountingStore, kube: ScalingKube
) -> None:
    reconciler = fleet(kube)
    autoscaler = Autoscaler(reconciler, store)
    everyone = [queue(i) for i in range(MODELS)]

    await autoscaler.step()
    await settle(reconciler)
    assert store.depth_reads == [everyone]
    # The first sight of each model records its decision once; nothing is scaled.
    assert sorted(kube.writes()) == sorted(("status", name(i)) for i in range(MODELS))
    assert kube.messages == []

    kube.forget()
    for _ in range(3):
        await autoscaler.step()
    await settle(reconciler)
    assert store.depth_reads == [everyone] * 4
    assert kube.calls == []  # idle models cost one read per sweep, and no write at all

    # 19 jobs for one model, 16 of them running: one pass, one status, one scale, one event.
    for _ in range(19):
        await store.submit(name(7), "key_test", PARAMS, queue_name=queue(7))
    for _ in range(16):
        assert await store.lease([queue(7)], "worker") is not None
    await autoscaler.step()
    await settle(reconciler)
    assert sorted(kube.writes()) == [("scale", name(7), "5"), ("status", name(7))]
    assert kube.messages == [
        (name(7), "ScaledUp", "Scaled 0 -> 5: 19 jobs in backlog, 4 per replica")
    ]
    status = kube.statuses[-1][1]
    assert (status["queueDepth"], status["autoscaling"]["inProgress"]) == (19, 16)
    assert status["autoscaling"]["lastDecision"]["trigger"] == SWEEP


async def test_a_submit_wakes_one_pass_for_its_model_alone(
    store: CountingStore,
    kube: ScalingKube,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One sweep at the start and no other: every later pass is one a submit woke.
    monkeypatch.setattr(scaler, "SWEEP_SECONDS", 3600.0)
    reconciler = fleet(kube)
    autoscaler = Autoscaler(reconciler, store)
    subscribed = redis_server.pattern_subscribers()
    autoscaler.start()
    try:
        # The loop's first pass is a sweep; then it waits for the queues' events.
        await until("the first sweep's writes", lambda: len(kube.statuses) == MODELS)
        await until("subscription", lambda: redis_server.pattern_subscribers() > subscribed)
        await settle(reconciler)
        kube.forget()
        reads = len(store.depth_reads)

        await store.submit(name(42), "key_test", PARAMS, queue_name=queue(42))
        took = await until("scale-up", lambda: ("scale", name(42), "1") in kube.calls)
        print(f"submit -> scale of 1 of {MODELS} models: {took:.3f} s")
        await settle(reconciler)
    finally:
        await autoscaler.stop()
    # Heard, not swept: one pass, which read that one queue.
    assert store.depth_reads[reads:] == [[queue(42)]]
    assert sorted(kube.writes()) == [("scale", name(42), "1"), ("status", name(42))]
    [(_, status)] = kube.statuses
    assert status["autoscaling"]["lastDecision"]["trigger"] == QUEUE_EVENT
    assert kube.messages == [
        (name(42), "ScaledUp", "Scaled 0 -> 1: 1 job in backlog, 4 per replica")
    ]
