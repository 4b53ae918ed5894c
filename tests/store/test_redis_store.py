"""What only the Redis store must do: stay right when a retried script runs twice."""

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
