"""The store fixtures: every conformance module runs against each backend, with a short
lease so lapses take no time."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import pytest

from tessera.runtime.jobs.base import ImageFile, JobResult, JobStore, StorePolicy, UsageRecord
from tessera.runtime.jobs.redis import RedisJobStore
from tessera.runtime.jobs.sqlite import SQLiteJobStore
from tests.support.params import job_params
from tests.support.redis_server import RedisServer

PARAMS = job_params(prompt="p")
RESULT = JobResult(
    images=(ImageFile("results/1/0.png", 64, 48, "image/png"),),
    patches=12,
    price=12 * Decimal("0.0005"),
    price_per_patch=Decimal("0.0005"),
)
SHORT_LEASE = StorePolicy(lease_seconds=0.3, max_attempts=2)

BACKENDS = ["sqlite_store", "redis_store"]

T = TypeVar("T")


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[JobStore]:
    store = SQLiteJobStore(tmp_path / "jobs.db", SHORT_LEASE)
    yield store
    await store.close()


@pytest.fixture
async def redis_store(redis_server: RedisServer) -> AsyncIterator[RedisJobStore]:
    # A key prefix per test keeps tests apart on one server.
    store = RedisJobStore(redis_server.url, SHORT_LEASE, prefix=f"test-{uuid.uuid4().hex[:8]}")
    yield store
    await store.close()


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest) -> JobStore:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


async def complete_one(
    store: JobStore, model: str = "m", key_id: str = "k", result: JobResult = RESULT
) -> int:
    """Submit, lease and complete one job (namespace team-a); its id."""
    job = await store.submit(model, key_id, PARAMS)
    leased = await store.lease([model], "w")
    assert leased is not None and leased.id == job.id
    await store.complete(job.id, "w", result, "team-a")
    return job.id


async def read_all(store: JobStore, since: str = "", page: int = 1000) -> list[UsageRecord]:
    records = []
    while True:
        batch = await store.usage(since, limit=page)
        if not batch.records:
            return records
        records.extend(batch.records)
        since = batch.cursor


async def complete_many(store: JobStore, count: int) -> list[int]:
    return [await complete_one(store) for _ in range(count)]


def in_sqlite(database: Path, work: Callable[[JobStore], Awaitable[T]]) -> T:
    """``work`` against the SQLite store in ``database``, from a test that drives the CLI
    (and so runs no event loop of its own); the store is closed after."""

    async def run() -> T:
        store = SQLiteJobStore(database)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())
