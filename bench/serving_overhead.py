"""What the API adds on top of the pipeline: prints figures, asserts nothing.

1. Encoders side by side at equal pixels (lossless ones checked pixel for pixel): ms, bytes,
   and what each costs per image as GPU time (encoding runs on the pipeline's thread) plus
   egress, at stated prices. The worker's choice is marked.
2. The demo pipeline called directly in a child process, 512x512, N times: median seconds.
   Not in this process: on a busy machine the kernel queues a thread that just ran flat out
   behind the others, which charged the client's next submit with the direct call's burst.
3. The same request through a real `tessera serve --demo` over loopback (submit, long-poll
   until complete, download the image), N times in a row: median seconds.
4. The limit (direct call + the worker's encoding), and the API's own share: the job's
   total less the server's own pipeline call and encoding (its ``tessera_pipeline_seconds``,
   read between jobs), split along the job's critical path on the wall clock client and
   server share: request in, queue wake, the worker beyond the call and encoding, the
   completion's hand-off to the long poll, the download. Each step runs from one moment
   to the next, so they add up to the share and none counts twice. ``--baseline`` runs
   another checkout's server on the same jobs, interleaved, in a column beside; and
   ``bench/bare_server.py``, the thinnest server of those three requests (the same call
   and encoding on a thread, canned JSON, no store), whose share is this machine's floor
   for any server.
5. Latency of GET /v1/images/tasks/{id} while the worker is busy: p50 and p99.
6. The same request with the worker idle, back to back and after 50 ms of quiet: a request
   that finds the machine idle pays for waking the server's threads, which is most of what
   the API adds to a job on a small CPU machine. And an fsync here, which a submit and a
   completion each wait for: with these, the floor under the API's share.

Usage: .venv/bin/python bench/serving_overhead.py [--jobs 50] [--steps 4] [--baseline PYTHON]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import multiprocessing
import os
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

import aiohttp
import fpng
import httpx
import imagecodecs
import numpy
from PIL import Image, ImageFilter
from prometheus_client.parser import text_string_to_metric_families

# The repository root, for tests.support; bench/ itself, for common.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from bare_http import BareProcess
from common import demo_params

from tessera.runtime.demo import ensure_demo_pipeline
from tessera.runtime.params import OutputFormat, Task
from tessera.runtime.worker.pipeline import LoadedPipeline, encode
from tests.support.server import ServerProcess, free_port

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
    """One job's path on the wall clock that client and server share (one machine): the
    client's moments around the server's task timestamps, and the server's own seconds in
    the pipeline call and the encoding (its ``tessera_pipeline_seconds``; None from a
    server that does not export them)."""

    sent: float  # the client sends the POST
    accepted: float  # the client has the job_id
    created: float  # the server wrote the job
    started: float  # a worker took it
    finished: float  # the worker's completion stamped it finished
    answered: float  # the client has the completed task from its long poll
    downloaded: float  # the client has the image
    call: float | None
    encoding: float | None
    client_cpu: float  # the client's own CPU seconds in all that (building, parsing)

    @property
    def total(self) -> float:
        return self.downloaded - self.sent

    def steps(self) -> dict[str, float | None]:
        """The job's critical path, step by step: each moment to the next, so the steps add
        up to the total and none counts twice. The client's own ``accepted`` runs beside the
        queue wake, off that path."""
        in_worker = (
            None
            if self.call is None or self.encoding is None
            else self.finished - self.started - self.call - self.encoding
        )
        return {
            "request in (POST sent -> job written)": self.created - self.sent,
            "queue wake (written -> a worker took it)": self.started - self.created,
            "worker (took -> finished) beyond call+encode": in_worker,
            "completion (finished -> long poll answered)": self.answered - self.finished,
            "download (GET the signed URL)": self.downloaded - self.answered,
        }

    def share(self) -> float | None:
        """What the API adds to the job: its total less the server's own pipeline call and
        encoding (the sum of the steps)."""
        if self.call is None or self.encoding is None:
            return None
        return self.total - self.call - self.encoding


def _seconds(moment: str) -> float:
    return datetime.fromisoformat(moment + "+00:00").timestamp()


class PipelineClock:
    """The server's ``tessera_pipeline_seconds`` sums, read between jobs: each read's
    growth is the seconds of the job (or jobs) since the last."""

    def __init__(self, server: ServerProcess | BareProcess):
        self.urls = server.metrics_urls
        self.last = self._sums()

    def _sums(self) -> dict[str, float]:
        sums: dict[str, float] = {}
        for url in self.urls:
            for family in text_string_to_metric_families(httpx.get(url).text):
                for sample in family.samples:
                    if sample.name == "tessera_pipeline_seconds_sum":
                        step = sample.labels["step"]
                        sums[step] = sums.get(step, 0.0) + sample.value
        return sums

    def since_last(self) -> tuple[float | None, float | None]:
        """Seconds in pipeline calls and in encoding since the last read (None: not exported)."""
        sums = self._sums()
        grown = {step: sums[step] - self.last.get(step, 0.0) for step in sums}
        self.last = sums
        return grown.get("call"), grown.get("encode")


@dataclass
class ClientPath:
    """One job's path as its client saw it: the moments, the client's own CPU seconds and
    the completed task."""

    sent: float
    accepted: float
    answered: float
    downloaded: float
    cpu: float
    task: dict[str, Any]


def httpx_path(client: httpx.Client, body: dict[str, Any]) -> ClientPath:
    """Submit, long-poll until complete, download, by httpx: what Hyperstack's clients
    (``requests``, httpx) do, and what they pay for it in CPU.

    The download reuses the client's connection pool, as a real client would: a fresh
    ``httpx.get`` builds a TLS context first, about 50 ms of the client's own time.
    """
    cpu, sent = time.thread_time(), time.time()
    job_id = client.post("/images/generations", json=body).json()["job_id"]
    accepted = time.time()
    while True:
        task = client.get(f"/images/tasks/{job_id}", params={"wait": 30}).json()
        if task["status"] in ("completed", "failed"):
            break
    answered = time.time()
    assert task["status"] == "completed", task
    client.get(task["result"]["data"][0]["url"]).raise_for_status()
    downloaded = time.time()
    return ClientPath(sent, accepted, answered, downloaded, time.thread_time() - cpu, task)


async def aiohttp_path(
    session: aiohttp.ClientSession, api_url: str, body: dict[str, Any]
) -> ClientPath:
    """The same path by aiohttp (its HTTP parser in C): half of httpx's CPU per job here
    (docs/benchmarks.md), so the figures measure the server more than the client."""
    cpu, sent = time.thread_time(), time.time()
    async with session.post(f"{api_url}/images/generations", json=body) as response:
        job_id = (await response.json())["job_id"]
    accepted = time.time()
    while True:
        async with session.get(f"{api_url}/images/tasks/{job_id}?wait=30") as response:
            task = await response.json()
        if task["status"] in ("completed", "failed"):
            break
    answered = time.time()
    assert task["status"] == "completed", task
    async with session.get(task["result"]["data"][0]["url"]) as response:
        response.raise_for_status()
        await response.read()
    downloaded = time.time()
    return ClientPath(sent, accepted, answered, downloaded, time.thread_time() - cpu, task)


class BenchClient:
    """One keep-alive connection pool to one server, by ``kind``: aiohttp or httpx."""

    KINDS = ("aiohttp", "httpx")

    def __init__(self, server: ServerProcess | BareProcess, kind: str):
        self.kind = kind
        self.api_url = server.api_url
        self._httpx = server.client() if kind == "httpx" else None
        self._runner = asyncio.Runner() if kind == "aiohttp" else None
        self._session: aiohttp.ClientSession | None = None
        if self._runner is not None:
            self._session = self._runner.run(self._open(server.api_key))

    @staticmethod
    async def _open(api_key: str) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            headers={"api_key": api_key},
            # Under uvicorn's 5 s keep-alive: aiohttp's own 15 s would reuse a connection
            # the server has closed after a quiet spell, and the next POST fails.
            connector=aiohttp.TCPConnector(limit=1, keepalive_timeout=2),
        )

    def path(self, body: dict[str, Any]) -> ClientPath:
        if self._httpx is not None:
            return httpx_path(self._httpx, body)
        assert self._runner is not None
        assert self._session is not None
        return self._runner.run(aiohttp_path(self._session, self.api_url, body))

    def close(self) -> None:
        if self._httpx is not None:
            self._httpx.close()
        if self._runner is not None:
            assert self._session is not None
            self._runner.run(self._session.close())
            self._runner.close()


def one_served_job(
    client: BenchClient, body: dict[str, Any], clock: PipelineClock | None = None
) -> ServedJob:
    """Submit, long-poll until complete, download: the reference client's whole path."""
    path = client.path(body)
    call, encoding = (None, None) if clock is None else clock.since_last()
    created, started, finished = (
        _seconds(path.task[name]) for name in ("created_at", "started_at", "finished_at")
    )
    return ServedJob(
        path.sent,
        path.accepted,
        created,
        started,
        finished,
        path.answered,
        path.downloaded,
        call,
        encoding,
        path.cpu,
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
    direct: ProcessPoolExecutor,
    servers: dict[str, ServerProcess | BareProcess],
    jobs: int,
    steps: int,
    client_kind: str,
) -> tuple[list[float], list[float], dict[str, list[ServedJob]]]:
    """Direct call, encode and a job on each server, interleaved (the servers' order turning
    round), so all see the same machine noise."""
    body: dict[str, Any] = {
        "model": "tessera-demo",
        "prompt": "a lighthouse at dusk",
        "image_size": "square",
        "num_inference_steps": steps,
    }
    calls: list[float] = []
    encodes: list[float] = []
    served: dict[str, list[ServedJob]] = {label: [] for label in servers}
    with contextlib.ExitStack() as stack:
        clients = {}
        for label, server in servers.items():
            clients[label] = BenchClient(server, client_kind)
            stack.callback(clients[label].close)
        for client in clients.values():
            one_served_job(client, {**body, "seed": 0})  # warm-up, every side
        direct.submit(_direct_call, steps, 0).result()
        clocks = {label: PipelineClock(server) for label, server in servers.items()}
        order = list(servers)
        for seed in range(1, jobs + 1):
            call, encoded = direct.submit(_direct_call, steps, seed).result()
            calls.append(call)
            encodes.append(encoded)
            for label in order:
                job = one_served_job(clients[label], {**body, "seed": seed}, clocks[label])
                served[label].append(job)
            order = order[1:] + order[:1]
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


