"""What the API adds on top of the pipeline: prints figures, asserts nothing.

1. Encoders side by side at equal pixels (lossless ones checked pixel for pixel): ms, bytes,
   and what each costs per image as GPU time (encoding runs on the pipeline's thread) plus
   egress, at stated prices. The worker's choice is marked.
2. The demo pipeline called directly in a child process, 512x512, N times: median seconds.
   Not in this process: on a busy machine the kernel queues a thread that just ran flat out
   behind the others, which charged the client's next submit with the direct call's burst.
3. The same request through a real `tessera serve --demo` over loopback (submit, long-poll
   until complete, download the image), N times in a row: median seconds.
4. The limit (direct call + the worker's encoding), the API's own share beyond it, and
   where each millisecond goes: submit, queue wake, the run inside the server beyond the
   limit, the hand-off of the completion to the long poll, the download.
5. Latency of GET /v1/images/tasks/{id} while the worker is busy: p50 and p99.
6. The same request with the worker idle, back to back and after 50 ms of quiet: a request
   that finds the machine idle pays for waking the server's threads, which is most of what
   the API adds to a job on a small CPU machine.

Usage: .venv/bin/python bench/serving_overhead.py [--jobs 50] [--steps 4]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import fpng
import httpx
import imagecodecs
import numpy
from PIL import Image, ImageFilter

# The repository root, for tests.support; bench/ itself, for common.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from common import demo_params

from tessera.runtime.demo import ensure_demo_pipeline
from tessera.runtime.params import OutputFormat, Task
from tessera.runtime.worker.pipeline import LoadedPipeline, encode
from tests.support.server import ServerProcess

# What a millisecond of encoding and a byte of download cost: an H100 SXM hour, and a
# typical cloud's internet egress.
GPU_DOLLARS_PER_HOUR = 3.20
EGRESS_DOLLARS_PER_GB = 0.09


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _pillow(name: str, **options: Any) -> Callable[[Image.Image], bytes]:
    def save(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=name, **options)
        return buffer.getvalue()

    return save


ENCODERS: dict[str, tuple[Callable[[Image.Image], bytes], bool]] = {
    # name: (encoder, lossless)
    "PNG, Pillow level 6 (its default)": (_pillow("PNG"), True),
    "PNG, Pillow level 1": (_pillow("PNG", compress_level=1), True),
    "PNG, imagecodecs level 1 RLE SUB": (
        lambda image: imagecodecs.png_encode(numpy.asarray(image), level=1, strategy=3, filter=16),
        True,
    ),
    "PNG, fpng": (fpng.from_pil, True),
    "PNG, the worker's": (lambda image: encode(image, OutputFormat.PNG)[0], True),
    "JPEG q95, Pillow (libjpeg-turbo)": (_pillow("JPEG", quality=95), False),
    "WebP q95, Pillow method 4 (default)": (_pillow("WEBP", quality=95), False),
    "WebP q95, the worker's (method 0)": (
        lambda image: encode(image, OutputFormat.WEBP)[0],
        False,
    ),
}


def smooth_image(size: int) -> Image.Image:
    """A stand-in for a real generation (no model weights here): smooth colour fields with
    a little grain, which compress like photographs rather than like the demo's noise."""
    y, x = numpy.mgrid[0:size, 0:size] / size
    fields = numpy.stack(
        [numpy.sin(6 * x + 2 * y) / 2 + 0.5, numpy.cos(4 * y) / 2 + 0.5, x * y], -1
    )
    grain = numpy.random.default_rng(0).normal(0, 3, (size, size, 3))
    pixels = (fields * 220 + grain).clip(0, 255).astype(numpy.uint8)
    return Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(1))


