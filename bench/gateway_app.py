"""A gateway's own CPU per submission, without HTTP: prints figures, asserts nothing.

bench/gateway.py measures whole processes on shared cores, where a gateway's CPU per
submission moves with the machine's load (0.6-1.3 ms for the same code within an hour) and
with the rate itself (fewer requests per event-loop turn at a lower rate). This calls the
gateway's ASGI application in this process, as uvicorn would after parsing a request, over
a real redis-server (AOF, ``appendfsync always``), and reads this process's CPU time
(``time.process_time``) over each round: the middleware, routing, service and Redis
client, with neither HTTP parsing nor socket writes, nor a load generator beside it. The
same body as bench/gateway.py, ``application/json`` (the submission's quick way), every
answer checked to be a 200.

Usage: .venv/bin/python bench/gateway_app.py [--jobs 3000] [--clients 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The repository root, for tests.support; bench/ itself, for gateway.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from gateway import BODY_BYTES, MODEL, WARM_UP

from tessera.runtime.api.app import create_app
from tessera.runtime.config import gateway_config
from tessera.runtime.settings import GatewaySettings
from tests.support.asgi import call, post_scope
from tests.support.gateway import demo_image_models, write_models
from tests.support.redis_server import RedisServer

PATH = "/v1/images/generations"
HEADERS = [
    (b"host", b"gateway"),
    (b"api_key", b"bench"),
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY_BYTES)).encode()),
]


async def submit(app: Any) -> None:
    """One submission through the ASGI application, as uvicorn hands it over."""
    sent = await call(app, post_scope(PATH, HEADERS), [BODY_BYTES])
    statuses = [m["status"] for m in sent if m["type"] == "http.response.start"]
    if statuses != [200]:
        raise RuntimeError(f"a submission was answered {statuses}")


async def run(jobs: int, clients: int, rounds: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="tessera-gateway-app-"))
    redis = RedisServer(root / "redis").start()
    try:
        queue = {"maxQueued": 1_000_000, "timeoutSeconds": 86400}
        settings = GatewaySettings(
            queue=redis.url,
            storage=f"file://{root / 'storage'}",
            models=write_models(root / "models.yaml", demo_image_models(queue=queue)),
            api_keys=("bench",),
            signing_secret="bench",
            rate_limit_submit="100000/second",
        )
        app = create_app(gateway_config(settings).config)

        async def load(count: int) -> None:
            async def client() -> None:
                for _ in range(count // clients):
                    await submit(app)

            await asyncio.gather(*(client() for _ in range(clients)))

        async with app.router.lifespan_context(app):
            await load(WARM_UP)
            print(f"{MODEL}, {clients} concurrent clients, {jobs} submissions a round")
            for number in range(1, rounds + 1):
                cpu, wall = time.process_time(), time.perf_counter()
                await load(jobs)
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                print(
                    f"round {number}: {1000 * cpu / jobs:.3f} CPU-ms per submission"
                    f"   {jobs / wall:,.0f} submits/s"
                )
    finally:
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.jobs, args.clients, args.rounds))


if __name__ == "__main__":
    main()
