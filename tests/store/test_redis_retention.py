"""Nothing in Redis grows with the number of jobs: once the push exporter has delivered the
ledger and the retention windows have passed, the store holds the same keys, each of the
same size, whether it saw ten jobs or fifty. Undelivered records are the one exception, by
design: they stay until delivered.

Counted with the server's own commands (SCAN, TYPE, XLEN, ZCARD, ...), not inferred."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from tessera.runtime.jobs.redis import RedisJobStore
from tessera.runtime.usage.export import Pusher, PushPolicy
from tests.store.conftest import PARAMS, SHORT_LEASE, complete_one
from tests.support.redis_server import RedisServer
from tests.support.usage_receiver import UsageReceiver

MODELS = ["team-a/alpha", "team-a/bravo", "team-b/alpha"]
DELIVER_AND_FORGET = PushPolicy(batch_size=7, retry_initial_seconds=0.005, retention_seconds=0)


@pytest.fixture
async def prefixed(redis_server: RedisServer) -> AsyncIterator[tuple[RedisJobStore, str]]:
    prefix = f"retention-{uuid.uuid4().hex[:8]}"
    store = RedisJobStore(redis_server.url, SHORT_LEASE, prefix=prefix)
    yield store, prefix
    await store.close()


async def sizes(url: str, prefix: str) -> dict[str, int]:
    """Every key under the prefix that has no expiry, with its length by its type's own
    count; keys that expire (idempotency keys, start-up phases) bound themselves."""
    client = aioredis.Redis.from_url(url, decode_responses=True)
    counts = {"stream": client.xlen, "zset": client.zcard, "list": client.llen, "set": client.scard}
    counts |= {"hash": client.hlen}
    found: dict[str, int] = {}
    try:
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            if await client.ttl(key) >= 0:
                continue
            kind = await client.type(key)
            found[key] = 1 if kind == "string" else int(await counts[kind](key))
    finally:
        await client.aclose()
    return found


async def workload(store: RedisJobStore, jobs: int) -> None:
    """``jobs`` completed jobs over three models, plus one failed and one cancelled each."""
    for index in range(jobs):
        await complete_one(store, MODELS[index % len(MODELS)], key_id=f"key_{index % 5}")
    for model in MODELS:
        failed = await store.submit(model, "key_f", PARAMS)
        await store.lease([model], "w")
        await store.fail(failed.id, "w", "boom")
        cancelled = await store.submit(model, "key_c", PARAMS)
        await store.cancel(cancelled.id, "changed my mind")


async def settle(store: RedisJobStore, receiver: UsageReceiver) -> None:
    """What runs in a cluster: the push exporter delivers and trims, the gateways' sweep
    forgets finished jobs; both with windows already passed."""
    await asyncio.sleep(0.01)  # older than a zero window, to the millisecond
    async with httpx.AsyncClient(timeout=5) as client:
        await Pusher(store, client, receiver.url, policy=DELIVER_AND_FORGET).drain()
    while finished := await store.finished_before(0, limit=100):
        await store.delete(finished)


async def test_the_store_stays_the_same_size_whatever_the_jobs(
    prefixed: tuple[RedisJobStore, str], redis_server: RedisServer
) -> None:
    store, prefix = prefixed
    receiver = UsageReceiver(failure_rate=0)
    try:
        await workload(store, 10)
        await settle(store, receiver)
        after_ten = await sizes(redis_server.url, prefix)
        await workload(store, 50)
        await settle(store, receiver)
        after_sixty = await sizes(redis_server.url, prefix)
    finally:
        receiver.close()
    assert len(set(receiver.received)) == 60, "every record was delivered before it went"
    assert after_sixty == after_ten, "no key and no length grew with the jobs"
    # What is left: the store's counters and names, the exporter's cursor, and one empty
    # stream per model (XTRIM keeps the key), none of it per job.
    constant = {f"{prefix}:{name}": 1 for name in ("ledger-id", "next-job-id", "usage-cursor:push")}
    ledgers = {f"{prefix}:{{{model}}}:ledger": 0 for model in MODELS}
    sets = {f"{prefix}:models": len(MODELS), f"{prefix}:usage-cursors": 1}
    assert after_sixty == constant | ledgers | sets


async def test_undelivered_records_stay_until_delivered(
    prefixed: tuple[RedisJobStore, str], redis_server: RedisServer
) -> None:
    store, prefix = prefixed
    await workload(store, 6)
    await asyncio.sleep(0.01)
    # The jobs go; their usage records do not, with no exporter to deliver them.
    while finished := await store.finished_before(0, limit=100):
        await store.delete(finished)
    ledgers = {
        key: size for key, size in (await sizes(redis_server.url, prefix)).items()
        if key.endswith(":ledger")
    }  # fmt: skip
    assert sum(ledgers.values()) == 6
