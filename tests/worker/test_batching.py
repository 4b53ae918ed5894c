"""Batching: compatible jobs run as one pipeline call and still finish one by one.

Tolerance, for every pipeline family the tests build (Flux and Flux Kontext from the demo,
Stable Diffusion text-to-image and image-to-image): an image made in a batch differs from
the same job made alone by at most 1 level of 8-bit colour in any channel of any pixel
(measured: 1 for Flux, 0 for the others, on CPU in float32).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tessera.runtime.demo import build_demo_pipeline
from tessera.runtime.jobs.base import Job, JobStatus, StorePolicy
from tessera.runtime.jobs.sqlite import SQLiteJobStore
from tessera.runtime.models import ModelSpec
from tessera.runtime.params import JobParams, Task
from tessera.runtime.storage import FileStore, open_storage
from tessera.runtime.worker.options import BatchOptions
from tessera.runtime.worker.pipeline import LoadedPipeline
from tessera.runtime.worker.runner import Worker
from tests.api.helpers import image_of, png_bytes
from tests.support.params import job_params
from tests.support.pipelines import build_stable_diffusion

# Most an 8-bit channel of a batched image may differ from the same job made alone.
TOLERANCE = 1

FAMILIES: dict[str, tuple[Callable[[Path], Path], bool]] = {
    "flux": (lambda path: build_demo_pipeline(path, Task.TEXT_TO_IMAGE), False),
    "flux-kontext": (lambda path: build_demo_pipeline(path, Task.IMAGE_TO_IMAGE), True),
    "stable-diffusion": (build_stable_diffusion, False),
    "stable-diffusion-img2img": (
        lambda path: build_stable_diffusion(path, image_to_image=True),
        True,
    ),
}


@pytest.fixture(scope="module")
def pipelines_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batching-pipelines")
    for name, (build, _) in FAMILIES.items():
        build(root / name)
    return root


def _difference(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def _jobs(edit: bool) -> list[tuple[JobParams, list[Image.Image]]]:
    """Three compatible jobs with their own prompts and seeds, the first with two images."""
    colours = ("red", "blue", "green")
    return [
        (
            job_params(
                prompt=prompt,
                seed=seed,
                num_images=count,
                num_inference_steps=3,
                source_images=("source.png",) if edit else (),
            ),
            [Image.new("RGB", (80, 60), colour)] if edit else [],
        )
        for prompt, seed, count, colour in zip(
            ("a kite", "a red boat at dusk", "a tree"),
            (1, 7, 2**64 - 1),
            (2, 1, 1),
            colours,
            strict=True,
        )
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_batched_call_makes_what_each_job_makes_alone(pipelines_dir: Path, family: str) -> None:
    loaded = LoadedPipeline.load(pipelines_dir / family, "cpu")
    jobs = _jobs(edit=FAMILIES[family][1])
    batched = loaded.generate_batch(jobs)
    assert [len(images) for images in batched] == [2, 1, 1]
    for (params, sources), images in zip(jobs, batched, strict=True):
        alone = loaded.generate(params, sources)
        assert [image.size for image in images] == [(params.width, params.height)] * len(alone)
        assert max(map(_difference, alone, images)) <= TOLERANCE
    # The jobs are not the same image over again: each kept its own prompt and seed.
    assert _difference(batched[0][0], batched[1][0]) > 10 * TOLERANCE
    assert _difference(batched[0][0], batched[0][1]) > 10 * TOLERANCE


def test_jobs_that_differ_in_a_call_argument_are_refused(pipelines_dir: Path) -> None:
    loaded = LoadedPipeline.load(pipelines_dir / "flux", "cpu")
    with pytest.raises(ValueError, match="num_inference_steps"):
        loaded.generate_batch(
            [(job_params(num_inference_steps=1), []), (job_params(num_inference_steps=2), [])]
        )


# -- the worker ------------------------------------------------------------------------------


class CountingPipeline:
    """The real pipeline, with each call's batch size recorded; ``hold`` keeps a call
    waiting until it is set, so a test can act while a batch is in flight."""

    def __init__(self, pipeline: Any):
        self.pipeline = pipeline
        self.calls: list[int] = []
        self.started = threading.Event()
        self.hold = threading.Event()
        self.hold.set()

    def __call__(self, **kwargs: Any) -> Any:
        prompts = kwargs["prompt"]
        self.calls.append(len(prompts) if isinstance(prompts, list) else 1)
        self.started.set()
        self.hold.wait(timeout=60)
        return self.pipeline(**kwargs)


MODEL = "demo"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteJobStore]:
    store = SQLiteJobStore(tmp_path / "jobs.db", StorePolicy(lease_seconds=0.6, max_attempts=3))
    yield store
    await store.close()


@pytest.fixture
def files(tmp_path: Path) -> FileStore:
    return open_storage(f"file://{tmp_path / 'files'}")


def _worker(
    store: SQLiteJobStore,
    files: FileStore,
    loaded: LoadedPipeline,
    worker_id: str,
    batch: BatchOptions,
) -> Worker:
    return Worker(
        store,
        files,
        {MODEL: ModelSpec(name=MODEL)},
        {MODEL: loaded},
        worker_id,
        lease_seconds=0.6,
        batch=batch,
    )


@contextlib.asynccontextmanager
async def working(worker: Worker) -> AsyncIterator[None]:
    """The worker works its queue inside the block, and finishes what it holds after it."""
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        yield
    finally:
        stop.set()
        await running


async def _finished(store: SQLiteJobStore, jobs: list[Job], timeout: float = 60) -> list[Job]:
    async def all_done() -> list[Job]:
        while True:
            current = [await store.get(job.id) for job in jobs]
            if all(job.status.finished for job in current):
                return current
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(all_done(), timeout)


@pytest.fixture
def counting(pipelines_dir: Path) -> tuple[LoadedPipeline, CountingPipeline]:
    loaded = LoadedPipeline.load(pipelines_dir / "flux", "cpu")
    counter = CountingPipeline(loaded.pipeline)
    loaded.pipeline = counter
    return loaded, counter


async def test_a_worker_runs_compatible_jobs_as_one_call_and_bills_each(
    store: SQLiteJobStore,
    files: FileStore,
    counting: tuple[LoadedPipeline, CountingPipeline],
) -> None:
    loaded, counter = counting
    small = [job_params(prompt=f"scene {n}", seed=n) for n in range(5)]
    jobs = [await store.submit(MODEL, "key_a", params) for params in small]
    odd = await store.submit(MODEL, "key_b", job_params(width=96, seed=9))
    async with working(_worker(store, files, loaded, "w", BatchOptions(max_size=4))):
        done = await _finished(store, [*jobs, odd])
    # The oldest four share a call; the fifth waits for the next one, after the odd job,
    # which came earlier and cannot join them.
    assert counter.calls == [4, 1, 1]
    assert all(job.status is JobStatus.COMPLETED for job in done)
    keys = [image.key for job in done for image in job.result.images]  # type: ignore[union-attr]
    assert len(set(keys)) == 6
    pictures = [image_of(await files.get(key)) for key in keys[:5]]
    assert all(_difference(pictures[0], other) > 0 for other in pictures[1:])
    records = (await store.usage()).records
    assert sorted((r.job_id, r.key_id, r.patches) for r in records) == sorted(
        [(job.id, "key_a", 12) for job in jobs] + [(odd.id, "key_b", 18)]
    )


async def test_a_batch_waits_max_wait_ms_for_jobs_to_join(
    store: SQLiteJobStore,
    files: FileStore,
    counting: tuple[LoadedPipeline, CountingPipeline],
) -> None:
    loaded, counter = counting
    worker = _worker(store, files, loaded, "w", BatchOptions(max_size=3, max_wait_ms=2000))
    async with working(worker):
        first = await store.submit(MODEL, "k", job_params(seed=1))
        await asyncio.sleep(0.2)
        later = [await store.submit(MODEL, "k", job_params(seed=s)) for s in (2, 3)]
        await _finished(store, [first, *later])
    assert counter.calls == [3]


async def test_one_bad_job_fails_alone(
    store: SQLiteJobStore, files: FileStore, pipelines_dir: Path
) -> None:
    loaded = LoadedPipeline.load(pipelines_dir / "flux-kontext", "cpu")
    counter = CountingPipeline(loaded.pipeline)
    loaded.pipeline = counter
    source = png_bytes(64, 48, "red")
    jobs = []
    for n in range(3):
        await files.put(f"sources/{n}.png", source)
        params = job_params(seed=n, source_images=(f"sources/{n}.png",))
        jobs.append(await store.submit(MODEL, "k", params))
    # The middle job's source is gone before it runs (as if its retention had run out).
    await files.delete("sources/1.png")
    async with working(_worker(store, files, loaded, "w", BatchOptions(max_size=3))):
        done = await _finished(store, jobs)
    assert [job.status for job in done] == [
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.COMPLETED,
    ]
    assert done[1].error is not None and f"job id {jobs[1].id}" in done[1].error
    assert sorted(r.job_id for r in (await store.usage()).records) == [jobs[0].id, jobs[2].id]
    # The batch never reached the pipeline; the two good jobs then ran one by one.
    assert counter.calls == [1, 1]


async def _in_flight(
    store: SQLiteJobStore, counter: CountingPipeline, jobs: list[Job]
) -> list[Job]:
    """The jobs as the store has them once the pipeline's held call has started."""
    await asyncio.to_thread(counter.started.wait, 30)
    return [await store.get(job.id) for job in jobs]


