"""What the autoscaler reads from Redis: every model's depth at once, and which models moved."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from tessera.runtime.jobs.redis import RedisJobStore
from tests.support.params import job_params
from tests.support.redis_server import RedisServer

PARAMS = job_params(prompt="p")
# Model names may hold what the channel names are made of.
ODD = "black-forest-labs/FLUX.1:dev"


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisJobStore]:
    store = RedisJobStore(redis_server.url, prefix=f"test-{uuid.uuid4().hex[:8]}")
    yield store
    await store.close()


async def test_queue_depths_of_many_models_in_one_call(store: RedisJobStore) -> None:
    for model, jobs in (("a", 3), (ODD, 2)):
        for _ in range(jobs):
            await store.submit(model, "k", PARAMS)
    await store.lease(["a"], "w")
    depths = await store.queue_depths(["a", ODD, "never-used"])
    assert {m: (d.queued, d.in_progress) for m, d in depths.items()} == {
        "a": (2, 1),
        ODD: (2, 0),
        "never-used": (0, 0),
    }
    assert await store.queue_depths([]) == {}


async def test_changed_models_names_the_model_of_each_submit_and_lease(
    store: RedisJobStore,
) -> None:
    seen: list[str] = []

    async def listen() -> None:
        async for model in store.changed_models():
            seen.append(model)
            if len(seen) == 3:
                return

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.2)  # subscribed
    await store.submit(ODD, "k", PARAMS)
    await store.submit("b", "k", PARAMS)
    await store.lease(["b"], "w")
    await asyncio.wait_for(listener, timeout=5)
    assert seen == [ODD, "b", "b"]
