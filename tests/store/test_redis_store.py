"""What only the Redis store must do: stay right when a retried script runs twice, and
when it meets jobs written by an older gateway."""

from __future__ import annotations

from tessera.runtime.jobs.redis import RedisJobStore
from tests.store.test_store_conformance import PARAMS


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


async def test_a_job_queued_before_batching_comes_alone(redis_store: RedisJobStore) -> None:
    """A job written by a gateway that predates batching has no ``batch`` field: a batch
    lease takes it on its own rather than guess what it may share a call with."""
    old, new = [await redis_store.submit("m", "k", PARAMS) for _ in range(2)]
    await redis_store._redis.hdel(f"{redis_store._job_prefix('m')}{old.id}", "batch")
    assert [job.id for job in await redis_store.lease_batch(["m"], "w", 4)] == [old.id]
    assert [job.id for job in await redis_store.lease_batch(["m"], "w", 4)] == [new.id]
