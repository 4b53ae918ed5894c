"""The thinnest gateway: ``bare_http`` in front of the store's atomic submit, the floor
under ``tessera gateway``'s CPU per submission.

Each POST's body is parsed as JSON and its job submitted with ``RedisJobStore.submit``, as
the gateway's service does, but with no key, no validation, no routing and no framework:
``bench/gateway.py`` runs two of these beside two gateways, so the difference is what the
gateway's own code costs, and this is what any Python gateway on this store pays.

Usage (the bench starts it): python bench/bare_gateway.py --port P --redis URL
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import uvloop

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import bare_http
from common import demo_params

from tessera.runtime.jobs.redis import RedisJobStore


async def serve(port: int, redis_url: str) -> None:
    store = RedisJobStore(redis_url, prefix="bench-bare")
    params = demo_params(512, 4)

    async def handle(method: str, target: str, body: bytes) -> tuple[str, bytes]:
        if method != "POST":
            return "application/json", b'{"status": "ready"}'
        model = json.loads(body)["model"]
        job = await store.submit(model, "bench", params, max_queued=1_000_000)
        return "application/json", b'{"job_id": %d, "status": "queued"}' % job.id

    try:
        await bare_http.serve(handle, port)
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.redis))


if __name__ == "__main__":
    main()