def fsync_ms(folder: Path, rounds: int = 50) -> float:
    """Median milliseconds of one small write made durable: what a submit and a completion
    each wait for in SQLite's commit (synchronous=FULL)."""
    times = []
    with (folder / "fsync-probe").open("wb") as file:
        for _ in range(rounds):
            started = time.perf_counter()
            file.write(b"x" * 4096)
            file.flush()
            os.fsync(file.fileno())
            times.append(time.perf_counter() - started)
    return median_ms(times)


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def median_or_none(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return median_ms(known) if len(known) == len(values) else None


def report(calls: list[float], encodes: list[float], served: dict[str, list[ServedJob]]) -> None:
    """The limit, then per server its share beyond it and where that share goes, all
    medians (the steps' medians need not add up to the share's)."""
    limit = [call + encoded for call, encoded in zip(calls, encodes, strict=True)]
    for label, ms in (
        ("direct pipeline call (child process)", median_ms(calls)),
        ("+ the worker's PNG encoding there", median_ms(encodes)),
        ("= the limit", median_ms(limit)),
    ):
        print(f"{label:56s} {ms:10.2f} ms")
    rows: dict[str, list[float | None]] = {}
    for jobs in served.values():
        columns: dict[str, list[float | None]] = {
            "through the API (POST sent -> image downloaded)": [job.total for job in jobs],
            "  less the limit (median of pairs; pipeline noise)": [
                job.total - floor for job, floor in zip(jobs, limit, strict=True)
            ],
            "  the server's own pipeline call": [job.call for job in jobs],
            "  the server's own encoding": [job.encoding for job in jobs],
            "the API's own share (total - the server's call+encode)": [job.share() for job in jobs],
        }
        for step in jobs[0].steps():
            columns[f"  {step}"] = [job.steps()[step] for job in jobs]
        columns["(beside it: POST until the client has the job_id)"] = [
            job.accepted - job.sent for job in jobs
        ]
        columns["(in the steps: the client's own CPU)"] = [job.client_cpu for job in jobs]
        columns["(the share less that CPU: the server's, at least)"] = [
            None if share is None else share - job.client_cpu
            for job in jobs
            for share in [job.share()]
        ]
        for row, values in columns.items():
            rows.setdefault(row, []).append(median_or_none(values))
    print(f"{'median, ms':56s} " + " ".join(f"{label:>10s}" for label in served))
    for row, figures in rows.items():
        cells = " ".join("n/a".rjust(10) if ms is None else f"{ms:10.2f}" for ms in figures)
        print(f"{row:56s} {cells}")
    for label, jobs in served.items():
        shares = [share for job in jobs if (share := job.share()) is not None]
        if len(shares) < len(jobs):
            continue
        means = [
            statistics.mean(job.steps()[step] or 0.0 for job in jobs) * 1000
            for step in jobs[0].steps()
        ]
        print(
            f"means, {label} (they add up): share {statistics.mean(shares) * 1000:.2f} ms"
            f" = {' + '.join(f'{ms:.2f}' for ms in means)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--poll-seconds", type=float, default=10)
    parser.add_argument("--encoder-rounds", type=int, default=9)
    parser.add_argument(
        "--baseline",
        metavar="PYTHON",
        help="another checkout's interpreter (/work/main/.venv/bin/python): its server runs"
        " the same jobs, interleaved, in a column of its own",
    )
    parser.add_argument(
        "--client",
        choices=BenchClient.KINDS,
        default="aiohttp",
        help="the jobs' HTTP client: aiohttp (C parser, the server's figures) or httpx"
        " (what Hyperstack's Python clients pay; about twice aiohttp's CPU per job)",
    )
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
        server = ServerProcess(data, metrics_port=free_port()).start()
        servers: dict[str, ServerProcess | BareProcess] = {"this": server}
        if args.baseline:
            (data / "baseline").mkdir()
            (data / "baseline" / "models").symlink_to(data / "models")
            servers["baseline"] = ServerProcess(
                data / "baseline", metrics_port=free_port(), python=args.baseline
            ).start()
        model = str(data / "models" / "tessera-demo")
        servers["bare"] = BareProcess("bare_server.py", ("--model", model), data).start()
        direct = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_load_direct,
            initargs=(str(data / "models" / "tessera-demo"),),
        )
        try:
            calls, encodes, served = paired_runs(
                direct, servers, args.jobs, args.steps, args.client
            )
            print(
                f"jobs: {args.jobs} x 512x512, {args.steps} steps, demo pipeline, interleaved;"
                f" client: {args.client}"
            )
            report(calls, encodes, served)  # printed now: the busy phase below is long
            busy = poll_latency(server, args.poll_seconds, 20)
            last = BenchClient(server, args.client)  # the backlog must drain first
            try:
                one_served_job(
                    last, {"model": "tessera-demo", "prompt": "last", "image_size": "square"}
                )
            finally:
                last.close()
            quiet = {gap: idle_latency(server, 1, gap) for gap in (0.0, 0.05)}
            durable = fsync_ms(data)
        finally:
            direct.shutdown()
            for each in servers.values():
                each.kill()

    print(
        f"task endpoint while busy ({len(busy)} polls): p50 {percentile(busy, 0.5) * 1000:.2f} ms,"
        f" p99 {percentile(busy, 0.99) * 1000:.2f} ms"
    )
    print(
        f"task endpoint, worker idle: back to back {quiet[0.0]:.2f} ms,"
        f" after 50 ms quiet {quiet[0.05]:.2f} ms"
    )
    print(f"fsync of a 4 KiB write in the data directory: median {durable:.2f} ms")


if __name__ == "__main__":
    main()
