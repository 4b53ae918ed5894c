"""One store of each backend per test, with a short lease so lapses take no time."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tessera.runtime.jobs.base import JobStore, StorePolicy
from tessera.runtime.jobs.redis import RedisJobStore
from tessera.runtime.jobs.sqlite import SQLiteJobStore
from tests.support.redis_server import RedisServer

SHORT_LEASE = StorePolicy(lease_seconds=0.3, max_attempts=2)


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
