"""How long ``tessera worker`` takes from exec to ready, and to its first image, and why.

Each run starts a real ``tessera worker`` for the demo model over a fresh SQLite queue,
with ``-X importtime`` on, polls ``/readyz`` until it answers 200, submits one job and
waits for it. The import log is summed by package (self time, so nothing counts twice);
torch's compiler stack (``torch._dynamo``, ``torch._inductor``, ``torch.fx``, sympy) is its
own line because diffusers imports it whether or not the model is compiled.

Beside each run, ``from diffusers import FluxPipeline`` alone is timed the same way: what
the issue measured (13.7 s of a 14 s start at the time), so each component reads before
(that import) and after (what the worker pays) at one load.

``--no-bytecode`` runs the same with Python's bytecode cache unreadable and unwritable,
as in a read-only image that ships no ``.pyc`` files.

    .venv/bin/python bench/worker_cold_start.py [--runs 3] [--no-bytecode]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import demo_params

from tessera.runtime.demo import ensure_demo_pipeline
from tessera.runtime.jobs.sqlite import SQLiteJobStore
from tessera.runtime.params import Task
from tests.support.server import free_port

TESSERA = Path(sys.executable).with_name("tessera")
COMPILER = ("torch._dynamo", "torch._inductor", "torch.fx", "sympy", "mpmath", "triton")


def by_package(log: str) -> collections.Counter[str]:
    """Self import time per top-level package, in seconds."""
    found: collections.Counter[str] = collections.Counter()
    for line in log.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        own, _, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        top = name.split(".")[0]
        if name.startswith(COMPILER):
            top = "torch compiler (dynamo, inductor, fx, sympy)"
        found[top] += int(own) / 1e6
    return found


def one_run(pipeline: Path, work: Path, no_bytecode: bool) -> dict[str, float]:
    port = free_port()
    queue = f"sqlite:///{work / 'jobs.db'}"
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    if no_bytecode:
        env |= {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(work / "no-pyc")}
    command = [str(TESSERA), "worker", "--model", "tessera-demo", "--weights", str(pipeline)]
    command += ["--queue", queue, "--storage", f"file://{work / 'files'}", "--port", str(port)]
    command += ["--host", "127.0.0.1", "--device", "cpu"]
    errors = work / "stderr.log"
    started = time.monotonic()
    with errors.open("w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the worker exited: {errors.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        ready = time.monotonic() - started
        first_image = asyncio.run(_first_image(work / "jobs.db")) + ready
    finally:
        process.terminate()
        process.wait(30)
    figures = dict(by_package(errors.read_text()))
    return {"ready": ready, "first image": first_image, **figures}


def flux_import(no_bytecode: bool, work: Path) -> dict[str, float]:
    """The issue's measurement: ``from diffusers import FluxPipeline`` in a fresh process."""
    env = dict(os.environ)
    if no_bytecode:
        env |= {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(work / "no-pyc")}
    command = [sys.executable, "-X", "importtime", "-c", "from diffusers import FluxPipeline"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return dict(by_package(done.stderr))


async def _first_image(db: Path) -> float:
    store = SQLiteJobStore(db)
    try:
        started = time.monotonic()
        job = await store.submit("tessera-demo", "key_bench", demo_params(64, 2))
        while not job.status.finished:
            job = await store.wait_for_change(job.id, job.status, 60)
        assert job.error is None, job.error
        return time.monotonic() - started
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-bytecode", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tessera-cold-") as folder:
        root = Path(folder)
        pipeline = ensure_demo_pipeline(root / "pipeline", Task.TEXT_TO_IMAGE)
        runs, flux = [], []
        for index in range(args.runs):
            work = root / f"run-{index}"
            work.mkdir()
            runs.append(one_run(pipeline, work, args.no_bytecode))
            flux.append(flux_import(args.no_bytecode, work))
    load = os.getloadavg()[0]
    print(f"tessera worker, demo model, {args.runs} runs (median), load average {load:.1f}")
    timings = ("ready", "first image")

    def median(of: list[dict[str, float]], key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in of)

    order = sorted({k for run in runs for k in run}, key=lambda k: -max(r.get(k, 0) for r in runs))
    print(f"  {'':46s} {'worker':>8s} {'FluxPipeline import alone':>25s}")
    for key in timings:
        print(f"  {key:46s} {median(runs, key):6.2f} s")
    totals = [{"all": sum(v for k, v in r.items() if k not in timings)} for r in runs]
    flux_totals = [{"all": sum(f.values())} for f in flux]
    print(
        f"  {'all imports':46s} {median(totals, 'all'):6.2f} s {median(flux_totals, 'all'):23.2f} s"
    )
    for key in [k for k in order if k not in timings][:14]:
        print(f"  {key:46s} {median(runs, key):6.2f} s {median(flux, key):23.2f} s")


if __name__ == "__main__":
    main()
