"""Result storage latency: prints figures, asserts nothing.

For each backend, a 1 MB PNG (random pixels, so it does not compress) is put and then got
back N times in a row, each under a new key as a worker writes results; printed: the median
and p99 of put, get and the pair, in milliseconds.

- file: LocalFileStore on a temporary folder (the local disk);
- s3: S3FileStore against a real SeaweedFS (``weed server -s3``) on loopback, built by
  tests/tools/build-seaweedfs, so the figure is the client and the protocol, not a network.

Usage: .venv/bin/python bench/storage.py [--runs 100]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for tests.support

from tessera.runtime.storage import FileStore, LocalFileStore
from tessera.runtime.storage.s3 import S3FileStore
from tests.support.s3_server import S3Server


def png_of_about(size: int) -> bytes:
    side = int((size / 3) ** 0.5)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(store: FileStore, data: bytes, runs: int) -> dict[str, list[float]]:
    await store.put("warm/0.png", data)  # connections and folders exist before timing
    await store.get("warm/0.png")
    timings: dict[str, list[float]] = {"put": [], "get": [], "put+get": []}
    for run in range(runs):
        key = f"results/{run}/0.png"
        start = time.perf_counter()
        await store.put(key, data)
        middle = time.perf_counter()
        assert await store.get(key) == data
        end = time.perf_counter()
        for name, seconds in (("put", middle - start), ("get", end - middle)):
            timings[name].append(seconds * 1000)
        timings["put+get"].append((end - start) * 1000)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    data = png_of_about(1_000_000)
    print(f"{len(data):,} byte PNG, {args.runs} put+get pairs per backend, load {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as scratch:
        server = S3Server(Path(scratch) / "s3").start()
        try:
            backends: dict[str, FileStore] = {
                "file": LocalFileStore(Path(scratch) / "files"),
                "s3": S3FileStore(server.bucket, "bench", environ=server.environ),
            }
            for name, store in backends.items():
                timings = asyncio.run(measure(store, data, args.runs))
                figures = ", ".join(
                    f"{what} p50 {statistics.median(ms):.2f} ms / p99 {percentile(ms, 0.99):.2f} ms"
                    for what, ms in timings.items()
                )
                print(f"{name:>4}: {figures}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
