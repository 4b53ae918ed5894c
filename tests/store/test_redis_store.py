"""What only the Redis store must do: stay right when a retried script runs twice, and
when it meets jobs written by an older gateway."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import DataError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tessera.runtime.jobs.redis import MAX_CONNECTIONS, RedisJobStore, _PackedConnection
from tests.store.test_store_conformance import PARAMS
from tests.support.params import job_params
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until

HOOK = "https://hooks.example.com/"


async def test_a_retried_submission_queues_nothing_twice(redis_store: RedisJobStore) -> None:
    """The client retries a script whose reply was lost (Redis restarting): run again, the
    submit script finds the job written and queues nothing twice."""
    job = await redis_store.submit("m", "k", PARAMS)
    queue = redis_store._model_key("m", "queue")
    job_key = f"{redis_store._job_prefix('m')}{job.id}"
    again = await redis_store._scripts["submit"](
        keys=[queue], args=[job_key, job.id, "channel", 0, "status", "queued"]
    )
    assert abs(float(again) - job.created_at.timestamp()) < 0.001
    assert (await redis_store.queue_depth("m")).queued == 1
    assert (await redis_store.get(job.id)).status.value == "queued"


async def test_a_models_keys_carry_its_queue_name_as_hash_tag(redis_store: RedisJobStore) -> None:
    """Queue, leases and job of ImageModel team-a/flux live under {team-a/flux}: one slot
    in Redis Cluster, apart from team-b's claim on the same public name."""
    job = await redis_store.submit("flux", "k", PARAMS, queue_name="team-a/flux")
    await redis_store.lease(["team-a/flux"], "w")
    keys = {key async for key in redis_store._redis.scan_iter(f"{redis_store.prefix}:*")}
    tagged = {key.split(":", 1)[1] for key in keys if "{" in key}
    assert tagged == {"{team-a/flux}:leases", f"{{team-a/flux}}:job:{job.id}"}
    assert await redis_store._redis.get(f"{redis_store.prefix}:job:{job.id}:model") == (
        "team-a/flux"
    )


async def test_a_submission_is_two_round_trips_and_survives_a_lost_script(
    redis_store: RedisJobStore,
) -> None:
    """One pipeline, and an INCRBY for a block of ids now and then: no SCRIPT EXISTS before
    it (redis-py asks one per pipelined Script). A Redis that lost its scripts gets the
    script loaded once, and the job lands."""
    await redis_store._redis.script_flush()
    await redis_store._redis.config_resetstat()
    first = await redis_store.submit("m", "k", PARAMS)
    second = await redis_store.submit("m", "k", PARAMS)
    stats = await redis_store._redis.info("commandstats")
    calls = {name: entry["calls"] for name, entry in stats.items()}
    assert calls.get("cmdstat_script|exists", 0) == 0
    assert calls["cmdstat_script|load"] == 1
    assert calls["cmdstat_evalsha"] == 3  # the first NOSCRIPT, its retry, the second
    assert calls["cmdstat_incrby"] == 1 and "cmdstat_incr" not in calls  # one block of ids
    assert (await redis_store.queue_depth("m")).queued == 2
    assert [first.id, second.id] == [(await redis_store.lease(["m"], "w")).id for _ in "ab"]  # type: ignore[union-attr]


def test_commands_packed_in_c_are_the_bytes_redis_py_packs() -> None:
    """The store's connections pack with hiredis: the same bytes as redis-py's own packer
    for what the store sends (words, ints, floats, text beyond ASCII, bytes, a two-word
    command), and the same refusal of what Redis has no encoding for."""
    commands = [
        ("EVALSHA", "ab12", 3, "k:{m}:queue", 7, -1, 0.1, 1e20, 2.5, "née ☃", b"\x00\xff"),
        ("SCRIPT LOAD", "return 1"),
        ("SET", "tessera:job:1:model", "m"),
    ]
    packed, plain = _PackedConnection(), Connection()
    assert b"".join(packed.pack_commands(commands)) == b"".join(plain.pack_commands(commands))
    for value in (None, True, ["a"]):
        with pytest.raises(DataError):
            packed.pack_command("SET", "k", value)
        with pytest.raises(DataError):
            plain.pack_command("SET", "k", value)


async def test_a_submission_arms_one_timer_and_creates_no_task(
    redis_store: RedisJobStore,
) -> None:
    """Counted: a submission on an open connection arms one timer, its round trip's
    deadline, and creates no task. redis-py arms a timer for each reply it reads and writes
    under ``asyncio.wait_for``, a task and a timer per command. The jobs land all the same."""
    await redis_store.submit("m", "k", PARAMS)  # the connection and the listener open
    loop = asyncio.get_running_loop()
    created = timers = 0
    previous, call_at = loop.get_task_factory(), loop.call_at

    def counting_tasks(loop: asyncio.AbstractEventLoop, coro: Any, **options: Any) -> Any:
        nonlocal created
        created += 1
        return asyncio.Task(coro, loop=loop, **options)

    def counting_timers(*args: Any, **options: Any) -> asyncio.TimerHandle:
        nonlocal timers
        timers += 1
        return call_at(*args, **options)

    loop.set_task_factory(counting_tasks)
    loop.call_at = counting_timers  # type: ignore[method-assign,assignment]
    try:
        for _ in range(5):
            await redis_store.submit("m", "k", PARAMS)
    finally:
        loop.set_task_factory(previous)
        del loop.call_at
    assert (created, timers) == (0, 5)
    assert (await redis_store.queue_depth("m")).queued == 6


