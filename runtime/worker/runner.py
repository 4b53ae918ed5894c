"""The worker loop: lease a job, run its pipeline off the event loop, store and bill it.

The pipeline runs in a thread so the loop stays free for lease renewals (and, inside
``tessera serve``, for the API). Completion is the store's one atomic step; if the lease was
lost meanwhile, the result is dropped and nothing is billed, because another worker owns
the job now.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image

from tessera.runtime import billing, metrics
from tessera.runtime.errors import StorageUnavailable, StoreUnavailable
from tessera.runtime.jobs.base import ImageFile, Job, JobResult, JobStore, LeaseLost
from tessera.runtime.models import ModelSpec
from tessera.runtime.storage import FileStore
from tessera.runtime.worker.pipeline import LoadedPipeline, UnsupportedParameter, encode

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_SECONDS = 0.25
# Between asks once the store's own retries are spent.
STORE_RETRY_SECONDS = 1.0


@dataclass
class _Progress:
    """Written by the pipeline thread, read by the heartbeat task; ``lost`` goes the other
    way: the heartbeat found the job cancelled (or leased elsewhere), so the pipeline stops
    at its next step instead of computing an image nobody gets."""

    value: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    lost: threading.Event = field(default_factory=threading.Event)


class JobStopped(Exception):
    """Raised from the pipeline's step callback once the worker no longer holds the job."""


