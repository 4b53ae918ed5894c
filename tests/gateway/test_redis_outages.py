"""Redis restarting under a gateway and its workers, and Redis kept bounded by retention:
real ``redis-server`` (AOF, ``appendfsync always``), real gateway and worker processes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tessera.runtime.jobs.base import UsageRecord
from tessera.runtime.jobs.redis import RedisJobStore
from tests.api.helpers import FAST, download, png_bytes, submit, wait
from tests.support.gateway import GatewayDeployment, run_deployment
from tests.support.redis_server import RedisServer

BODY = {"model": "tessera-demo", "prompt": "a pier", "image_size": "64x48", **FAST}
EDIT = {**BODY, "model": "tessera-demo-edit"}


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, demo_models_dir: Path
) -> Iterator[GatewayDeployment]:
    """A deployment of its own: restarting its Redis disturbs no other test."""
    yield from run_deployment(tmp_path_factory.mktemp("redis-outages"), demo_models_dir)


def _ledger(redis: RedisServer) -> list[UsageRecord]:
    async def read() -> list[UsageRecord]:
        store = RedisJobStore(redis.url)
        try:
            return (await store.usage(limit=100_000)).records
        finally:
            await store.close()

    return asyncio.run(read())


def test_a_redis_restart_loses_nothing_and_bills_nothing_twice(
    deployment: GatewayDeployment,
) -> None:
    redis = deployment.redis
    with deployment.client(timeout=60) as client:
        completed = [submit(client, BODY) for _ in range(3)]
        for job_id in completed:
            assert wait(client, job_id)["status"] == "completed"
        queued = [submit(client, BODY) for _ in range(8)]

        redis.stop()  # SIGTERM: with appendfsync always, every acknowledged write is on disk
        during: list[int] = []
        # A client that submits while Redis is down is answered once it is back.
        submitter = threading.Thread(target=lambda: during.append(submit(client, BODY)))
        submitter.start()
        time.sleep(3)
        redis.start()  # the same directory and port; the deployment stops it at the end
        submitter.join(60)
        assert len(during) == 1, deployment.log()

        tasks = {job_id: wait(client, job_id) for job_id in [*completed, *queued, *during]}
        after = wait(client, submit(client, BODY))  # the worker carries on
    assert {job_id: task["status"] for job_id, task in tasks.items()} == dict.fromkeys(
        tasks, "completed"
    ), deployment.log()
    assert after["status"] == "completed"
    for worker in deployment.workers:
        assert worker.process is not None and worker.process.poll() is None, worker.log()
    billed = [record.job_id for record in _ledger(redis) if record.job_id in tasks]
    assert sorted(billed) == sorted(tasks)  # every job billed exactly once
    for task in tasks.values():
        assert len(download(task["result"]["data"][0]["url"])) > 0


def test_finished_jobs_and_their_files_go_after_the_retention(
    deployment: GatewayDeployment,
) -> None:
    assert deployment.models_file is not None
    brief = deployment.gateway(deployment.models_file, "--retention-seconds", "2").start()
    try:
        with brief.client() as client:
            grant = client.get("/images/signed-url").json()
            assert httpx.put(grant["signed_url"], content=png_bytes()).is_success
            job_id = submit(client, {**EDIT, "image_url": grant["filename"]}, "/images/edits")
            task = wait(client, job_id)
            assert task["status"] == "completed", task
            stored = deployment.stored("")
            [result] = [key for key in stored if key.startswith(f"results/{job_id}/")]
            [upload] = [key for key in stored if key.endswith(grant["filename"])]
            inputs = {key for key in stored if key.startswith("inputs/")}
            assert inputs
            deadline = time.monotonic() + 30
            while client.get(f"/images/tasks/{job_id}").status_code != 404:
                assert time.monotonic() < deadline, brief.log()
                time.sleep(0.2)
        left = deployment.stored("")
        assert result not in left and upload not in left
        assert not inputs & set(left)
        assert job_id in [record.job_id for record in _ledger(deployment.redis)]  # still billed
    finally:
        brief.stop()
