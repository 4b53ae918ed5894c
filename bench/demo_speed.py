"""Pipeline time of the demo model on one CPU core: prints figures, asserts nothing.

The issue's target: a 1024x1024 image in under one second of pipeline time on one core,
at the demo model's default of 4 steps.

Usage: .venv/bin/python bench/demo_speed.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import demo_params

from tessera.runtime.demo import build_demo_pipeline
from tessera.runtime.params import Task
from tessera.runtime.worker.pipeline import LoadedPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        pipeline = LoadedPipeline.load(
            build_demo_pipeline(Path(scratch) / "demo", Task.TEXT_TO_IMAGE), "cpu"
        )
        for size, steps in [(1024, 4), (512, 4), (1024, 28)]:
            params = demo_params(size, steps)
            pipeline.generate(params)  # warm-up
            times = []
            for _ in range(args.runs):
                started = time.perf_counter()
                pipeline.generate(params)
                times.append(time.perf_counter() - started)
            print(
                f"{size}x{size}, {steps} steps, 1 thread: median {statistics.median(times):.3f} s,"
                f" min {min(times):.3f} s over {args.runs} runs"
            )


if __name__ == "__main__":
    main()
