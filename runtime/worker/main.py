"""``tessera worker``: one model's worker process, as the operator's Deployments run it.

It serves ``/healthz`` (alive), ``/readyz`` (pipeline loaded) and ``/metrics`` beside the
job loop. On SIGTERM it stops taking jobs, finishes the one in flight and exits, which is
why the operator gives its pods a termination grace period longer than one job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client import make_asgi_app

from tessera.runtime.config import ConfigError
from tessera.runtime.jobs import open_store
from tessera.runtime.jobs.base import Job, StorePolicy
from tessera.runtime.jobs.redis import RedisJobStore
from tessera.runtime.models import ModelSpec
from tessera.runtime.settings import WorkerSettings
from tessera.runtime.storage import InvalidStorageUrl, open_storage

log = logging.getLogger(__name__)


def _model_spec(settings: WorkerSettings) -> ModelSpec:
    return ModelSpec(
        name=settings.model,
        task=settings.task,
        weights=str(settings.weights),
        limits=settings.model_parameters,
        price_per_patch=settings.price_per_patch,
        namespace=settings.namespace,
        queue_name=settings.queue_name,
    )


def _storage_url(settings: WorkerSettings) -> str:
    """``--storage``, or the ``files`` folder beside a sqlite queue, as ``serve`` keeps it."""
    if settings.storage:
        return settings.storage
    if settings.queue.startswith("sqlite:///"):
        return f"file://{Path(settings.queue.removeprefix('sqlite://')).parent / 'files'}"
    raise ConfigError("--storage (TESSERA_STORAGE) is required with this queue")


def process_started() -> float:
    """When this process began (wall clock), from /proc; now where there is no /proc."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()
    return boot + ticks / os.sysconf("SC_CLK_TCK")


class _HealthServer(uvicorn.Server):
    """uvicorn without its own signal handling: the worker decides when to stop (after the
    job in flight), and exits 0 rather than re-raising the signal."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def health_app(state: dict[str, Any]) -> FastAPI:
    app = FastAPI(title="Tessera worker", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/metrics", make_asgi_app())

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Any:
        if state.get("ready"):
            return {"status": "ready", "busy": state["worker"].busy}
        return JSONResponse({"status": "loading"}, status_code=503)

    return app


async def run_worker(settings: WorkerSettings) -> None:
    from tessera.runtime.worker.pipeline import LoadedPipeline
    from tessera.runtime.worker.runner import Worker

    spec = _model_spec(settings)
    try:
        # The gateway serves the downloads: nothing here reads a result back.
        files = open_storage(_storage_url(settings), read_back_writes=False)
    except InvalidStorageUrl as error:
        raise ConfigError(str(error)) from None
    store = open_store(settings.queue, StorePolicy(lease_seconds=settings.lease_seconds))
    state: dict[str, Any] = {"ready": False}
    server = _HealthServer(
        uvicorn.Config(
            health_app(state), host=settings.host, port=settings.port, log_level="warning"
        )
    )
    stop = asyncio.Event()

    def shut_down() -> None:
        log.info("stopping: finishing the job in flight, taking no new ones")
        stop.set()
        server.should_exit = True

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, shut_down)

    async def work() -> None:
        pipeline = await asyncio.to_thread(
            LoadedPipeline.load,
            settings.weights,
            settings.device,
            settings.dtype,
            settings.pipeline,
        )
        # The cold start, for the autoscaler to show in the model's status.
        phases = {
            "started": process_started(),
            "loaded": time.time(),
            "importSeconds": pipeline.import_seconds,
            "pipelineSeconds": pipeline.pipeline_seconds,
        }

        async def record(job: Job | None = None) -> None:
            if job is not None:
                if "firstImage" in phases:
                    return
                phases["firstImage"] = time.time()
            if isinstance(store, RedisJobStore):
                await store.record_start(spec.queue_name, settings.worker_id, phases)

        await record()
        worker = Worker(
            store,
            files,
            {spec.name: spec},
            {spec.name: pipeline},
            settings.worker_id,
            lease_seconds=settings.lease_seconds,
            on_completed=record,
            batch=settings.batch,
        )
        state.update(ready=True, worker=worker)
        log.info("worker for %s ready", spec.name)
        await worker.run(stop)

    work_task = asyncio.create_task(work())

    def stop_server_on_failure(task: asyncio.Task[None]) -> None:
        # A pipeline that cannot load should crash the pod visibly, not sit unready.
        if not task.cancelled() and task.exception() is not None:
            server.should_exit = True

    work_task.add_done_callback(stop_server_on_failure)
    try:
        await server.serve()
    finally:
        stop.set()
        await work_task
        await store.close()
