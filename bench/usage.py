"""Usage ledger throughput: prints figures, asserts nothing.

For each store (SQLite in a temporary folder; a real redis-server on loopback, appendfsync
always), N jobs are completed across 4 models (each completion writes its ledger record in
the same atomic step), then the whole ledger is exported in each format to memory. Printed:
completions per second (submit + lease + complete, serially) and records exported per second.

Usage: .venv/bin/python bench/usage.py [--jobs 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for tests.support

from tessera.runtime.jobs.base import ImageFile, JobResult, JobStore
from tessera.runtime.jobs.redis import RedisJobStore
from tessera.runtime.jobs.sqlite import SQLiteJobStore
from tessera.runtime.usage.export import export_range
from tessera.runtime.usage.formats import Format
from tests.support.params import job_params
from tests.support.redis_server import RedisServer

RATE = Decimal("0.00000079")
RESULT = JobResult(
    images=(ImageFile("results/0.png", 1024, 1024, "image/png"),),
    patches=4096,
    price=4096 * RATE,
    price_per_patch=RATE,
)


async def measure(name: str, store: JobStore, jobs: int) -> None:
    params = job_params()
    started = time.perf_counter()
    for index in range(jobs):
        model = f"model-{index % 4}"
        job = await store.submit(model, f"key_{index % 7}", params)
        leased = await store.lease([model], "bench")
        assert leased is not None
        await store.complete(job.id, "bench", RESULT, "default")
    completing = time.perf_counter() - started
    print(f"{name}: {jobs / completing:,.0f} completions/s ({jobs} jobs, serial)")
    for format in Format:
        out = io.BytesIO()
        started = time.perf_counter()
        await export_range(store, out, format)
        seconds = time.perf_counter() - started
        print(
            f"{name}: export {format.value:<11} {jobs / seconds:,.0f} records/s"
            f" ({len(out.getvalue()) / jobs:,.0f} bytes a record)"
        )
    await store.close()


async def main(jobs: int) -> None:
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as folder:
        await measure("sqlite", SQLiteJobStore(Path(folder) / "jobs.db"), jobs)
        redis = RedisServer(Path(folder) / "redis").start()
        try:
            await measure("redis", RedisJobStore(redis.url), jobs)
        finally:
            redis.stop()
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    asyncio.run(main(parser.parse_args().jobs))
