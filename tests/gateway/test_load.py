"""Load: 500 concurrent clients submit and poll 5,000 jobs through two gateways to two demo
workers (real redis-server, real ``tessera gateway`` and ``tessera worker`` processes).

Zero lost (every accepted job completes), zero duplicated (5,000 distinct ids, each run once:
one attempt, one completion counted by the workers' metrics), every task answered. The jobs
are the cheapest the demo model makes (16x16, one step), batched up to BATCH a call as
``spec.batch`` allows, so the run measures the queueing path rather than the pipeline.

On the 2-core development machine, shared with other sessions (load average 8-12), the
clients' part took 75-80 s and the whole test 2 min 10 s to 3 min 6 s; most of the rest is
the demo pipelines' build and the workers' torch import (2026-12-01).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import GatewayDeployment, demo_image_models, write_models
from tests.support.redis_server import RedisServer
from tests.support.server import KEYS
from tests.support.worker import WorkerProcess

CLIENTS = 500
JOBS = 5000
MODEL = "tessera-demo"
CHEAPEST = {
    "model": MODEL,
    "prompt": "load",
    "image_size": {"width": 16, "height": 16},
    "num_inference_steps": 1,
}
BATCH = 32
POOLS = 25
# Far more than the run needs: a stall fails with the states reached, not pytest's timeout.
DEADLINE_SECONDS = 420


async def one_client(
    pools: list[httpx.AsyncClient], jobs: itertools.count[int], reconnects: list[int]
) -> list[Any]:
    """Submit a job, long-poll it to the end, repeat: (job id, final task) for each."""
    finished = []
    for index in jobs:
        if index >= JOBS:
            break
        pool = pools[index % len(pools)]
        submitted = await pool.post("/images/generations", json=CHEAPEST)
        assert submitted.status_code == 200, submitted.text
        job_id = submitted.json()["job_id"]
        # Poll the other gateway: any replica answers for any job.
        poller = pools[(index + 1) % len(pools)]
        while True:
            try:
                response = await poller.get(f"/images/tasks/{job_id}", params={"wait": 30})
            except httpx.RemoteProtocolError:
                # A kept-alive connection the server closed as it was reused: a poll is
                # idempotent, so ask again, as browsers do; counted and printed.
                reconnects[0] += 1
                continue
            assert response.status_code == 200, response.text
            task = response.json()
            if task["status"] in ("completed", "failed"):
                break
        finished.append((job_id, task))
    return finished


async def run_clients(api_urls: list[str]) -> tuple[list[Any], int]:
    """Every client's (job id, final task), and how many polls met a closed connection."""
    # Idle connections expire on our side well before the server's keep-alive timeout (5 s):
    # reusing one the server is closing at that moment is a disconnect no server can avoid.
    # Clients share POOLS pools per gateway: httpcore scans every connection of a pool for
    # each request, so one pool of 500 costs the client more CPU than all it measures.
    limits = httpx.Limits(
        max_connections=CLIENTS // POOLS,
        max_keepalive_connections=CLIENTS // POOLS,
        keepalive_expiry=2,
    )
    groups = [
        [
            httpx.AsyncClient(base_url=url, headers={"api_key": KEYS[0]}, limits=limits, timeout=60)
            for url in api_urls
        ]
        for _ in range(POOLS)
    ]
    jobs = itertools.count()
    reconnects = [0]
    try:
        results = await asyncio.wait_for(
            asyncio.gather(
                *(one_client(groups[n % POOLS], jobs, reconnects) for n in range(CLIENTS))
            ),
            DEADLINE_SECONDS,
        )
    finally:
        for group in groups:
            for pool in group:
                await pool.aclose()
    return [item for client in results for item in client], reconnects[0]


def completed_count(worker: WorkerProcess) -> float:
    text = httpx.get(worker.base_url + "/metrics/", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tessera_jobs_finished_total"
        and sample.labels == {"model": MODEL, "outcome": "completed"}
    )


@pytest.mark.load
@pytest.mark.timeout(900)
def test_500_clients_5000_jobs_two_gateways_two_workers(
    tmp_path: Path, demo_models_dir: Path
) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    queue = {"maxQueued": JOBS, "timeoutSeconds": 3600}
    models = write_models(tmp_path / "models.yaml", demo_image_models(queue=queue))
    deployment = GatewayDeployment(tmp_path, demo_models_dir, redis, models_file=models)
    # 500 connections opened at once by one client process: its first request on each may
    # take longer than the slow-client header deadline (5 s), which is not what this tests.
    gateways = [deployment.gateway(models, "--header-timeout", "120") for _ in range(2)]
    workers = [
        WorkerProcess(
            MODEL,
            demo_models_dir / MODEL,
            redis.url,
            deployment.storage,
            tmp_path / f"worker-{n}.log",
            # Two workers on two cores: one torch thread each. torch's default (a thread per
            # core) makes each worker's OpenMP threads wait on cores the other worker, the
            # gateways and the clients hold; on this machine that made a 16x16 image take
            # 0.7-2 s instead of 22-40 ms.
            env={"TESSERA_WORKER_ID": f"load-worker-{n}", "OMP_NUM_THREADS": "1"},
            # Up to BATCH queued jobs share one pipeline call, as spec.batch lets them: the
            # demo's per-call cost (text encoders, VAE set-up) is most of a 16x16 image.
            args=("--batch-max-size", str(BATCH), "--batch-max-wait-ms", "20"),
        )
        for n in range(2)
    ]
    processes: list[Any] = [*gateways, *workers]
    try:
        for process in processes:
            process.spawn()
        # Generous: the workers' torch import is slow on a loaded machine.
        for gateway in gateways:
            gateway.wait_ready(ready_timeout=300)
        for worker in workers:
            worker.wait_ready(timeout=300)
        started = time.monotonic()
        finished, reconnects = asyncio.run(run_clients([gateway.api_url for gateway in gateways]))
        seconds = time.monotonic() - started

        ids = [job_id for job_id, _ in finished]
        assert len(ids) == JOBS and len(set(ids)) == JOBS, "a job was lost or answered twice"
        statuses = {task["status"] for _, task in finished}
        assert statuses == {"completed"}, [t for _, t in finished if t["status"] != "completed"][:3]
        assert {task["attempts"] for _, task in finished} == {1}
        assert all(len(task["result"]["data"]) == 1 for _, task in finished)
        # Each job ran to completion exactly once, whichever worker took it.
        counts = [completed_count(worker) for worker in workers]
        assert sum(counts) == JOBS, counts
        assert all(count > 0 for count in counts), counts
        print(
            f"\n{JOBS} jobs, {CLIENTS} clients: {seconds:.1f} s, per worker {counts},"
            f" polls asked again after a closed connection: {reconnects}"
        )
    finally:
        for process in processes:
            process.stop()
        redis.stop()
