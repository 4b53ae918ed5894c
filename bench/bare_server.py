"""The thinnest server of a job's three requests: the floor under the API's share.

It runs a worker's pipeline call and encoding on a thread, and nothing else: no store, no
queue, no key, no validation, canned JSON over ``bare_http``. What a job through it costs
beyond that call and encoding is what this machine's loopback, thread hand-offs and the
client charge for a submit, a long poll and a download, whatever any server does;
``bench/serving_overhead.py`` prints it beside ``tessera serve``.

Usage (the bench starts it): python bench/bare_server.py --port P --model DIR
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import uvloop

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import bare_http
from common import demo_params

from tessera.runtime.params import OutputFormat
from tessera.runtime.worker.pipeline import LoadedPipeline, encode


def _stamp(moment: float) -> str:
    """The API's time format: UTC, ISO 8601, no offset."""
    return datetime.fromtimestamp(moment, UTC).replace(tzinfo=None).isoformat()


@dataclass
class BareJob:
    created: float
    done: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = 0.0
    finished: float = 0.0
    image: bytes = b""


class BareApi:
    """The jobs and the pipeline's seconds (``tessera_pipeline_seconds``' sums, as the
    bench reads them from a real server)."""

    def __init__(self, pipeline: LoadedPipeline, base_url: str):
        self.pipeline = pipeline
        self.base_url = base_url
        self.jobs: dict[int, BareJob] = {}
        self.seconds = {"call": 0.0, "encode": 0.0}
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="pipeline")

    def _run(self, job: BareJob, steps: int, seed: int) -> None:
        job.started = time.time()
        started = time.perf_counter()
        [image] = self.pipeline.generate(demo_params(512, steps, seed))
        called = time.perf_counter()
        job.image = encode(image, OutputFormat.PNG)[0]
        self.seconds["call"] += called - started
        self.seconds["encode"] += time.perf_counter() - called
        job.finished = time.time()

    async def _work(self, job: BareJob, steps: int, seed: int) -> None:
        await asyncio.get_running_loop().run_in_executor(self.thread, self._run, job, steps, seed)
        job.done.set()

    def submit(self, body: bytes) -> bytes:
        request = json.loads(body)
        job_id = len(self.jobs) + 1
        job = self.jobs[job_id] = BareJob(time.time())
        steps, seed = request.get("num_inference_steps", 4), request.get("seed", 0)
        asyncio.get_running_loop().create_task(self._work(job, steps, seed))
        return json.dumps({"job_id": job_id, "status": "pending"}).encode()

    async def task(self, job_id: int) -> bytes:
        job = self.jobs[job_id]
        await job.done.wait()
        url = f"{self.base_url}/files/{job_id}.png"
        return json.dumps(
            {
                "id": job_id,
                "status": "completed",
                "created_at": _stamp(job.created),
                "started_at": _stamp(job.started),
                "finished_at": _stamp(job.finished),
                "result": {"data": [{"url": url}]},
            }
        ).encode()

    async def handle(self, method: str, target: str, body: bytes) -> tuple[str, bytes]:
        path = target.split("?", 1)[0]
        if method == "POST" and path == "/v1/images/generations":
            return "application/json", self.submit(body)
        if path.startswith("/v1/images/tasks/"):
            return "application/json", await self.task(int(path.rsplit("/", 1)[1]))
        if path.startswith("/files/"):
            return "image/png", self.jobs[int(path.rsplit("/", 1)[1].split(".")[0])].image
        if path == "/metrics":
            return "text/plain", self.metrics()
        return "application/json", b'{"status": "ready"}'

    def metrics(self) -> bytes:
        return "".join(
            f'tessera_pipeline_seconds_sum{{step="{step}"}} {seconds}\n'
            for step, seconds in self.seconds.items()
        ).encode()


async def serve(port: int, model: Path) -> None:
    api = BareApi(LoadedPipeline.load(model, "cpu"), f"http://127.0.0.1:{port}")
    await bare_http.serve(api.handle, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", type=Path, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.model))


if __name__ == "__main__":
    main()
