"""Batching under a steady load: images per second and job latency at batch sizes 1-8.

A real worker (the one ``tessera worker`` runs) works an embedded SQLite queue, in process,
while ``--clients`` clients each keep one job in the system: submit, wait for the result,
submit the next. That load never lets the queue run dry or grow without bound, so the
figures are steady: images per second is what the worker delivers, latency is submit to
completed as a client sees it. Two pipelines: the demo model, whose VAE decoder dominates,
and a larger random-weight Flux (12 transformer blocks, 4 heads of 64), whose transformer
does, as on a GPU. CPU figures: batching pays on a GPU far more than on two shared cores.
Prints figures, asserts nothing.

Usage: .venv/bin/python bench/batching.py [--clients 8] [--jobs 4] [--size 256] [--steps 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import demo_params
from prometheus_client import REGISTRY

from tessera.runtime.demo import build_demo_pipeline
from tessera.runtime.jobs.base import JobStatus
from tessera.runtime.jobs.sqlite import SQLiteJobStore
from tessera.runtime.models import ModelSpec
from tessera.runtime.params import Task
from tessera.runtime.storage import open_storage
from tessera.runtime.worker.options import BatchOptions
from tessera.runtime.worker.pipeline import LoadedPipeline
from tessera.runtime.worker.runner import Worker

MODEL = "bench"
BATCH_SIZES = (1, 2, 4, 8)


def build_larger(demo: Path, path: Path) -> Path:
    """The demo pipeline with a transformer about 400 times its size (random weights)."""
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    pipeline = FluxPipeline.from_pretrained(str(demo))
    pipeline.transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=4,
        num_single_layers=8,
        attention_head_dim=64,
        num_attention_heads=4,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(8, 28, 28),
    )
    pipeline.save_pretrained(path)
    return path


def _batched() -> tuple[float, float]:
    """Batched pipeline calls so far, and the jobs they ran (the rest ran alone)."""
    calls = REGISTRY.get_sample_value("tessera_batch_jobs_count", {"model": MODEL}) or 0.0
    jobs = REGISTRY.get_sample_value("tessera_batch_jobs_sum", {"model": MODEL}) or 0.0
    return calls, jobs


async def steady_load(
    loaded: LoadedPipeline,
    scratch: Path,
    batch: BatchOptions,
    clients: int,
    jobs_per_client: int,
    size: int,
    steps: int,
) -> tuple[float, float, float, float]:
    """Images per second, p50 and p95 latency (s), and jobs per pipeline call."""
    store = SQLiteJobStore(scratch / f"jobs-{batch.max_size}.db")
    files = open_storage(f"file://{scratch / 'files'}")
    worker = Worker(store, files, {MODEL: ModelSpec(name=MODEL)}, {MODEL: loaded}, "bench",
                    batch=batch)  # fmt: skip
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    latencies: list[float] = []

    async def client(number: int, jobs: int) -> None:
        for index in range(jobs):
            started = time.perf_counter()
            job = await store.submit(
                MODEL, "bench", demo_params(size, steps, number * 1000 + index)
            )
            while not job.status.finished:
                job = await store.wait_for_change(job.id, job.status, 120)
            assert job.status is JobStatus.COMPLETED, job.error
            latencies.append(time.perf_counter() - started)

    # Warm-up: every client once, so the first timed calls are not the first of their size.
    await asyncio.gather(*(client(n, 1) for n in range(clients)))
    latencies.clear()
    calls_before, jobs_before = _batched()
    started = time.perf_counter()
    await asyncio.gather(*(client(n, jobs_per_client) for n in range(clients)))
    elapsed = time.perf_counter() - started
    total = clients * jobs_per_client
    calls_after, jobs_after = _batched()
    batched_jobs = jobs_after - jobs_before
    calls = (calls_after - calls_before) + (total - batched_jobs)
    stop.set()
    await running
    await store.close()
    cuts = statistics.quantiles(latencies, n=20, method="inclusive")
    return total / elapsed, statistics.median(latencies), cuts[18], total / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="jobs kept in the system")
    parser.add_argument("--jobs", type=int, default=4, help="timed jobs per client")
    parser.add_argument("--size", type=int, default=256, help="image side, pixels")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--max-wait-ms", type=int, default=20, help="batch.maxWaitMs above 1")
    args = parser.parse_args()
    import torch

    print(
        f"{args.clients} clients, {args.jobs} timed jobs each, {args.size}x{args.size}, "
        f"{args.steps} steps, torch {torch.__version__} on {torch.get_num_threads()} threads,"
        f" {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        demo = build_demo_pipeline(scratch / "demo", Task.TEXT_TO_IMAGE)
        configs = {"demo": demo, "larger Flux": build_larger(demo, scratch / "larger")}
        for name, path in configs.items():
            loaded = LoadedPipeline.load(path, "cpu")
            print(f"\n{name}:")
            print("  batch  maxWaitMs  images/s  p50 s   p95 s   jobs/call")
            for size in BATCH_SIZES:
                batch = BatchOptions(max_size=size, max_wait_ms=args.max_wait_ms if size > 1 else 0)
                rate, p50, p95, per_call = asyncio.run(
                    steady_load(
                        loaded, scratch, batch, args.clients, args.jobs, args.size, args.steps
                    )
                )
                print(
                    f"  {size:>5}  {batch.max_wait_ms:>9}  {rate:>8.2f}  {p50:>6.2f}  {p95:>6.2f}"
                    f"  {per_call:>9.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