async def test_a_write_that_must_wait_for_redis_keeps_its_timeout(tmp_path: Path) -> None:
    """To a Redis that stopped reading (SIGSTOP): a command larger than the socket's buffer
    times out after ``socket_timeout``, as redis-py's own write does; a small one is written
    at once and its reply times out instead, and so does the store's round trip, whose
    replies share one deadline. Each drops its connection."""
    server = RedisServer(tmp_path / "redis").start()
    big, small = (_PackedConnection(port=server.port, socket_timeout=0.5) for _ in "ab")
    store = RedisJobStore(f"{server.url}?socket_timeout=0.5")
    store._redis.connection_pool.connection_kwargs["retry"] = Retry(NoBackoff(), 0)
    try:
        for connection in (big, small):
            await connection.connect()
        assert await store._round_trip([("PING",)]) == ["PONG"]
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(RedisTimeoutError, match="writing"):
                await big.send_command("SET", "big", b"x" * (64 << 20))
            assert 0.4 < time.monotonic() - started < 5
            await small.send_command("SET", "small", "x")  # into the buffer: no wait
            with pytest.raises(RedisTimeoutError, match="reading"):
                await small.read_response()
            assert not big.is_connected and not small.is_connected
            # The store's round trip: one deadline for its replies, then the connection dropped.
            started = time.monotonic()
            with pytest.raises(RedisTimeoutError):
                await store._round_trip([("PING",), ("PING",)])
            assert 0.4 < time.monotonic() - started < 5
            assert store._redis.connection_pool._available_connections[0].is_connected is False
        finally:
            server.process.send_signal(signal.SIGCONT)
        await small.connect()
        await small.send_command("PING")
        assert await small.read_response() == b"PONG"
    finally:
        for connection in (big, small):
            await connection.disconnect()
        await store.close()
        server.stop()


async def test_more_concurrent_commands_than_connections_wait_their_turn(
    redis_store: RedisJobStore,
) -> None:
    """Three times the pool's connections at once (500 clients of one gateway do more):
    every submission lands, none is refused for want of a connection."""
    count = 3 * MAX_CONNECTIONS
    jobs = await asyncio.gather(*(redis_store.submit("m", "k", PARAMS) for _ in range(count)))
    assert len({job.id for job in jobs}) == count
    assert (await redis_store.queue_depth("m")).queued == count


