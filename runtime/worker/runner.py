"""The worker loop: lease a job, run its pipeline off the event loop, store and bill it.

With ``batch.maxSize`` above one it leases up to that many compatible jobs at once (see
``batch_key``) and runs them as one pipeline call; each job still has its own lease,
progress, result, failure and one completion, so a batch bills exactly what its jobs would
alone.

The pipeline runs in a thread so the loop stays free for lease renewals (and, inside
``tessera serve``, for the API). Completion is the store's one atomic step; if the lease was
lost meanwhile, the result is dropped and nothing is billed, because another worker owns
the job now.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from PIL import Image

from tessera.runtime import billing, metrics
from tessera.runtime.errors import StorageUnavailable, StoreUnavailable
from tessera.runtime.jobs.base import (
    ImageFile,
    Job,
    JobResult,
    JobStatus,
    JobStore,
    LeaseLost,
    batch_key,
)
from tessera.runtime.models import ModelSpec
from tessera.runtime.storage import FileStore
from tessera.runtime.worker.options import BatchOptions
from tessera.runtime.worker.pipeline import LoadedPipeline, UnsupportedParameter, encode

log = logging.getLogger(__name__)
T = TypeVar("T")

PROGRESS_INTERVAL_SECONDS = 0.25
# Between asks once the store's own retries are spent.
STORE_RETRY_SECONDS = 1.0
# How long a cancelled heartbeat may take to end before it is cancelled again.
CANCEL_AGAIN_SECONDS = 0.5


@dataclass
class _Progress:
    """Written by the pipeline thread, read by the heartbeat task; ``lost`` goes the other
    way: the heartbeat found the job cancelled (or leased elsewhere), so the pipeline stops
    at its next step instead of computing an image nobody gets."""

    value: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    lost: threading.Event = field(default_factory=threading.Event)


class JobStopped(Exception):
    """Raised from the pipeline's step callback once the worker holds none of its jobs."""


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
        batch: BatchOptions | None = None,
    ):
        self.store = store
        self.files = files
        self.models = models
        self.pipelines = pipelines
        self.worker_id = worker_id
        self.on_completed = on_completed
        self.batch = batch or BatchOptions()
        self.heartbeat_seconds = max(lease_seconds / 3, 0.05)
        self.busy = False
        # One thread for all pipeline work: torch's OpenMP pool belongs to the thread that
        # calls it, and hopping between threads rebuilds the pool and loses warm caches.
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tessera-pipeline")
        # Where the file store can write from a thread, results are stored by the pipeline's
        # thread as soon as they are encoded: no hand-off to another thread and back.
        self._put_here = files.blocking_put()

    async def run(self, stop: asyncio.Event) -> None:
        """Process jobs until ``stop`` is set; the jobs in flight are finished first."""
        queues = [self.models[name].queue_name for name in self.pipelines]
        while not stop.is_set():
            try:
                jobs = await self.store.lease_batch(
                    queues, self.worker_id, self.batch.max_size, wait=1.0
                )
            except StoreUnavailable as error:
                # The store's client has retried for a minute already; keep asking.
                log.warning("the job store is unavailable (%s); asking again", error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), STORE_RETRY_SECONDS)
                continue
            if jobs:
                jobs += await self._gather(jobs)
            if len(jobs) == 1:
                await self.process(jobs[0])
            elif jobs:
                await self.process_batch(jobs)

    async def _gather(self, leased: list[Job]) -> list[Job]:
        """Jobs that can share the call of those ``leased`` and arrive within
        ``max_wait_ms`` of them, up to ``max_size`` in all."""
        first = leased[0]
        key = batch_key(first.params)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch.max_wait_ms / 1000
        joined: list[Job] = []
        while key is not None and len(leased) + len(joined) < self.batch.max_size:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                joined += await self.store.lease_batch(
                    [self.models[first.model].queue_name],
                    self.worker_id,
                    self.batch.max_size - len(leased) - len(joined),
                    wait=left,
                    key=key,
                )
            except StoreUnavailable as error:
                log.warning("job %s: runs without waiting for a batch: %s", first.id, error)
                break
        return joined

    async def process(self, job: Job) -> None:
        self._observe_queue(job)
        await self._process_alone(job)

    async def _process_alone(self, job: Job) -> None:
        self.busy = True
        started = time.monotonic()
        progress = _Progress()
        heartbeat = asyncio.create_task(self._heartbeat(job, progress))
        try:
            await self._settle(job, lambda: self._run(job, progress), heartbeat, started)
        finally:
            self.busy = False
            metrics.WORKER_BUSY_SECONDS.labels(job.model).inc(time.monotonic() - started)

    async def process_batch(self, jobs: list[Job]) -> None:
        """Run compatible jobs as one pipeline call; each then completes, fails or is left
        to run again on its own. A call that fails as a whole runs again job by job, so a
        job that cannot run fails alone and the others still complete."""
        self.busy = True
        for job in jobs:
            self._observe_queue(job)
        metrics.BATCH_JOBS.labels(jobs[0].model).observe(len(jobs))
        started = time.monotonic()
        progress = [_Progress() for _ in jobs]
        heartbeats = [
            asyncio.create_task(self._heartbeat(job, mine))
            for job, mine in zip(jobs, progress, strict=True)
        ]
        try:
            try:
                images = await self._generate_batch(jobs, progress)
            except JobStopped:
                log.warning("a batch of %d jobs stopped: every one was cancelled", len(jobs))
                for job in jobs:
                    metrics.JOBS_FINISHED.labels(job.model, metrics.Outcome.LEASE_LOST).inc()
                return
            except Exception:
                log.exception(
                    "a batch of %d jobs (%s) failed; running them one by one",
                    len(jobs),
                    ", ".join(str(job.id) for job in jobs),
                )
                # Each lease is renewed by the batch until the job's own run takes over.
                for job, heartbeat in zip(jobs, heartbeats, strict=True):
                    await _stop(heartbeat)
                    await self._process_alone(job)
                return
            for job, made, heartbeat in zip(jobs, images, heartbeats, strict=True):
                await self._settle(
                    job, functools.partial(self._encode_and_store, job, made), heartbeat, started
                )
        finally:
            # Cancelled mid-call, the worker renews none of the leases: the jobs run again.
            for heartbeat in heartbeats:
                await _stop(heartbeat)
            self.busy = False
            # Once per call: the worker was busy once, whatever the batch's size.
            metrics.WORKER_BUSY_SECONDS.labels(jobs[0].model).inc(time.monotonic() - started)

    def _observe_queue(self, job: Job) -> None:
        queued_for = (job.started_at or job.created_at) - job.created_at
        metrics.JOB_SECONDS.labels(job.model, "queue").observe(queued_for.total_seconds())

    async def _settle(
        self,
        job: Job,
        produce: Callable[[], Awaitable[JobResult]],
        heartbeat: asyncio.Task[None],
        started: float,
    ) -> None:
        """Bill the job's result, or fail it, or leave it to run again; the lease is renewed
        until the result is ready."""
        try:
            result = await produce()
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
            await _stop(heartbeat)
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
        else:
            await self._discard_if_cancelled(job, result)

    async def _discard_if_cancelled(self, job: Job, result: JobResult) -> None:
        """Delete the images of a job cancelled after they were stored (a batch goes on for
        its other jobs): no result names them, so the retention sweep never would. A job
        taken over after a lapse keeps them: its new run writes the same keys."""
        try:
            if (await self.store.get(job.id)).status is not JobStatus.CANCELLED:
                return
            for image in result.images:
                await self.files.delete(image.key)
        except (StoreUnavailable, StorageUnavailable) as error:
            log.warning("job %s: the cancelled job's images stay: %s", job.id, error)

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

    async def _sources(self, job: Job) -> list[bytes]:
        """The job's stored source images, still encoded: decoding waits for the pipeline's
        thread, where the call runs anyway."""
        return [await self.files.get(key) for key in job.params.source_images]

    async def _run(self, job: Job, progress: _Progress) -> JobResult:
        stored = await self._sources(job)
        encoded = await asyncio.get_running_loop().run_in_executor(
            self._compute, self._generate_encoded, job, stored, _reporter([progress])
        )
        return await self._store(job, encoded)

    def _generate_encoded(
        self, job: Job, stored: list[bytes], on_step: Callable[[int, int], None]
    ) -> list[_Encoded]:
        """On the pipeline's thread: decode, call, encode and store in one hand-off."""
        pipeline = self.pipelines[job.model]
        sources = _decode(stored)
        images = _timed(job.model, "call", pipeline.generate, job.params, sources, on_step)
        return self._encode_all(job, images)

    def _encode_all(self, job: Job, images: list[Image.Image]) -> list[_Encoded]:
        """The job's images in its output format, on the pipeline's thread; stored there
        too when the file store can write from a thread."""
        encoded = []
        output_format = job.params.output_format
        for image in images:
            data, content_type = _timed(job.model, "encode", encode, image, output_format)
            encoded.append(_Encoded(data, content_type, image.width, image.height))
        if self._put_here is not None:
            for index, done in enumerate(encoded):
                self._put_here(_result_key(job, index), done.data)
        return encoded

    async def _generate_batch(
        self, jobs: list[Job], progress: list[_Progress]
    ) -> list[list[Image.Image]]:
        pipeline = self.pipelines[jobs[0].model]
        stored = [(job.params, await self._sources(job)) for job in jobs]
        on_step = _reporter(progress)

        def call() -> list[list[Image.Image]]:
            requests = [(params, _decode(sources)) for params, sources in stored]
            return pipeline.generate_batch(requests, on_step)

        return await asyncio.get_running_loop().run_in_executor(
            self._compute, _timed, jobs[0].model, "call", call
        )

    async def _encode_and_store(self, job: Job, images: list[Image.Image]) -> JobResult:
        """One job's share of a batched call: encoded on the pipeline's thread, then stored."""
        encoded = await asyncio.get_running_loop().run_in_executor(
            self._compute, self._encode_all, job, images
        )
        return await self._store(job, encoded)

    async def _store(self, job: Job, encoded: list[_Encoded]) -> JobResult:
        """Store the job's encoded images, unless the pipeline's thread did; what they cost."""
        params = job.params
        stored = []
        for index, image in enumerate(encoded):
            key = _result_key(job, index)
            if self._put_here is None:
                await self.files.put(key, image.data)
            stored.append(ImageFile(key, image.width, image.height, image.content_type))
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
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
            # lands as progress arrives, and the job's heartbeat then never stops.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.heartbeat_seconds):
                    await progress.changed.wait()
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