def compare_encoders(images: dict[str, Image.Image], rounds: int) -> None:
    """Round-robin over the encoders, so each sees the same machine noise."""
    for label, image in images.items():
        times: dict[str, list[float]] = {name: [] for name in ENCODERS}
        sizes: dict[str, int] = {}
        for _ in range(rounds):
            for name, (save, lossless) in ENCODERS.items():
                started = time.perf_counter()
                data = save(image)
                times[name].append(time.perf_counter() - started)
                sizes[name] = len(data)
                if lossless:
                    decoded = numpy.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                    assert numpy.array_equal(decoded, numpy.asarray(image)), name
        print(
            f"encoders, {label} {image.width}x{image.height}, median of {rounds}"
            f" (cost: ${GPU_DOLLARS_PER_HOUR:.2f}/GPU-hour"
            f" + ${EGRESS_DOLLARS_PER_GB:.2f}/GB egress):"
        )
        for name in ENCODERS:
            ms = statistics.median(times[name]) * 1000
            dollars = (
                ms / 3_600_000 * GPU_DOLLARS_PER_HOUR + sizes[name] / 1e9 * EGRESS_DOLLARS_PER_GB
            )
            print(
                f"  {name:38s} {ms:7.1f} ms {sizes[name] / 1024:7.0f} KiB"
                f"  ${dollars * 1e6:6.1f} per million images"
            )


@dataclass
class ServedJob:
    """One job's path, in seconds: the client's clock around the server's timestamps."""

    total: float
    submit: float
    queued: float  # created -> a worker started it
    running: float  # started -> finished: decode, pipeline, encode, store writes
    handed_off: float  # finished -> the long poll answered the client
    download: float


def _seconds(moment: str) -> float:
    return datetime.fromisoformat(moment + "+00:00").timestamp()


def one_served_job(client: httpx.Client, body: dict[str, Any]) -> ServedJob:
    """Submit, long-poll until complete, download: the reference client's whole path.

    The download reuses the client's connection pool, as a real client would: a fresh
    ``httpx.get`` builds a TLS context first, about 50 ms of the client's own time.
    """
    started = time.perf_counter()
    job_id = client.post("/images/generations", json=body).json()["job_id"]
    submitted = time.perf_counter()
    while True:
        task = client.get(f"/images/tasks/{job_id}", params={"wait": 30}).json()
        if task["status"] in ("completed", "failed"):
            break
    seen, seen_wall = time.perf_counter(), time.time()
    assert task["status"] == "completed", task
    client.get(task["result"]["data"][0]["url"]).raise_for_status()
    done = time.perf_counter()
    created, began, finished = (
        _seconds(task[name]) for name in ("created_at", "started_at", "finished_at")
    )
    return ServedJob(
        total=done - started,
        submit=submitted - started,
        queued=began - created,
        running=finished - began,
        handed_off=seen_wall - finished,
        download=done - seen,
    )


# The child process's pipeline, for the direct calls.
_direct: LoadedPipeline | None = None


def _load_direct(path: str) -> None:
    global _direct
    _direct = LoadedPipeline.load(Path(path), "cpu")


def _direct_call(steps: int, seed: int) -> tuple[float, float]:
    """Seconds of one direct call and of the worker's encoding of its image."""
    assert _direct is not None
    started = time.perf_counter()
    [image] = _direct.generate(demo_params(512, steps, seed))
    called = time.perf_counter()
    encode(image, OutputFormat.PNG)
    return called - started, time.perf_counter() - called


def paired_runs(
    direct: ProcessPoolExecutor, server: ServerProcess, jobs: int, steps: int
) -> tuple[list[float], list[float], list[ServedJob]]:
    """Direct call, encode and served job, interleaved, so both see the same machine noise."""
    body: dict[str, Any] = {
        "model": "tessera-demo",
        "prompt": "a lighthouse at dusk",
        "image_size": "square",
        "num_inference_steps": steps,
    }
    calls: list[float] = []
    encodes: list[float] = []
    served: list[ServedJob] = []
    with server.client() as client:
        one_served_job(client, {**body, "seed": 0})  # warm-up, both sides
        direct.submit(_direct_call, steps, 0).result()
        for seed in range(1, jobs + 1):
            call, encoded = direct.submit(_direct_call, steps, seed).result()
            calls.append(call)
            encodes.append(encoded)
            served.append(one_served_job(client, {**body, "seed": seed}))
    return calls, encodes, served