async def test_a_crashed_batch_returns_every_job_and_bills_each_once(
    store: SQLiteJobStore,
    files: FileStore,
    counting: tuple[LoadedPipeline, CountingPipeline],
    pipelines_dir: Path,
) -> None:
    loaded, counter = counting
    jobs = [await store.submit(MODEL, "k", job_params(seed=n)) for n in range(3)]
    counter.hold.clear()
    crashed = _worker(store, files, loaded, "crashed", BatchOptions(max_size=4))
    doomed = asyncio.create_task(crashed.run(asyncio.Event()))
    leased = await _in_flight(store, counter, jobs)
    assert {(job.status, job.worker_id) for job in leased} == {(JobStatus.IN_PROGRESS, "crashed")}
    # The worker dies with the batch in flight: nothing renews its leases any more.
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    survivor = LoadedPipeline.load(pipelines_dir / "flux", "cpu")
    async with working(_worker(store, files, survivor, "survivor", BatchOptions(max_size=4))):
        done = await _finished(store, jobs)
    counter.hold.set()  # the dead worker's call finishes; its results go nowhere
    assert [(job.status, job.worker_id, job.attempts) for job in done] == [
        (JobStatus.COMPLETED, "survivor", 2)
    ] * 3
    assert sorted(r.job_id for r in (await store.usage()).records) == [job.id for job in jobs]


