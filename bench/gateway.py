"""What the gateway keeps of Redis's limit: prints figures, asserts nothing.

Against a real redis-server (AOF, appendfsync always, as the chart runs it) and two real
`tessera gateway` processes (no workers; a model's queue takes them all):

1. Submissions per second and p50/p99 submit latency of C concurrent clients posting N
   generations, half to each gateway.
2. The same through two ``bench/bare_gateway.py`` processes: a raw HTTP protocol in front
   of the same submit, no framework, no key, no validation. The floor of any Python
   gateway on this store; the gateways' distance from it is their own code.
3. The same load generator calling Redis directly with the same atomic submit script
   (``RedisJobStore.submit``): the limit on this machine. Then the ratios.
4. CPU-seconds per 1,000 jobs (user + system time, from /proc) of both gateway processes,
   of redis-server and of the load generator itself, for phases 1 to 3: on a machine with
   few cores their sum, not the gateway alone, sets the rate, and a load generator that
   spends more than the gateways measures itself.
5. (Run first, on an empty queue.) Time from a job's completion (this process completes it
   as a worker would) to a client long-polling its task through a gateway seeing it:
   p50/p99, while other long-polls wait on jobs that do not change.

The load generator shares the machine with everything it measures: on a small machine its
own CPU is part of the limit, for both phases alike. By default it writes pre-encoded
requests on raw keep-alive HTTP/1.1 connections and reads each response by its
Content-Length (as wrk-style tools do), checking every answer is a 200 with a job id;
``--client aiohttp`` or ``--client httpx`` measure through a full HTTP client instead. It
prints which one ran.

Usage: .venv/bin/python bench/gateway.py [--jobs 5000] [--clients 16] [--polls 200]
                                         [--client raw|aiohttp|httpx]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import aiohttp
import httpx

# The repository root, for tests.support; bench/ itself, for common.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from bare_http import BareProcess
from common import demo_params
from serving_overhead import percentile

from tessera.runtime.jobs.base import JobResult, StorePolicy
from tessera.runtime.jobs.redis import RedisJobStore
from tests.support.gateway import GatewayDeployment, demo_image_models, write_models
from tests.support.redis_server import RedisServer
from tests.support.server import KEYS, ServerProcess

MODEL = "tessera-demo"
# Submissions before each measured phase (connections, caches); CPU counts them too.
WARM_UP = 200
BODY = {"model": MODEL, "prompt": "a lighthouse at dusk", "image_size": "square"}
BODY_BYTES = json.dumps(BODY).encode()


async def timed_load(
    jobs: int, clients: int, submit: Callable[[int], Awaitable[None]]
) -> tuple[float, list[float]]:
    """``jobs`` calls of ``submit(i)`` from ``clients`` concurrent loops: seconds, latencies."""
    latencies: list[float] = []
    counter = iter(range(jobs))

    async def client_loop() -> None:
        for index in counter:
            started = time.perf_counter()
            await submit(index)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    return time.perf_counter() - started, latencies


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


@dataclass(frozen=True)
class CpuAccount:
    """The processes whose CPU a phase is charged: gateways, redis-server, this one."""

    gateways: list[int]
    redis: int

    def sample(self) -> tuple[float, float, float]:
        return (
            cpu_seconds(self.gateways),
            cpu_seconds([self.redis]),
            cpu_seconds([os.getpid()]),
        )

    def per_thousand(self, before: tuple[float, float, float], jobs: int) -> str:
        now = self.sample()
        spent = [(after - was) / jobs * 1000 for after, was in zip(now, before, strict=True)]
        return (
            "   ".join(
                f"{name} {seconds:5.2f}"
                for name, seconds in zip(
                    ("gateways", "redis", "load generator"), spent, strict=True
                )
            )
            + f"   (sum {sum(spent):.2f})"
        )


class RawConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends a pre-encoded request and reads one
    response with a Content-Length at a time: the load generator a server is measured with
    (wrk-style), a fraction of a full client's CPU per request. Each response is still
    checked by its caller."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> RawConnection:
        _, connection = await asyncio.get_running_loop().create_connection(cls, host, port)
        return connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = bytes(self._buffer[:head_end]).decode("latin-1").lower()
        _, found, rest = head.partition("\r\ncontent-length:")
        if not found:
            self._fail(RuntimeError(f"a response without Content-Length: {head[:200]!r}"))
            return
        end = head_end + 4 + int(rest.partition("\r\n")[0])
        if len(self._buffer) < end:
            return
        status, body = int(head[9:12]), bytes(self._buffer[head_end + 4 : end])
        del self._buffer[:end]
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError(f"the gateway closed the connection: {exc}"))

    def _fail(self, error: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)

    async def request(self, data: bytes) -> tuple[int, bytes]:
        """Status and body of the answer to ``data``, one whole request."""
        if self._transport is None or self.closed:
            raise ConnectionError("the connection is closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(data)
        return await self._waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def raw_request(host: str, port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """A POST as a client sends it, encoded once."""
    lines = [f"POST {path} HTTP/1.1", f"host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def accepted_job_id(status: int, body: bytes) -> int:
    """The job id of a 200 answer to a submission; anything else is an error."""
    if status != 200:
        raise RuntimeError(f"the gateway answered {status}: {body[:200]!r}")
    return int(json.loads(body)["job_id"])


async def through_gateways(
    gateways: Sequence[ServerProcess | BareProcess], jobs: int, clients: int, client: str
) -> tuple[float, list[float]]:
    """Half the submissions to each gateway, from ``clients`` concurrent keep-alive
    connections: raw HTTP/1.1 (the default), aiohttp or httpx. Every answer must be a 200
    with a job id."""
    urls = [f"{g.api_url}/images/generations" for g in gateways]
    headers = {"api_key": KEYS[0], "content-type": "application/json"}
    async with contextlib.AsyncExitStack() as stack:
        if client == "raw":
            targets = [httpx.URL(url) for url in urls]
            requests = [
                raw_request(str(t.host), t.port or 80, t.path, headers, BODY_BYTES) for t in targets
            ]
            idle: list[list[RawConnection]] = [[] for _ in targets]

            async def submit(index: int) -> None:
                which = index % len(targets)
                free = idle[which]
                # A connection idle past the gateway's keep-alive timeout was closed by it.
                while free and free[-1].closed:
                    free.pop()
                if free:
                    connection = free.pop()
                else:
                    target = targets[which]
                    connection = await RawConnection.open(str(target.host), target.port or 80)
                    stack.callback(connection.close)
                accepted_job_id(*await connection.request(requests[which]))
                free.append(connection)

        elif client == "aiohttp":
            connector = aiohttp.TCPConnector(limit=clients)
            session = await stack.enter_async_context(
                aiohttp.ClientSession(connector=connector, headers=headers)
            )

            async def submit(index: int) -> None:
                async with session.post(urls[index % len(urls)], data=BODY_BYTES) as response:
                    accepted_job_id(response.status, await response.read())

        else:
            limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
            pool = await stack.enter_async_context(
                httpx.AsyncClient(headers=headers, limits=limits, timeout=60)
            )

            async def submit(index: int) -> None:
                response = await pool.post(urls[index % len(urls)], content=BODY_BYTES)
                accepted_job_id(response.status_code, response.content)

        await timed_load(min(WARM_UP, jobs), clients, submit)  # warm-up: connections, caches
        return await timed_load(jobs, clients, submit)


async def straight_to_redis(url: str, jobs: int, clients: int) -> tuple[float, list[float]]:
    store = RedisJobStore(url, prefix="bench-direct")
    params = demo_params(512, 4)

    async def submit(_: int) -> None:
        await store.submit(MODEL, "bench", params, max_queued=1_000_000)

    try:
        await timed_load(min(WARM_UP, jobs), clients, submit)
        return await timed_load(jobs, clients, submit)
    finally:
        await store.close()


async def completion_seen(url: str, gateway: ServerProcess, polls: int) -> list[float]:
    """Seconds from ``complete`` to the long-poll's answer, one job at a time, while 50
    other long-polls wait on jobs in progress that never change. Run on an empty queue."""
    store = RedisJobStore(url, StorePolicy(lease_seconds=3600))
    result = JobResult(
        images=(), patches=1024, price=Decimal("0.001"), price_per_patch=Decimal("0.000001")
    )
    async with httpx.AsyncClient(
        base_url=gateway.api_url, headers={"api_key": KEYS[0]}, timeout=60
    ) as client:

        async def submit_and_lease() -> int:
            job_id = int((await client.post("/images/generations", json=BODY)).json()["job_id"])
            leased = await store.lease([MODEL], "bench-worker")
            if leased is None or leased.id != job_id:
                raise RuntimeError("the queue was not empty")
            return job_id

        async def long_poll(job_id: int) -> float:
            response = await client.get(f"/images/tasks/{job_id}", params={"wait": 30})
            response.raise_for_status()
            return time.perf_counter()

        quiet = [asyncio.create_task(long_poll(await submit_and_lease())) for _ in range(50)]
        delays = []
        for _ in range(polls):
            job_id = await submit_and_lease()
            waiting = asyncio.create_task(long_poll(job_id))
            await asyncio.sleep(0.02)  # let the request reach the gateway and wait there
            finished = time.perf_counter()
            await store.complete(job_id, "bench-worker", result)
            delays.append(await waiting - finished)
        for task in quiet:
            task.cancel()
        await asyncio.gather(*quiet, return_exceptions=True)
    await store.close()
    return delays


def line(name: str, seconds: float, latencies: list[float], jobs: int) -> float:
    rate = jobs / seconds
    print(
        f"{name:<34} {rate:8.0f} submits/s   p50 {percentile(latencies, 0.5) * 1000:6.2f} ms"
        f"   p99 {percentile(latencies, 0.99) * 1000:6.2f} ms"
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument(
        "--clients",
        type=int,
        default=16,
        help="concurrent submitters: 16 keep this machine's two cores busy; more only queue"
        " (the rate stays, p99 grows: 18 ms at 16, 30 ms at 24, 150 ms at 64)",
    )
    parser.add_argument("--polls", type=int, default=200)
    parser.add_argument(
        "--client",
        choices=["raw", "aiohttp", "httpx"],
        default="raw",
        help="the HTTP load generator: raw keep-alive HTTP/1.1 connections sending a"
        " pre-encoded request (the cheapest), aiohttp, or httpx (several times aiohttp's"
        " CPU per request)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tessera-bench-gateway-") as folder:
        root = Path(folder)
        redis = RedisServer(root / "redis").start()
        # Queues that hold the whole run: no worker drains them.
        queue = {"maxQueued": 1_000_000, "timeoutSeconds": 86400}
        models = write_models(root / "models.yaml", demo_image_models(queue=queue))
        deployment = GatewayDeployment(root, root / "no-pipelines", redis)
        gateways = [deployment.gateway(models) for _ in range(2)]
        bare = [BareProcess("bare_gateway.py", ("--redis", redis.url), root) for _ in range(2)]
        try:
            for gateway in gateways:
                gateway.spawn()
            for gateway in gateways:
                gateway.wait_ready()
            print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            print(f"load generator: {args.client}")
            # First, while the queue is empty: the bench leases the jobs it submits.
            delays = asyncio.run(completion_seen(redis.url, gateways[0], args.polls))
            assert redis.process is not None
            account = CpuAccount([g.process.pid for g in gateways if g.process], redis.process.pid)
            before = account.sample()
            load = through_gateways(gateways, args.jobs, args.clients, args.client)
            seconds, latencies = asyncio.run(load)
            submitted = args.jobs + min(WARM_UP, args.jobs)
            http_cpu = account.per_thousand(before, submitted)
            gateway_rate = line("two gateways (HTTP)", seconds, latencies, args.jobs)
            for each in bare:
                each.start()
            bare_account = CpuAccount([b.process.pid for b in bare if b.process], redis.process.pid)
            before = bare_account.sample()
            load = through_gateways(bare, args.jobs, args.clients, args.client)
            seconds, latencies = asyncio.run(load)
            bare_cpu = bare_account.per_thousand(before, submitted)
            bare_rate = line("two bare gateways (HTTP + submit)", seconds, latencies, args.jobs)
            for each in bare:
                each.kill()
            before = account.sample()
            seconds, latencies = asyncio.run(straight_to_redis(redis.url, args.jobs, args.clients))
            direct_cpu = account.per_thousand(before, submitted)
            redis_rate = line("Redis directly (same script)", seconds, latencies, args.jobs)
            print(f"{'ratio gateway / bare gateway':<34} {gateway_rate / bare_rate:8.2f}")
            print(f"{'ratio gateway / Redis':<34} {gateway_rate / redis_rate:8.2f}")
            print("CPU-seconds per 1,000 jobs:")
            print(f"  {'through the gateways':<32} {http_cpu}")
            print(f"  {'through the bare gateways':<32} {bare_cpu}")
            print(f"  {'Redis directly':<32} {direct_cpu}")
            print(
                f"{'completion -> long-poll sees it':<34}"
                f"          p50 {percentile(delays, 0.5) * 1000:6.2f} ms"
                f"   p99 {percentile(delays, 0.99) * 1000:6.2f} ms   ({len(delays)} jobs)"
            )
            print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        finally:
            for gateway in gateways:
                gateway.stop()
            for each in bare:
                each.kill()
            redis.stop()


if __name__ == "__main__":
    main()
