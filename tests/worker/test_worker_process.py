"""`tessera worker` as the operator runs it: a separate process on a shared queue."""

from __future__ import annotations

import asyncio
import io
import signal
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tessera.runtime.jobs import open_store
from tessera.runtime.jobs.base import JobStatus, StorePolicy
from tessera.runtime.jobs.redis import RedisJobStore
from tessera.runtime.params import OutputFormat
from tests.support.params import job_params
from tests.support.redis_server import RedisServer
from tests.support.server import free_port

PARAMS = job_params(
    prompt="a harbour",
    width=200,
    height=120,
    num_images=2,
    num_inference_steps=2,
    seed=3,
    output_format=OutputFormat.WEBP,
)


def _queue_url(kind: str, tmp_path: Path, redis_server: RedisServer) -> str:
    if kind == "sqlite":
        return f"sqlite://{tmp_path / 'queue' / 'jobs.db'}"
    return redis_server.url


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_worker_process_runs_jobs_and_reports_health(
    kind: str, tmp_path: Path, demo_models_dir: Path, redis_server: RedisServer
) -> None:
    queue = _queue_url(kind, tmp_path, redis_server)
    model = f"demo-{uuid.uuid4().hex[:6]}"  # its own queue on the shared Redis
    port = free_port()
    storage = tmp_path / "results"
    env_price = "0.000001"
    worker = subprocess.Popen(
        [
            sys.executable, "-m", "tessera.runtime.cli", "worker",
            "--model", model,
            "--weights", str(demo_models_dir / "tessera-demo"),
            "--queue", queue,
            "--storage", str(storage),
            "--port", str(port),
            "--device", "cpu",
            "--worker-id", "worker-under-test",
        ],
        env={**__import__("os").environ, "TESSERA_PRICE_PER_PATCH": env_price},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert worker.poll() is None, worker.stdout.read().decode()  # type: ignore[union-attr]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "worker never became ready"
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}

        async def run_one() -> None:
            store = open_store(queue, StorePolicy())
            try:
                job = await store.submit(model, "key_test", PARAMS)
                done = await store.wait_for_change(job.id, JobStatus.QUEUED, 60)
                if done.status is JobStatus.IN_PROGRESS:
                    done = await store.wait_for_change(job.id, JobStatus.IN_PROGRESS, 60)
                assert done.status is JobStatus.COMPLETED, done.error
                assert done.result is not None
                assert done.result.patches == 2 * 13 * 8
                assert done.result.price == 2 * 13 * 8 * Decimal(env_price)
                for image in done.result.images:
                    picture = Image.open(io.BytesIO((storage / image.key).read_bytes()))
                    assert picture.size == (200, 120)
                    assert picture.format == "WEBP"
                usage = [r for r in (await store.usage()).records if r.job_id == job.id]
                assert len(usage) == 1
                if isinstance(store, RedisJobStore):
                    # The cold start, for the autoscaler: recorded once the first image is.
                    record: dict[str, float] = {}
                    for _ in range(100):
                        found = await store.starts(model, ["worker-under-test"])
                        record = found.get("worker-under-test", {})
                        if "firstImage" in record:
                            break
                        await asyncio.sleep(0.1)
                    assert record["started"] <= record["loaded"] <= record["firstImage"]
                    assert record["importSeconds"] > 0 and record["pipelineSeconds"] > 0
            finally:
                await store.close()

        asyncio.run(run_one())
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics/").text
        assert f'tessera_patches_total{{model="{model}"}} 208.0' in metrics
        assert f'tessera_jobs_finished_total{{model="{model}",outcome="completed"}} 1.0' in metrics
        assert "key_id" not in metrics and "key_test" not in metrics, "no metric is by key"
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0


def test_worker_with_broken_weights_exits_non_zero(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    result = subprocess.run(
        [
            sys.executable, "-m", "tessera.runtime.cli", "worker",
            "--model", "broken", "--weights", str(tmp_path / "weights"),
            "--queue", f"sqlite://{tmp_path / 'jobs.db'}", "--port", str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "model_index.json" in result.stdout + result.stderr
