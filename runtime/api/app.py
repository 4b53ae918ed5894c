"""The FastAPI application: routers, error mapping, and resources opened in ``lifespan``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse
from prometheus_client import start_http_server

from tessera.runtime import openai, playground
from tessera.runtime.api import catalog, errors, files, images, openapi, usage, webhooks
from tessera.runtime.api.bodylimit import BodyLimit
from tessera.runtime.config import ServerConfig
from tessera.runtime.errors import StorageUnavailable, StoreUnavailable
from tessera.runtime.jobs import open_store
from tessera.runtime.models import ModelCatalog
from tessera.runtime.ratelimit import KeyRateLimiter
from tessera.runtime.service import ImageService
from tessera.runtime.sources import SourceResolver
from tessera.runtime.storage import FileStore, UrlSigner, open_storage
from tessera.runtime.webhooks import WebhookSender

log = logging.getLogger(__name__)

EMBEDDED_WORKER_ID = "embedded"

DESCRIPTION = """
An asynchronous image API compatible with Hyperstack AI Studio's: submit a job, get a
`job_id`, poll `/v1/images/tasks/{job_id}` (or long-poll with `?wait=`), download the
result by its signed URL. Send your key in the `api_key` header. Every image is billed by
its 16x16-pixel patches, reported as `usage.output_tokens`.
"""


async def _run_embedded_worker(app: FastAPI, config: ServerConfig, stop: asyncio.Event) -> None:
    """Load the pipelines off the event loop, then work the queue until ``stop``."""
    from tessera.runtime.worker.pipeline import LoadedPipeline
    from tessera.runtime.worker.runner import Worker

    service: ImageService = app.state.service
    pipelines = {}
    for model in config.models:
        pipelines[model.name] = await asyncio.to_thread(
            LoadedPipeline.load, Path(model.weights), config.device, None, model.pipeline
        )
    await service.store.release(EMBEDDED_WORKER_ID)
    worker = Worker(
        service.store,
        service.files,
        {model.name: model for model in config.models},
        pipelines,
        EMBEDDED_WORKER_ID,
        lease_seconds=config.store.lease_seconds,
    )
    app.state.ready = True
    log.info("worker ready for %s", ", ".join(pipelines))
    await worker.run(stop)


# How often a gateway looks for jobs past their queue timeout (and for lapsed leases), and
# for finished jobs past their retention.
EXPIRY_INTERVAL_SECONDS = 1.0


async def _expire_waiting_jobs(service: ImageService, stop: asyncio.Event) -> None:
    """Every replica sweeps; the store's sweep is atomic, so they never fail a job twice,
    and deleting a job or a file twice is no error. The same tick samples queue depth for
    the metrics."""
    while not stop.is_set():
        try:
            failed = await service.expire_waiting()
            forgotten = await service.forget_finished()
            await service.observe_queues()
        except StoreUnavailable as error:
            log.warning("could not sweep the job store: %s", error)
        else:
            if failed:
                log.info("%d job(s) failed: no worker took them within the queue timeout", failed)
            if forgotten:
                log.info("%d finished job(s) deleted with their files (retention)", forgotten)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), EXPIRY_INTERVAL_SECONDS)


async def _expire_uploads(files: FileStore, ttl_seconds: float) -> None:
    """Delete uploaded source images once they are ``ttl_seconds`` old; a job that used one
    keeps its own copy, so nothing that is queued or running loses an input. Gateway
    replicas sharing storage each sweep; a file one of them deleted is simply gone."""
    while True:
        try:
            deleted = await files.delete_older_than("uploads", ttl_seconds)
        except StorageUnavailable as error:
            log.warning("could not delete expired uploads: %s", error)
        else:
            if deleted:
                log.info("deleted %d expired uploads", deleted)
        await asyncio.sleep(min(ttl_seconds / 4, 300))


async def _follow_cluster(app: FastAPI, stop: asyncio.Event) -> None:
    """Serve the cluster's ImageModels; ready once the first list has been applied."""
    from tessera.runtime.cluster import ClusterModels

    service: ImageService = app.state.service
    models = ClusterModels(service.catalog, service.store)

    async def mark_ready() -> None:
        await models.synced.wait()
        app.state.ready = True

    ready = asyncio.create_task(mark_ready())
    try:
        await models.run(stop)
    finally:
        ready.cancel()


