"""Image work never blocks the event loop: the loop-lag probe is asyncio's own debug mode,
which reports every callback that held the loop longer than a threshold, so the tests count
reports instead of timing anything. Each probe is shown to catch the same work run on the
loop, so a zero count means the work really ran elsewhere. And it runs in few hand-offs:
a loop that counts what it hands to threads shows one to the pipeline's thread per job."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy
import pytest
from PIL import Image

from tessera.runtime.jobs.base import JobResult
from tessera.runtime.jobs.sqlite import SQLiteJobStore
from tessera.runtime.keys import ApiKey
from tessera.runtime.models import ModelSpec
from tessera.runtime.params import OutputFormat
from tessera.runtime.sources import SourceResolver, prepare_source
from tessera.runtime.storage import LocalFileStore, UrlSigner
from tessera.runtime.worker.pipeline import LoadedPipeline, encode
from tessera.runtime.worker.runner import Worker
from tests.support.hops import HopCountingLoop
from tests.support.params import job_params

# Long enough that scheduling noise on a loaded machine stays under it; far shorter than
# the pipeline call and the large decode below.
SLOW_CALLBACK_SECONDS = 0.1


class _SlowCallbacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.reports: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Executing"):
            self.reports.append(record.getMessage())


@contextmanager
def loop_lag_probe() -> Iterator[tuple[asyncio.Runner, list[str]]]:
    """A debug event loop, and the callbacks that held it past the threshold."""
    handler = _SlowCallbacks()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        with asyncio.Runner(debug=True) as runner:
            runner.get_loop().slow_callback_duration = SLOW_CALLBACK_SECONDS
            yield runner, handler.reports
    finally:
        logger.removeHandler(handler)


def slow_callbacks(make: Callable[[], Coroutine[Any, Any, Any]]) -> list[str]:
    with loop_lag_probe() as (runner, reports):
        runner.run(make())
    return reports


@pytest.fixture(scope="module")
def demo_pipeline(demo_models_dir: Path) -> LoadedPipeline:
    return LoadedPipeline.load(demo_models_dir / "tessera-demo", "cpu")


def test_png_encoding_keeps_every_pixel() -> None:
    pixels = numpy.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=numpy.uint8)
    data, content_type = encode(Image.fromarray(pixels), OutputFormat.PNG)
    decoded = Image.open(io.BytesIO(data))
    assert (content_type, decoded.format) == ("image/png", "PNG")
    assert numpy.array_equal(numpy.asarray(decoded), pixels)


def test_a_job_runs_without_blocking_the_worker_loop(
    tmp_path: Path, demo_pipeline: LoadedPipeline
) -> None:
    params = job_params(width=512, height=512, num_images=2)

    files = LocalFileStore(tmp_path / "files")

    async def one_job() -> JobResult:
        store = SQLiteJobStore(tmp_path / "jobs.db")
        worker = Worker(
            store, files, {"demo": ModelSpec(name="demo")}, {"demo": demo_pipeline}, "w1"
        )
        await store.submit("demo", "key", params)
        job = await store.lease(["demo"], "w1")
        assert job is not None
        await worker.process(job)
        assert (await store.get(job.id)).result is not None

    async def the_same_work_on_the_loop() -> None:
        for image in demo_pipeline.generate(params):
            encode(image, OutputFormat.PNG)

    assert slow_callbacks(the_same_work_on_the_loop)  # the probe sees it
    assert slow_callbacks(one_job) == []


def test_a_large_source_is_checked_without_blocking_the_api_loop(tmp_path: Path) -> None:
    pixels = numpy.random.default_rng(5).integers(0, 256, (2048, 2048, 3), dtype=numpy.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    source = buffer.getvalue()
    files = LocalFileStore(tmp_path)
    resolver = SourceResolver(files, UrlSigner(b"s" * 32, "http://127.0.0.1:1"))
    target = (1024, 1024)

    async def store_and_read_back() -> None:
        await files.put(f"uploads/k/{'upload-' + 'a' * 16}", source)
        [key] = await resolver.store_inputs(ApiKey("k"), ("upload-" + "a" * 16,), target)
        assert Image.open(io.BytesIO(await files.get(key))).size == target

    async def the_same_work_on_the_loop() -> None:
        prepare_source(source, resolver.limits, "image_url", target)

    assert slow_callbacks(the_same_work_on_the_loop)
    assert slow_callbacks(store_and_read_back) == []


@pytest.mark.parametrize("edit", [False, True], ids=["generation", "edit"])
def test_a_job_hands_its_image_work_to_the_pipeline_thread_once(
    tmp_path: Path, demo_models_dir: Path, edit: bool
) -> None:
    """Decoding the source, the call, encoding and storing both images: one hand-off, not
    six; then one per source file read. The store's own hops (lease renewals vary) are left
    out."""
    name = "tessera-demo-edit" if edit else "tessera-demo"
    pipeline = LoadedPipeline.load(demo_models_dir / name, "cpu")
    source = io.BytesIO()
    Image.new("RGB", (64, 64), "teal").save(source, format="PNG")
    params = job_params(
        width=64, height=64, num_images=2, source_images=("sources/1.png",) if edit else ()
    )

    files = LocalFileStore(tmp_path / "files")

    async def one_job() -> JobResult:
        store = SQLiteJobStore(tmp_path / "jobs.db")
        # Written by another process (the gateway's), so the worker reads it from the disk.
        await LocalFileStore(tmp_path / "files").put("sources/1.png", source.getvalue())
        worker = Worker(store, files, {name: ModelSpec(name=name)}, {name: pipeline}, "w1")
        job = await store.submit(name, "key", params)
        leased = await store.lease([name], "w1")
        assert leased is not None
        loop.hops.clear()
        await worker.process(leased)
        result = (await store.get(job.id)).result
        assert result is not None
        await store.close()
        return result

    with asyncio.Runner(loop_factory=HopCountingLoop) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, HopCountingLoop)
        result = runner.run(one_job())
    store_hops = [hop for hop in loop.hops if hop.startswith("SQLiteJobStore.")]
    assert store_hops  # the counter sees the store's hops too
    for hop in store_hops:
        del loop.hops[hop]
    source_reads = {"LocalFileStore._get": 1} if edit else {}
    assert loop.hops == {"Worker._generate_encoded": 1, **source_reads}
    # Stored whole, where the result says, by the pipeline's thread.
    for image in result.images:
        assert Image.open(files.path(image.key)).size == (image.width, image.height) == (64, 64)