async def test_a_free_connection_skips_the_pools_waiting_way(
    redis_store: RedisJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted: submissions one after another take a free connection without redis-py's
    blocking ``get_connection`` (its condition, timeout and hooks); while Redis announces
    maintenance every command goes that way, under the pool's lock."""
    waited = 0
    wait = aioredis.BlockingConnectionPool.get_connection

    async def counted(pool: aioredis.BlockingConnectionPool) -> Any:
        nonlocal waited
        waited += 1
        return await wait(pool)

    monkeypatch.setattr(aioredis.BlockingConnectionPool, "get_connection", counted)
    pool = redis_store._redis.connection_pool
    for _ in range(5):
        await redis_store.submit("m", "k", PARAMS)
    assert waited == 0
    pool.set_in_maintenance(True)  # type: ignore[attr-defined]
    try:
        await redis_store.submit("m", "k", PARAMS)
    finally:
        pool.set_in_maintenance(False)  # type: ignore[attr-defined]
    assert waited == 1
    assert (await redis_store.queue_depth("m")).queued == 6


async def test_a_job_queued_before_batching_comes_alone(redis_store: RedisJobStore) -> None:
    """A job written by a gateway that predates batching has no ``batch`` field: a batch
    lease takes it on its own rather than guess what it may share a call with."""
    old, new = [await redis_store.submit("m", "k", PARAMS) for _ in range(2)]
    await redis_store._redis.hdel(f"{redis_store._job_prefix('m')}{old.id}", "batch")
    assert [job.id for job in await redis_store.lease_batch(["m"], "w", 4)] == [old.id]
    assert [job.id for job in await redis_store.lease_batch(["m"], "w", 4)] == [new.id]


async def test_a_webhook_sender_looks_only_at_changes_of_jobs_with_webhooks(
    redis_store: RedisJobStore, redis_server: RedisServer
) -> None:
    """Every gateway sends webhooks and hears every status change of every job (not the
    submissions: nothing has happened to report). A change of a job without a webhook must
    cost a sender no round trip (the outbox touch) and no look at the outbox (a claim's
    SMEMBERS), or each change costs Redis work in proportion to the replicas."""
    gateway = RedisJobStore(redis_server.url, prefix=redis_store.prefix)  # another replica
    try:
        await gateway.queue_depth("m")  # subscribed from here on
        sender = asyncio.create_task(redis_store.claim_webhooks(10, 30, wait=10))
        await asyncio.to_thread(
            wait_until,
            "both stores subscribed",
            lambda: redis_server.pattern_subscriber_clients() >= 2,
        )
        await asyncio.sleep(0.1)  # the sender's first, empty claim is done
        await redis_store._redis.config_resetstat()
        for _ in range(20):  # 40 changes: 20 submissions, 20 leases
            await gateway.submit("m", "k", PARAMS)
            assert await gateway.lease(["m"], "w") is not None
        # Changes arrive in order: once the sender claims this one, it heard all the others.
        hooked = await gateway.submit("m", "k", job_params(prompt="p", webhook_url=HOOK))
        started = await gateway.lease(["m"], "w")
        assert started is not None and started.id == hooked.id
        (due,) = await asyncio.wait_for(sender, 5)
        assert due.job_id == hooked.id
        stats = await redis_store._redis.info("commandstats")
        calls = {name: entry["calls"] for name, entry in stats.items()}
        assert calls["cmdstat_publish"] == 42  # the sender heard the 21 leases
        assert calls["cmdstat_zscore"] == 1  # one outbox touch: the webhook job's
        assert calls["cmdstat_smembers"] == 1  # one claim (a look at each model's outbox)
    finally:
        await gateway.close()


async def test_a_gateway_hears_no_submissions_and_a_worker_hears_them_from_its_first_lease(
    redis_store: RedisJobStore, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that never leases (a gateway) is not sent every submission of every gateway
    in the cluster: its long-polls and webhooks wait on jobs already submitted. Its first
    lease (a worker's) subscribes it to new jobs too, or a waiting worker would find them
    only by its safety poll (15 s)."""
    heard: list[int | None] = []
    notify = redis_store._changes.notify

    def counted(job_id: int | None = None, *, job: Any = None) -> None:
        heard.append(job_id)
        notify(job_id, job=job)

    monkeypatch.setattr(redis_store._changes, "notify", counted)

    patterns = redis_server.patterns_per_subscriber
    other = RedisJobStore(redis_server.url, prefix=redis_store.prefix)  # another replica
    try:
        await redis_store.queue_depth("m")  # subscribes it
        await other.queue_depth("m")
        await asyncio.to_thread(wait_until, "both subscribed", lambda: patterns() == [1, 1])
        for _ in range(5):
            await other.submit("m", "k", PARAMS)
        leased = await other.lease(["m"], "w")  # the other's subscription widens
        assert leased is not None
        # In order on one connection: by the lease's change, all five would have come.
        await asyncio.to_thread(wait_until, "the lease heard", lambda: leased.id in heard)
        assert heard == [None, leased.id]
        worker = asyncio.create_task(redis_store.lease(["n"], "w2", wait=10))
        await asyncio.to_thread(wait_until, "both widened", lambda: patterns() == [2, 2])
        new = await other.submit("n", "k", PARAMS)
        taken = await asyncio.wait_for(worker, 5)
        assert taken is not None and taken.id == new.id
        assert heard[-1] == new.id  # woken by the submission itself, not by a poll
    finally:
        await other.close()


async def test_a_submission_heard_late_is_no_change_to_a_settled_entry(
    redis_store: RedisJobStore,
) -> None:
    """The relay may hear a job's own submission after a sender has claimed and settled its
    entry; that touch must not make it due again (nothing has happened to report), while a
    lease, the job's first change, still does."""
    job = await redis_store.submit("m", "k", job_params(prompt="p", webhook_url=HOOK))
    (due,) = await redis_store.claim_webhooks(10, 30)
    await redis_store.settle_webhook(due, 3600)
    await redis_store._webhook_due_now("m", job.id)  # the submission's event, heard late
    assert await redis_store.claim_webhooks(10, 30) == []
    assert await redis_store.lease(["m"], "w") is not None
    await redis_store._webhook_due_now("m", job.id)  # the lease's event
    (again,) = await redis_store.claim_webhooks(10, 30)
    assert again.job_id == job.id and again.changes > due.changes


async def test_ids_of_two_gateways_are_unique_and_the_queue_keeps_submission_order(
    redis_store: RedisJobStore, redis_server: RedisServer
) -> None:
    """Each store takes ids in blocks, so ids of two gateways are not in submission order:
    queue positions and leases follow the order jobs were submitted in, not their ids."""
    gateway = RedisJobStore(redis_server.url, prefix=redis_store.prefix)  # another replica
    try:
        jobs = [
            await store.submit("m", "k", PARAMS) for store in (redis_store, gateway, redis_store)
        ]
        assert len({job.id for job in jobs}) == 3 and jobs[2].id < jobs[1].id
        assert [await redis_store.queue_position(job) for job in jobs] == [0, 1, 2]
        leased = [await gateway.lease(["m"], "w") for _ in jobs]
        assert [job.id for job in leased if job] == [job.id for job in jobs]
    finally:
        await gateway.close()