def create_app(config: ServerConfig) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(config.queue, config.store)
        file_store = open_storage(config.storage, public_downloads=config.public_downloads)
        signer = UrlSigner(config.signing_secret, config.public_url, config.url_ttl_seconds)
        app.state.service = ImageService(
            catalog=ModelCatalog(config.models),
            store=store,
            files=file_store,
            signer=signer,
            sources=SourceResolver(file_store, signer, config.sources),
            retention_seconds=config.store.retention_seconds,
            limiter=KeyRateLimiter(config.rate_limits),
            webhooks=config.webhooks.http(),
        )
        app.state.keys = config.keys
        app.state.ready = not config.embedded_worker and not config.watch_cluster
        app.state.worker_error = None
        stop = asyncio.Event()
        watch_task = (
            asyncio.create_task(_follow_cluster(app, stop)) if config.watch_cluster else None
        )
        worker_task = (
            asyncio.create_task(_run_embedded_worker(app, config, stop))
            if config.embedded_worker
            else None
        )
        expiry_task = asyncio.create_task(_expire_waiting_jobs(app.state.service, stop))
        # API processes send webhooks, never workers: they run wherever the API runs
        # (workers may be scaled to zero), and egress to clients' URLs belongs at the edge.
        app.state.signing_secret = config.signing_secret
        sender = WebhookSender(
            app.state.service,
            store,
            config.signing_secret,
            app.state.service.webhooks,
            config.webhooks,
        )
        webhook_task = asyncio.create_task(sender.run(stop))

        def record_failure(task: asyncio.Task[None]) -> None:
            # The API keeps answering (jobs stay queued, nothing is lost); readiness says why
            # no job will run.
            if not task.cancelled() and task.exception() is not None:
                app.state.ready = False
                app.state.worker_error = f"the worker stopped: {task.exception()}"
                log.error("%s", app.state.worker_error, exc_info=task.exception())

        if worker_task is not None:
            worker_task.add_done_callback(record_failure)
        sweeper = asyncio.create_task(_expire_uploads(file_store, config.upload_ttl_seconds))
        metrics_server = None
        if config.metrics_port is not None:
            metrics_server, _ = start_http_server(config.metrics_port, config.metrics_host)
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            stop.set()
            await expiry_task
            await webhook_task
            if watch_task is not None:
                await watch_task
            if worker_task is not None:
                try:
                    await asyncio.wait_for(worker_task, timeout=30)
                except TimeoutError:
                    log.warning("a job was still running at shutdown; it will run again")
                except Exception:  # noqa: S110 - record_failure has reported it
                    pass
            await store.close()

    app = FastAPI(
        title="Tessera image API",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    errors.install(app)
    openapi.install(app, config.models)
    if config.cors_origins:
        # The key travels in the `api_key` header, so a cross-origin call is always preflighted;
        # result and upload URLs carry their own signatures and need no header.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "PUT"],
            allow_headers=["api_key", "content-type"],
            max_age=600,
        )
    # Every body is capped as it streams in: JSON at max_json_bytes, plus one source image
    # as a data URL for edits; uploads at the source limit.
    app.add_middleware(
        BodyLimit,
        default=config.max_json_bytes,
        by_prefix={
            "/v1/images/edits": config.max_edit_json_bytes,
            "/v1/uploads/": config.sources.max_bytes,
            # Multipart edits: the OpenAI router counts their parts and files on top.
            "/openai/v1/images/edits": config.openai.max_body_bytes,
        },
    )
    # Each under /v1 straight on the app: FastAPI matches a request through every level of
    # included routers (walking each one's routes), and one level less is a twentieth of
    # a gateway's CPU per submission (bench/gateway_app.py).
    for router in (images.router, catalog.router, files.router, usage.router, webhooks.router):
        app.include_router(router, prefix="/v1")
    openai.mount(app, config.openai)
    playground.mount(app)

    @app.get("/healthz", tags=["health"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Pipelines are loaded and jobs will run")
    async def readyz() -> Any:
        if app.state.ready:
            return {"status": "ready"}
        if app.state.worker_error:
            return JSONResponse(
                {"status": "failed", "error": app.state.worker_error}, status_code=503
            )
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(playground.PATH)

    return app
