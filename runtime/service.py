"""What the API does, apart from HTTP: submit jobs and describe tasks.

Routes stay thin and call these methods; the gateway and ``tessera serve`` share them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from tessera.runtime import control, metrics
from tessera.runtime.billing import format_amount
from tessera.runtime.errors import InvalidParameter, JobNotFound, StorageUnavailable
from tessera.runtime.jobs.base import DEFAULT_RETENTION_SECONDS, Job, JobStatus, JobStore
from tessera.runtime.keys import ApiKey
from tessera.runtime.models import ModelCatalog
from tessera.runtime.params import GenerationRequest, resolve
from tessera.runtime.ratelimit import Action, KeyRateLimiter, RateLimits
from tessera.runtime.sources import (
    UPLOAD_NAME,
    PinnedHttp,
    SourceResolver,
    new_upload_name,
    parse_url,
    upload_key,
)
from tessera.runtime.storage import FileStore, UrlSigner

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 60.0
# An event stream: how often a running job's progress is read, and the longest silence
# (a comment line then) that proxies and clients must not take for a dead connection.
PROGRESS_POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
# Resolving a webhook_url's host at submit: longer, and the URL is refused (422).
WEBHOOK_RESOLVE_SECONDS = 5.0
UPLOAD_URL_TTL_SECONDS = 900
_MiB = 1024 * 1024


def hyperstack_time(moment: datetime | None) -> str | None:
    """ISO-8601 in UTC with microseconds and no offset, as Hyperstack writes ``created``."""
    if moment is None:
        return None
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


@dataclass
class ImageService:
    catalog: ModelCatalog
    store: JobStore
    files: FileStore
    signer: UrlSigner
    sources: SourceResolver
    retention_seconds: float = DEFAULT_RETENTION_SECONDS
    limiter: KeyRateLimiter = field(default_factory=lambda: KeyRateLimiter(RateLimits()))
    # Where webhooks may go (the same checks as fetched images, with their own allowances).
    webhooks: PinnedHttp = field(default_factory=PinnedHttp)

    async def submit(
        self,
        key: ApiKey,
        request: GenerationRequest,
        *,
        edit: bool,
        controls: control.SubmitControls | None = None,
    ) -> Job:
        """Queue a job (or, for a repeated ``Idempotency-Key``, answer the first one)."""
        await self.limiter.hit(Action.SUBMIT, key)
        controls = controls or control.SubmitControls()
        cancel_after = control.cancel_after_seconds(controls.cancel_after)
        once = control.idempotency(
            controls.idempotency_key, request, edit=edit, cancel_after=cancel_after
        )
        start_by = control.start_deadline(cancel_after)
        model = self.catalog.get(request.model)
        if once is not None and (first := await self.store.replay(key.id, once)) is not None:
            return first  # a retry: nothing fetched, checked or queued again
        params = resolve(request, model.limits, model.task, edit=edit, refused=model.refused)
        if params.webhook_url is not None:
            await self.check_webhook_url(params.webhook_url)
        if params.source_images:
            stored = await self.sources.store_inputs(
                key, params.source_images, (params.width, params.height)
            )
            uploads = tuple(
                upload_key(key, name) for name in params.source_images if UPLOAD_NAME.match(name)
            )
            params = params.model_copy(update={"source_images": stored, "uploads": uploads})
        job = await self.store.submit(
            model.name,
            key.id,
            params,
            max_queued=model.max_queued,
            queue_name=model.queue_name,
            idempotency=once,
            start_by=start_by,
        )
        if not job.replayed:  # a retry that lost the race to its first submission
            metrics.JOBS_SUBMITTED.labels(model.name).inc()
        return job

    async def cancel(self, key: ApiKey, job_id: int) -> Job:
        """Cancel the caller's queued or running job; it is never billed."""
        await self.limiter.hit(Action.POLL, key)
        job = await self.store.get(job_id)
        if job.key_id != key.id:
            raise JobNotFound(job_id)
        was = job.status
        job = await self.store.cancel(job_id, "cancelled by its client; not billed")
        if not was.finished:
            metrics.JOBS_FINISHED.labels(job.model, metrics.Outcome.CANCELLED).inc()
        return job

    async def check_webhook_url(self, reference: str) -> None:
        """A 422 naming ``webhook_url`` for a URL no webhook would ever reach, found at
        submit rather than by deliveries that fail for an hour. Each delivery checks the
        address again: what a name resolves to may change."""
        url = parse_url(reference, "webhook_url")
        try:
            async with asyncio.timeout(WEBHOOK_RESOLVE_SECONDS):
                await self.webhooks.checked_address(url, "webhook_url")
        except TimeoutError:
            raise InvalidParameter(
                f"webhook_url: resolving {url.host!r} took longer than "
                f"{WEBHOOK_RESOLVE_SECONDS:g} s",
                field="webhook_url",
                rule="url",
            ) from None

    async def expire_waiting(self) -> int:
        """Fail the jobs that waited longer than their model's queue timeout; how many."""
        failed = 0
        for model in self.catalog.all():
            await self.store.abort_late(model.queue_name)
            if model.queue_timeout_seconds is None:
                continue
            reason = (
                f"no worker for model {model.name!r} became ready within its queue timeout "
                f"of {model.queue_timeout_seconds:g} s; the job did not run and is not billed"
            )
            expired = await self.store.expire(model.queue_name, model.queue_timeout_seconds, reason)
            metrics.JOBS_FINISHED.labels(model.name, metrics.Outcome.EXPIRED).inc(expired)
            failed += expired
        return failed

    async def forget_finished(self) -> int:
        """Delete the jobs whose retention ran out, their files first; how many.

        Files go before the job that names them, so a sweep cut short leaves a job to sweep
        again, never a file that nothing names.
        """
        jobs = await self.store.finished_before(self.retention_seconds)
        for job in jobs:
            images = job.result.images if job.result else ()
            keys = [image.key for image in images]
            try:
                for stored in (*keys, *job.params.source_images, *job.params.uploads):
                    await self.files.delete(stored)
            except StorageUnavailable as error:
                log.warning("job %s: its files stay until storage answers: %s", job.id, error)
                return 0
        await self.store.delete(jobs)
        return len(jobs)

    async def observe_queues(self) -> None:
        """Set the queue-depth gauges of every served model (for dashboards and alerts)."""
        for model in self.catalog.all():
            depth = await self.store.queue_depth(model.queue_name)
            metrics.QUEUE_JOBS.labels(model.name, "queued").set(depth.queued)
            metrics.QUEUE_JOBS.labels(model.name, "in_progress").set(depth.in_progress)

    async def job_for(self, key: ApiKey, job_id: int, wait: float = 0.0) -> Job:
        """The caller's job, after waiting up to ``wait`` s for its status to change.

        Another key's job answers exactly like a missing one.
        """
        # The wait counts from here, not from after the first read: under load that read
        # queues behind other requests, and the client's clock started before it.
        deadline = time.monotonic() + min(wait, MAX_WAIT_SECONDS)
        await self.limiter.hit(Action.POLL, key)
        job = await self.store.get(job_id)
        if job.key_id != key.id:
            raise JobNotFound(job_id)
        remaining = deadline - time.monotonic()
        if remaining > 0 and not job.status.finished:
            job = await self.store.wait_for_change(job_id, job.status, remaining)
        return job

    async def finished_within(self, job: Job, seconds: float) -> Job:
        """The job once finished, or as it is after ``seconds`` (at most the long-poll cap)."""
        deadline = time.monotonic() + min(seconds, MAX_WAIT_SECONDS)
        while not job.status.finished and (remaining := deadline - time.monotonic()) > 0:
            job = await self.store.wait_for_change(job.id, job.status, remaining)
        return job

    async def task_updates(self, key: ApiKey, job_id: int) -> AsyncGenerator[Job | None]:
        """The caller's job now, then each time its status or progress moves, until it is
        finished; None when nothing moved for ``KEEPALIVE_SECONDS``.

        Status changes wake it at once (the long-polls' per-job waiters); progress is read
        every ``PROGRESS_POLL_SECONDS`` while the job runs. Each value is the latest state,
        produced only when the consumer asks for the next, so a slow reader skips states
        rather than queueing them.
        """
        job = await self.job_for(key, job_id)
        yield job
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while not job.status.finished:
            nap = (
                PROGRESS_POLL_SECONDS if job.status is JobStatus.IN_PROGRESS else KEEPALIVE_SECONDS
            )
            latest = await self.store.wait_for_change(job.id, job.status, nap)
            if (latest.status, latest.progress) != (job.status, job.progress):
                job, quiet_since = latest, loop.time()
                yield job
            elif loop.time() - quiet_since >= KEEPALIVE_SECONDS:
                quiet_since = loop.time()
                yield None

    async def task_snapshot(self, job: Job) -> dict[str, Any]:
        """The task as a poll shows it, with result URLs and never base64: what webhooks and
        event streams carry, however often they are sent."""
        as_urls = replace(job, params=job.params.model_copy(update={"response_format": "url"}))
        return await self.task_body(as_urls)

    async def download_url(self, key: str) -> str:
        """The store's own presigned URL for a result, or the gateway's signed one."""
        ttl = self.signer.ttl_seconds
        return await self.files.download_url(key, ttl) or self.signer.sign(f"/v1/files/{key}", ttl)

    async def upload_url(self, key: ApiKey) -> tuple[str, str]:
        """Where the client PUTs one source image (the store's presigned URL, or the
        gateway's), and the filename that names it later.

        A presigned PUT cannot cap the size or check the image: both happen when a job
        reads the upload (``SourceResolver.read``).
        """
        await self.limiter.hit(Action.SUBMIT, key)
        name = new_upload_name()
        stored = await self.files.upload_url(upload_key(key, name), UPLOAD_URL_TTL_SECONDS)
        return stored or self.signer.sign(
            f"/v1/uploads/{key.id}/{name}", UPLOAD_URL_TTL_SECONDS
        ), name

    async def task_body(self, job: Job) -> dict[str, Any]:
        """What a poll answers. Base64 results are encoded off the event loop, and counted
        in MiB against the key's limit: a large result polled in a loop is gigabytes."""
        body: dict[str, Any] = {
            "job_id": job.id,
            "status": job.status.value,
            "progress": 100 if job.status is JobStatus.COMPLETED else job.progress,
            "model": job.model,
            "created_at": hyperstack_time(job.created_at),
            "started_at": hyperstack_time(job.started_at),
            "finished_at": hyperstack_time(job.finished_at),
            "attempts": job.attempts,
        }
        if job.status is JobStatus.FAILED:
            body["error"] = {"code": "job.failed", "message": job.error or "the job failed"}
        if job.status is JobStatus.CANCELLED:
            body["error"] = {"code": "job.cancelled", "message": job.error or "cancelled"}
        if job.status is JobStatus.QUEUED:
            body["queue_position"] = await self.store.queue_position(job)
        if job.result is not None:
            params = job.params
            encoded: list[str | None] = [None] * len(job.result.images)
            if params.response_format == "b64_json":
                files = [await self.files.get(image.key) for image in job.result.images]
                size = sum(len(data) for data in files) * 4 // 3
                await self.limiter.hit(Action.B64_MIB, ApiKey(job.key_id), math.ceil(size / _MiB))
                encoded = await asyncio.to_thread(
                    lambda: [base64.b64encode(data).decode() for data in files]
                )
            data = []
            for image, b64 in zip(job.result.images, encoded, strict=True):
                data.append(
                    {
                        "url": await self.download_url(image.key),
                        "b64_json": b64,
                        "width": image.width,
                        "height": image.height,
                        "content_type": image.content_type,
                    }
                )
            body["result"] = {
                "created": hyperstack_time(job.finished_at),
                "data": data,
                "usage": {
                    "output_tokens": job.result.patches,
                    "total_tokens": job.result.patches,
                },
                "price": format_amount(job.result.price),
                "seed": params.seed,
                "parameters": params.model_dump(mode="json", exclude={"source_images", "uploads"}),
            }
        return body