def poll_latency(server: ServerProcess, seconds: float, steps: int) -> list[float]:
    """Hammer the task endpoint while a backlog keeps the worker busy."""
    body = {"model": "tessera-demo", "prompt": "busy", "image_size": "square_hd"}
    body["num_inference_steps"] = steps  # type: ignore[assignment]
    latencies: list[float] = []
    with server.client() as client:
        job_ids = [client.post("/images/generations", json=body).json()["job_id"] for _ in range(6)]
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            started = time.perf_counter()
            client.get(f"/images/tasks/{job_ids[-1]}").raise_for_status()
            latencies.append(time.perf_counter() - started)
    return latencies


def idle_latency(server: ServerProcess, job_id: int, gap: float, requests: int = 60) -> float:
    """Median milliseconds of one task request, ``gap`` seconds after the previous one."""
    latencies = []
    with server.client() as client:
        for _ in range(requests):
            started = time.perf_counter()
            client.get(f"/images/tasks/{job_id}").raise_for_status()
            latencies.append(time.perf_counter() - started)
            time.sleep(gap)
    return statistics.median(latencies[5:]) * 1000


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def report(calls: list[float], encodes: list[float], served: list[ServedJob]) -> None:
    """The limit, the API's share beyond it, and where that share goes, all medians."""
    limit = [call + encoded for call, encoded in zip(calls, encodes, strict=True)]
    share = [job.total - floor for job, floor in zip(served, limit, strict=True)]
    beyond = [job.running - floor for job, floor in zip(served, limit, strict=True)]
    rows = [
        ("direct pipeline call", median_ms(calls)),
        ("+ the worker's PNG encoding", median_ms(encodes)),
        ("= the limit", median_ms(limit)),
        ("through the API (submit..download)", median_ms([job.total for job in served])),
        ("the API's own share (median of pairs)", median_ms(share)),
        ("  submit (POST until job_id)", median_ms([job.submit for job in served])),
        ("  queue wake (created -> started)", median_ms([job.queued for job in served])),
        ("  run in the server beyond the limit", median_ms(beyond)),
        ("  hand-off (finished -> long poll answers)", median_ms([j.handed_off for j in served])),
        ("  download (GET the signed URL)", median_ms([job.download for job in served])),
    ]
    for label, ms in rows:
        print(f"{label:44s} {ms:8.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--poll-seconds", type=float, default=10)
    parser.add_argument("--encoder-rounds", type=int, default=9)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as scratch:
        data = Path(scratch)
        for name, task in (
            ("tessera-demo", Task.TEXT_TO_IMAGE),
            ("tessera-demo-edit", Task.IMAGE_TO_IMAGE),
        ):
            ensure_demo_pipeline(data / "models" / name, task)
        pipeline = LoadedPipeline.load(data / "models" / "tessera-demo", "cpu")
        [demo_image] = pipeline.generate(demo_params(1024, args.steps))
        compare_encoders(
            {"demo (noise-like)": demo_image, "smooth stand-in": smooth_image(1024)},
            args.encoder_rounds,
        )
        server = ServerProcess(data).start()
        direct = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_load_direct,
            initargs=(str(data / "models" / "tessera-demo"),),
        )
        try:
            calls, encodes, served = paired_runs(direct, server, args.jobs, args.steps)
            print(f"jobs: {args.jobs} x 512x512, {args.steps} steps, demo pipeline, interleaved")
            report(calls, encodes, served)  # printed now: the busy phase below is long
            busy = poll_latency(server, args.poll_seconds, 20)
            with server.client() as client:  # the backlog must drain first
                one_served_job(
                    client, {"model": "tessera-demo", "prompt": "last", "image_size": "square"}
                )
            quiet = {gap: idle_latency(server, 1, gap) for gap in (0.0, 0.05)}
        finally:
            direct.shutdown()
            server.kill()

    print(
        f"task endpoint while busy ({len(busy)} polls): p50 {percentile(busy, 0.5) * 1000:.2f} ms,"
        f" p99 {percentile(busy, 0.99) * 1000:.2f} ms"
    )
    print(
        f"task endpoint, worker idle: back to back {quiet[0.0]:.2f} ms,"
        f" after 50 ms quiet {quiet[0.05]:.2f} ms"
    )


if __name__ == "__main__":
    main()