def _reporter(progress: list[_Progress]) -> Callable[[int, int], None]:
    """The pipeline thread's step callback: every job of the call moves with it."""
    loop = asyncio.get_running_loop()

    def on_step(step: int, total: int) -> None:
        # A batch goes on while any of its jobs is still held; alone, a job stops at once.
        if all(job_progress.lost.is_set() for job_progress in progress):
            raise JobStopped(f"stopped after step {step} of {total}")
        value = min(99, step * 100 // max(total, 1))
        for job_progress in progress:
            job_progress.value = value
        for job_progress in progress:
            loop.call_soon_threadsafe(job_progress.changed.set)

    return on_step


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to end, cancelling again until it does: a library can
    lose a cancellation (redis-py sends commands under Python 3.11's ``wait_for``, which
    drops one that lands as the send finishes), and a heartbeat that lives on holds its
    worker for ever."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=CANCEL_AGAIN_SECONDS)
    with contextlib.suppress(asyncio.CancelledError):
        await task


class _Encoded(NamedTuple):
    data: bytes
    content_type: str
    width: int
    height: int


def _timed(model: str, step: str, call: Callable[..., T], *args: Any) -> T:
    """``call(*args)``, its seconds observed where it runs: the pipeline's thread."""
    started = time.perf_counter()
    try:
        return call(*args)
    finally:
        metrics.PIPELINE_SECONDS.labels(model, step).observe(time.perf_counter() - started)


def _result_key(job: Job, index: int) -> str:
    return f"results/{job.id}/{index}.{job.params.output_format.value}"


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