class Worker:
    def __init__(
        self,
        store: JobStore,
        files: FileStore,
        models: Mapping[str, ModelSpec],
        pipelines: Mapping[str, LoadedPipeline],
        worker_id: str,
        *,
        lease_seconds: float = 60.0,
        on_completed: Callable[[Job], Awaitable[None]] | None = None,
    ):
        self.store = store
        self.files = files
        self.models = models
        self.pipelines = pipelines
        self.worker_id = worker_id
        self.on_completed = on_completed
        self.heartbeat_seconds = max(lease_seconds / 3, 0.05)
        self.busy = False
        # One thread for all pipeline work: torch's OpenMP pool belongs to the thread that
        # calls it, and hopping between threads rebuilds the pool and loses warm caches.
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tessera-pipeline")

    async def run(self, stop: asyncio.Event) -> None:
        """Process jobs until ``stop`` is set; a job in flight is finished first."""
        names = list(self.pipelines)
        while not stop.is_set():
            try:
                job = await self.store.lease(names, self.worker_id, wait=1.0)
            except StoreUnavailable as error:
                # The store's client has retried for a minute already; keep asking.
                log.warning("the job store is unavailable (%s); asking again", error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), STORE_RETRY_SECONDS)
                continue
            if job is not None:
                await self.process(job)

    async def process(self, job: Job) -> None:
        self.busy = True
        queued_for = (job.started_at or job.created_at) - job.created_at
        metrics.JOB_SECONDS.labels(job.model, "queue").observe(queued_for.total_seconds())
        started = time.monotonic()
        progress = _Progress()
        heartbeat = asyncio.create_task(self._heartbeat(job, progress))
        try:
            result = await self._run(job, progress)
        except (LeaseLost, JobStopped):
            # Cancelled, or taken over after a lapse: the worker cannot tell which, and
            # neither is billed here.
            log.warning("job %s: cancelled or lease lost while running; stopped", job.id)
            metrics.JOBS_FINISHED.labels(job.model, metrics.Outcome.LEASE_LOST).inc()
            return
        except (StoreUnavailable, StorageUnavailable) as error:
            # Not the job's fault: its lease runs out and it runs again, unbilled until then.
            log.warning("job %s: left to run again, the store is unavailable: %s", job.id, error)
            return
        except Exception as error:
            log.exception("job %s failed", job.id)
            reason = describe_failure(job.id, error)
            failed = await self._finish(
                job, lambda: self.store.fail(job.id, self.worker_id, reason)
            )
            if failed:
                metrics.JOBS_FINISHED.labels(job.model, metrics.Outcome.FAILED).inc()
            return
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            self.busy = False
            metrics.WORKER_BUSY_SECONDS.labels(job.model).inc(time.monotonic() - started)
        namespace = self.models[job.model].namespace
        if await self._finish(
            job, lambda: self.store.complete(job.id, self.worker_id, result, namespace)
        ):
            metrics.JOB_SECONDS.labels(job.model, "run").observe(time.monotonic() - started)
            metrics.JOBS_FINISHED.labels(job.model, metrics.Outcome.COMPLETED).inc()
            metrics.IMAGES.labels(job.model).inc(len(result.images))
            metrics.PATCHES.labels(job.model).inc(result.patches)
            metrics.BILLED.labels(job.model).inc(float(result.price))
            if self.on_completed is not None:
                await self.on_completed(job)

    async def _finish(self, job: Job, write: Callable[[], Awaitable[Job]]) -> bool:
        try:
            await write()
        except LeaseLost:
            log.warning("job %s: lease lost before completion; another worker owns it", job.id)
            metrics.JOBS_FINISHED.labels(job.model, metrics.Outcome.LEASE_LOST).inc()
            return False
        except StoreUnavailable as error:
            log.warning("job %s: not recorded, it will run again: %s", job.id, error)
            return False
        return True

    async def _run(self, job: Job, progress: _Progress) -> JobResult:
        params = job.params
        pipeline = self.pipelines[job.model]
        loop = asyncio.get_running_loop()
        stored_sources = [await self.files.get(key) for key in params.source_images]
        sources = await loop.run_in_executor(self._compute, _decode, stored_sources)

        def on_step(step: int, total: int) -> None:
            if progress.lost.is_set():
                raise JobStopped(f"stopped after step {step} of {total}")
            progress.value = min(99, step * 100 // max(total, 1))
            loop.call_soon_threadsafe(progress.changed.set)

        images = await loop.run_in_executor(
            self._compute, pipeline.generate, params, sources, on_step
        )
        stored = []
        for index, image in enumerate(images):
            data, content_type = await loop.run_in_executor(
                self._compute, encode, image, params.output_format
            )
            key = f"results/{job.id}/{index}.{params.output_format.value}"
            await self.files.put(key, data)
            stored.append(ImageFile(key, image.width, image.height, content_type))
        patches = billing.job_patches(params.width, params.height, len(stored))
        rate = self.models[job.model].price_per_patch
        return JobResult(
            images=tuple(stored),
            patches=patches,
            price=billing.price(patches, rate),
            price_per_patch=rate,
        )

    async def _heartbeat(self, job: Job, progress: _Progress) -> None:
        """Renew the lease on a timer and report progress as it moves."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.changed.wait(), timeout=self.heartbeat_seconds)
            progress.changed.clear()
            try:
                await self.store.heartbeat(job.id, self.worker_id, progress.value)
            except LeaseLost:
                log.warning("job %s: lease lost (cancelled, or taken by another worker)", job.id)
                progress.lost.set()
                return
            except StoreUnavailable as error:
                log.warning("job %s: could not renew the lease: %s", job.id, error)
            # Progress is for people watching: a few updates a second are plenty, and every
            # write is work taken from the API and the pipeline.
            await asyncio.sleep(PROGRESS_INTERVAL_SECONDS)


def _decode(sources: list[bytes]) -> list[Image.Image]:
    """The stored sources (PNGs this server wrote, already checked at submit) as RGB."""
    return [Image.open(io.BytesIO(data), formats=["PNG"]).convert("RGB") for data in sources]


def describe_failure(job_id: int, error: Exception) -> str:
    """What a failed task tells its client. Only our own errors about the request say
    more than that it failed: the text of anything else (torch, diffusers, the store) is
    internal, and goes to the log with the job's id."""
    if isinstance(error, UnsupportedParameter):
        return f"the pipeline cannot run this request: {error}"
    return f"the pipeline failed with an internal error (logged with job id {job_id})"
