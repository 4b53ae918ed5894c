"""``tessera worker``: one model's worker process, as the operator's Deployments run it.

It serves ``/healthz`` (alive), ``/readyz`` (pipeline loaded) and ``/metrics`` beside the
job loop. On SIGTERM it stops taking jobs, finishes the one in flight and exits, which is
why the operator gives its pods a termination grace period longer than one job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client import make_asgi_app

from tessera.runtime.jobs import open_store
from tessera.runtime.jobs.base import StorePolicy
from tessera.runtime.models import DEFAULT_PRICE_PER_PATCH, ModelSpec
from tessera.runtime.params import ParameterLimits, Task
from tessera.runtime.storage import LocalFileStore
from tessera.runtime.worker.options import PipelineOptions

log = logging.getLogger(__name__)


@dataclass
class WorkerSettings:
    model: str
    weights: Path
    queue: str
    task: Task
    storage: Path
    port: int = 8080
    # All interfaces by default; in a pod, its own address ($(POD_IP)), so that workers
    # sharing one network (local test nodes) can each take the same port.
    host: str = "0.0.0.0"  # noqa: S104
    device: str | None = None
    dtype: str | None = None
    lease_seconds: float = 60.0

    def pipeline_options(self) -> PipelineOptions:
        """From ``TESSERA_PIPELINE``, JSON the operator renders from ``spec.pipeline``."""
        raw = os.environ.get("TESSERA_PIPELINE")
        return PipelineOptions.model_validate_json(raw) if raw else PipelineOptions()

    def model_spec(self) -> ModelSpec:
        limits = os.environ.get("TESSERA_MODEL_PARAMETERS")
        price = os.environ.get("TESSERA_PRICE_PER_PATCH")
        return ModelSpec(
            name=self.model,
            task=self.task,
            weights=str(self.weights),
            limits=ParameterLimits.model_validate(json.loads(limits))
            if limits
            else ParameterLimits(),
            price_per_patch=Decimal(price) if price else DEFAULT_PRICE_PER_PATCH,
        )


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

    spec = settings.model_spec()
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
            settings.pipeline_options(),
        )
        worker = Worker(
            store,
            LocalFileStore(settings.storage),
            {spec.name: spec},
            {spec.name: pipeline},
            f"{socket.gethostname()}-{os.getpid()}",
            lease_seconds=settings.lease_seconds,
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
