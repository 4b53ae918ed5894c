"""What the API adds on top of the pipeline: prints figures, asserts nothing.

1. The demo pipeline called directly in this process, 512x512, N times: median seconds.
2. The same request through a real `tessera serve --demo` over loopback (submit, long-poll
   until complete, download the image), N times in a row: median seconds.
3. The added milliseconds at the median, with and without the image encoding (which the
   direct call does not do but a served image needs).
4. Latency of GET /v1/images/tasks/{id} while the worker is busy: p50 and p99.
5. The same request with the worker idle, back to back and after 50 ms of quiet: a request
   that finds the machine idle pays for waking the server's threads, which is most of what
   the API adds to a job on a small CPU machine.

Usage: .venv/bin/python bench/serving_overhead.py [--jobs 50] [--steps 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

# The repository root, for tests.support; bench/ itself, for common.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from common import demo_params

from tessera.runtime.demo import ensure_demo_pipeline
from tessera.runtime.params import OutputFormat, Task
from tessera.runtime.worker.pipeline import LoadedPipeline, encode
from tests.support.server import ServerProcess


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def one_served_job(client: httpx.Client, body: dict[str, Any]) -> float:
    """Submit, long-poll until complete, download: the reference client's whole path.

    The download reuses the client's connection pool, as a real client would: a fresh
    ``httpx.get`` builds a TLS context first, about 50 ms of the client's own time.
    """
    started = time.perf_counter()
    job_id = client.post("/images/generations", json=body).json()["job_id"]
    while True:
        task = client.get(f"/images/tasks/{job_id}", params={"wait": 30}).json()
        if task["status"] in ("completed", "failed"):
            break
    assert task["status"] == "completed", task
    client.get(task["result"]["data"][0]["url"]).raise_for_status()
    return time.perf_counter() - started


def paired_runs(
    pipeline: LoadedPipeline, server: ServerProcess, jobs: int, steps: int
) -> tuple[list[float], list[float], list[float]]:
    """Direct call, encode and served job, interleaved, so both see the same machine noise."""
    body: dict[str, Any] = {
        "model": "tessera-demo",
        "prompt": "a lighthouse at dusk",
        "image_size": "square",
        "num_inference_steps": steps,
    }
    calls, encodes, served = [], [], []
    with server.client() as client:
        one_served_job(client, {**body, "seed": 0})  # warm-up, both sides
        pipeline.generate(demo_params(512, steps, 0))
        for seed in range(1, jobs + 1):
            started = time.perf_counter()
            [image] = pipeline.generate(demo_params(512, steps, seed))
            calls.append(time.perf_counter() - started)
            started = time.perf_counter()
            encode(image, OutputFormat.PNG)
            encodes.append(time.perf_counter() - started)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--poll-seconds", type=float, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as scratch:
        data = Path(scratch)
        for name, task in (
            ("tessera-demo", Task.TEXT_TO_IMAGE),
            ("tessera-demo-edit", Task.IMAGE_TO_IMAGE),
        ):
            ensure_demo_pipeline(data / "models" / name, task)
        pipeline = LoadedPipeline.load(data / "models" / "tessera-demo", "cpu")
        server = ServerProcess(data).start()
        try:
            calls, encodes, served = paired_runs(pipeline, server, args.jobs, args.steps)
            busy = poll_latency(server, args.poll_seconds, 20)
            with server.client() as client:  # the backlog must drain first
                one_served_job(
                    client, {"model": "tessera-demo", "prompt": "last", "image_size": "square"}
                )
            quiet = {gap: idle_latency(server, 1, gap) for gap in (0.0, 0.05)}
        finally:
            server.kill()

    added = [api - call for api, call in zip(served, calls, strict=True)]
    added_after_encode = [a - e for a, e in zip(added, encodes, strict=True)]
    print(f"jobs: {args.jobs} x 512x512, {args.steps} steps, demo pipeline on CPU, interleaved")
    print(f"direct pipeline call, median:         {statistics.median(calls) * 1000:8.1f} ms")
    print(f"PNG encoding, median:                 {statistics.median(encodes) * 1000:8.1f} ms")
    print(f"through the API (submit..download):   {statistics.median(served) * 1000:8.1f} ms")
    print(f"added by the API, median of pairs:    {statistics.median(added) * 1000:8.1f} ms")
    print(
        "  of which not the PNG encoding:      "
        f"{statistics.median(added_after_encode) * 1000:8.1f} ms"
    )
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