async def test_a_job_cancelled_mid_batch_is_not_billed_and_the_others_are(
    store: SQLiteJobStore,
    files: FileStore,
    counting: tuple[LoadedPipeline, CountingPipeline],
    tmp_path: Path,
) -> None:
    loaded, counter = counting
    jobs = [await store.submit(MODEL, "k", job_params(seed=n)) for n in range(3)]
    counter.hold.clear()
    async with working(_worker(store, files, loaded, "w", BatchOptions(max_size=4))):
        running = await _in_flight(store, counter, jobs)
        assert {job.status for job in running} == {JobStatus.IN_PROGRESS}
        await store.cancel(jobs[1].id, "cancelled by its client")
        counter.hold.set()  # the call goes on: two of its jobs are still held
        done = await _finished(store, jobs)
    assert counter.calls == [3], "one call, never run again"
    assert [job.status for job in done] == [
        JobStatus.COMPLETED,
        JobStatus.CANCELLED,
        JobStatus.COMPLETED,
    ]
    assert done[1].result is None
    records = (await store.usage()).records
    assert sorted(r.job_id for r in records) == [jobs[0].id, jobs[2].id]
    # Nothing of the cancelled job stays behind in storage: no result names its files, so
    # the retention sweep could never find them.
    stored = {path.parent.name for path in (tmp_path / "files" / "results").rglob("*.png")}
    assert stored == {str(jobs[0].id), str(jobs[2].id)}
