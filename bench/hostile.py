"""Hostile clients against a real ``tessera serve --demo``: prints figures, asserts nothing.

Each scenario starts its own server (from ``--python``'s environment, so the same script
measures an older checkout too), runs one attack over loopback while a prober times
``GET /healthz`` every 20 ms (its p99 and worst latency are the event loop's stalls), and
prints what the attacker got back and what it cost the server (RSS from /proc).

  body          a 300 MB POST without a key, then one of 300 MB with a key
  slow-body     a body sent at 1 byte/s; seconds until the server cuts it
  slow-headers  headers sent a line a second; seconds until the server cuts them
  reput         PUT to one signed upload URL twice
  b64           40 polls of a completed 4-image b64_json task
  rate          300 submits and 300 polls as fast as one key can send them
  metrics       whether GET /metrics answers on the API's port, and with key ids
  perms         the modes of the data directory and of jobs.db, -wal and -shm
  longpoll      200 clients long-poll one queued job with wait=30: how late they return
  storm         /healthz while 200 clients long-poll and 4 upload decompression bombs

Usage: .venv/bin/python bench/hostile.py [--python /work/main/.venv/bin/python] SCENARIO...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
from PIL import Image

# The repository root, for tests.support.
sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from tests.support.server import ServerProcess

MODELS_CACHE = Path(tempfile.gettempdir()) / "tessera-bench-models"
FAST = {"model": "tessera-demo", "prompt": "a lighthouse", "num_inference_steps": 1}
MiB = 1024 * 1024


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / MiB


class Prober:
    """``GET /healthz`` every 20 ms, and the server's peak RSS, until stopped."""

    def __init__(self, server: ServerProcess):
        self.server = server
        self.latencies: list[float] = []
        self.peak_rss = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        assert self.server.process is not None
        async with httpx.AsyncClient(base_url=self.server.base_url, timeout=60) as client:
            while True:
                started = time.perf_counter()
                await client.get("/healthz")
                self.latencies.append(time.perf_counter() - started)
                self.peak_rss = max(self.peak_rss, rss_mib(self.server.process.pid))
                await asyncio.sleep(0.02)

    def __enter__(self) -> Prober:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()

    def summary(self) -> str:
        ms = [value * 1000 for value in self.latencies]
        return (
            f"/healthz p50 {percentile(ms, 0.5):.1f} ms, p99 {percentile(ms, 0.99):.1f} ms, "
            f"max {max(ms, default=0):.1f} ms ({len(ms)} probes); peak RSS {self.peak_rss:.0f} MiB"
        )


@contextlib.asynccontextmanager
async def served(python: str, *extra: str) -> AsyncIterator[ServerProcess]:
    root = Path(tempfile.mkdtemp(prefix="tessera-hostile-"))
    # A data directory made the usual way (mode 0755 under the umask), not by mkdtemp.
    base = root / "data"
    if MODELS_CACHE.exists():
        shutil.copytree(MODELS_CACHE, base / "models")
    server = ServerProcess(base, extra_args=extra, python=python)
    await asyncio.to_thread(server.start)
    if not MODELS_CACHE.exists():
        shutil.copytree(base / "models", MODELS_CACHE)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


async def status_line(reader: asyncio.StreamReader, limit: float) -> str:
    """The response's status line, or why there was none, within ``limit`` seconds."""
    try:
        line = await asyncio.wait_for(reader.readline(), limit)
    except TimeoutError:
        return "no answer"
    except ConnectionError as error:
        return type(error).__name__
    return line.decode(errors="replace").strip() or "closed"


async def big_post(server: ServerProcess, key: str | None, size: int = 300 * MiB) -> str:
    """Send ``size`` bytes of JSON-ish body as fast as the server takes them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    auth = f"api_key: {key}\r\n" if key else ""
    writer.write(
        (
            "POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n"
            f"{auth}Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
        ).encode()
    )
    started = time.perf_counter()
    chunk = b"[" + b" " * (MiB - 1)
    sent = 0
    answer = asyncio.create_task(status_line(reader, 120))
    with contextlib.suppress(ConnectionError):
        while sent < size and not answer.done():
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
    status = await answer
    elapsed = time.perf_counter() - started
    writer.close()
    return f"{status!r} after {elapsed:.2f} s, {sent / MiB:.0f} MiB sent"


async def scenario_body(server: ServerProcess) -> None:
    for key in (None, server.api_key):
        with Prober(server) as probe:
            await asyncio.sleep(0.2)
            outcome = await big_post(server, key)
            await asyncio.sleep(0.3)
        label = "with a key" if key else "without a key"
        print(f"  300 MB POST {label}: {outcome}; {probe.summary()}")


async def trickle(server: ServerProcess, head: bytes, body_bytes: int, label: str) -> None:
    """Send ``head`` a line a second, then a body a byte a second, until the server cuts."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    started = time.perf_counter()
    answer = asyncio.create_task(status_line(reader, 60))
    pieces = [line + b"\r\n" for line in head.split(b"\r\n")] + [b"x"] * body_bytes
    with contextlib.suppress(ConnectionError):
        for piece in pieces:
            if answer.done():
                break
            writer.write(piece)
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(answer), 1.0)
    status = await answer
    print(f"  {label}: {status!r} after {time.perf_counter() - started:.1f} s")
    writer.close()


async def scenario_slow_body(server: ServerProcess) -> None:
    head = (
        "POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n"
        f"api_key: {server.api_key}\r\nContent-Type: application/json\r\nContent-Length: 60\r\n"
    ).encode()
    # The header lines go out a second apart too; time only the body here.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(head + b"\r\n")
    await writer.drain()
    started = time.perf_counter()
    answer = asyncio.create_task(status_line(reader, 60))
    with contextlib.suppress(ConnectionError):
        for _ in range(60):
            if answer.done():
                break
            writer.write(b" ")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(answer), 1.0)
    print(f"  body at 1 byte/s: {await answer!r} after {time.perf_counter() - started:.1f} s")
    writer.close()


async def scenario_slow_headers(server: ServerProcess) -> None:
    lines = b"\r\n".join(
        [b"GET /healthz HTTP/1.1", b"Host: x"] + [b"X-Slow-%d: 1" % n for n in range(60)]
    )
    await trickle(server, lines, 0, "headers a line a second")


async def scenario_reput(server: ServerProcess) -> None:
    async with httpx.AsyncClient(
        base_url=server.api_url, headers={"api_key": server.api_key}, timeout=60
    ) as client:
        signed = (await client.get("/images/signed-url")).json()
        png = io.BytesIO()
        Image.new("RGB", (64, 64), "orange").save(png, format="PNG")
        statuses = [
            (await client.put(signed["signed_url"], content=png.getvalue())).status_code
            for _ in range(2)
        ]
    print(f"  two PUTs to one signed upload URL: {statuses}")


async def poll_until_done(client: httpx.AsyncClient, job_id: int) -> httpx.Response:
    while True:
        response = await client.get(f"/images/tasks/{job_id}", params={"wait": 30})
        if response.json().get("status") in ("completed", "failed"):
            return response


async def scenario_b64(server: ServerProcess) -> None:
    async with httpx.AsyncClient(
        base_url=server.api_url, headers={"api_key": server.api_key}, timeout=120
    ) as client:
        body = {**FAST, "num_images": 4, "image_size": "2048x2048", "response_format": "b64_json"}
        job_id = (await client.post("/images/generations", json=body)).json()["job_id"]
        await poll_until_done(client, job_id)
        with Prober(server) as probe:
            started = time.perf_counter()
            responses = await asyncio.gather(
                *(client.get(f"/images/tasks/{job_id}") for _ in range(40))
            )
            elapsed = time.perf_counter() - started
        out = sum(len(response.content) for response in responses) / MiB
        codes = sorted({response.status_code for response in responses})
    print(
        f"  40 concurrent polls of a 4-image b64_json task: statuses {codes}, {out:.0f} MiB "
        f"out in {elapsed:.1f} s; {probe.summary()}"
    )


async def scenario_rate(server: ServerProcess) -> None:
    async with httpx.AsyncClient(
        base_url=server.api_url, headers={"api_key": server.api_key}, timeout=60
    ) as client:
        for label, call in (
            ("submits", lambda: client.post("/images/generations", json={**FAST, "seed": 1})),
            ("polls", lambda: client.get("/images/tasks/1")),
        ):
            started = time.perf_counter()
            responses = [await call() for _ in range(300)]
            elapsed = time.perf_counter() - started
            refused = [r for r in responses if r.status_code == 429]
            retry = refused[0].headers.get("retry-after") if refused else None
            print(
                f"  300 {label} in {elapsed:.1f} s: {len(refused)} answered 429"
                + f" (first at #{responses.index(refused[0]) + 1}, Retry-After {retry})"
                if refused
                else f"  300 {label} in {elapsed:.1f} s: none answered 429"
            )


async def one_job(server: ServerProcess) -> None:
    async with httpx.AsyncClient(
        base_url=server.api_url, headers={"api_key": server.api_key}, timeout=120
    ) as client:
        job_id = (await client.post("/images/generations", json=FAST)).json()["job_id"]
        await poll_until_done(client, job_id)


async def scenario_metrics(server: ServerProcess) -> None:
    await one_job(server)
    async with httpx.AsyncClient(follow_redirects=True) as plain:
        response = await plain.get(server.base_url + "/metrics/")
        keyed = [line for line in response.text.splitlines() if "key_id=" in line]
        print(f"  GET /metrics on the API port: {response.status_code}; key_id lines: {keyed}")
        if "--metrics-port" in server.extra_args:
            port = server.extra_args[server.extra_args.index("--metrics-port") + 1]
            response = await plain.get(f"http://127.0.0.1:{port}/metrics")
            keyed = [line for line in response.text.splitlines() if "key_id=" in line]
            patches = [line for line in response.text.splitlines() if "patches_total{" in line]
            print(f"  on --metrics-port: {response.status_code}; {patches}; key_id lines: {keyed}")


async def scenario_perms(server: ServerProcess) -> None:
    await one_job(server)
    data = server.data_dir
    modes = {
        path.name: oct(path.stat().st_mode & 0o777)
        for path in (data, data / "jobs.db", data / "jobs.db-wal", data / "jobs.db-shm")
        if path.exists()
    }
    print(f"  modes: {modes}")


async def queued_job(client: httpx.AsyncClient) -> int:
    """A job that stays queued for minutes: the one embedded worker is busy with a large
    multi-image job ahead of it (about 150 s on two CPU cores)."""
    body = {**FAST, "num_images": 4, "image_size": "2048x2048", "num_inference_steps": 50}
    (await client.post("/images/generations", json=body)).raise_for_status()
    return int((await client.post("/images/generations", json=FAST)).json()["job_id"])


def many_connections(server: ServerProcess, clients: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.api_url,
        headers={"api_key": server.api_key},
        timeout=120,
        limits=httpx.Limits(max_connections=clients + 20),
    )


async def long_pollers(
    client: httpx.AsyncClient, job_id: int, clients: int, wait: float
) -> list[float]:
    """How late each of ``clients`` concurrent long-polls returned, in seconds."""

    async def one() -> float:
        started = time.perf_counter()
        await client.get(f"/images/tasks/{job_id}", params={"wait": wait})
        return time.perf_counter() - started - wait

    return await asyncio.gather(*(one() for _ in range(clients)))


async def bare_long_pollers(
    server: ServerProcess, job_id: int, clients: int, wait: float
) -> list[float]:
    """The same over bare sockets: the client's clock then measures the server, not an HTTP
    library parsing two hundred responses at once on a busy machine."""
    request = (
        f"GET /v1/images/tasks/{job_id}?wait={wait:g} HTTP/1.1\r\nHost: x\r\n"
        f"api_key: {server.api_key}\r\n\r\n"
    ).encode()

    async def one() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        started = time.perf_counter()
        writer.write(request)
        await reader.readuntil(b"\r\n\r\n")
        late = time.perf_counter() - started - wait
        writer.close()
        return late

    return await asyncio.gather(*(one() for _ in range(clients)))


def lateness(late: list[float]) -> str:
    return (
        f"returned late by median {statistics.median(late):.2f} s, "
        f"p99 {percentile(late, 0.99):.2f} s, max {max(late):.2f} s"
    )


async def scenario_longpoll(server: ServerProcess, clients: int = 200, wait: float = 30) -> None:
    async with many_connections(server, clients) as client:
        job_id = await queued_job(client)
        with Prober(server) as probe:
            late = await long_pollers(client, job_id, clients, wait)
        bare = await bare_long_pollers(server, job_id, clients, wait)
        status = (await client.get(f"/images/tasks/{job_id}")).json()["status"]
    print(f"  {clients} long-polls with wait={wait:g} (job still {status}): {lateness(late)}")
    print(f"  {probe.summary()}")
    print(f"  {clients} long-polls on bare sockets: {lateness(bare)}")


def bomb_png() -> bytes:
    """A small PNG that decodes to 13000x13000 pixels."""
    buffer = io.BytesIO()
    Image.new("L", (13000, 13000)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


async def upload_bombs(client: httpx.AsyncClient, bomb: bytes, until: float) -> list[int]:
    """PUT ``bomb`` again and again until ``until``; a refused upload URL (429) is counted
    and waited out as its Retry-After says."""
    statuses = []
    while time.monotonic() < until:
        grant = await client.get("/images/signed-url")
        if grant.status_code != 201:
            statuses.append(grant.status_code)
            await asyncio.sleep(float(grant.headers.get("retry-after", 1)))
            continue
        put = await client.put(grant.json()["signed_url"], content=bomb)
        statuses.append(put.status_code)
    return statuses


async def scenario_storm(server: ServerProcess, clients: int = 200, wait: float = 30) -> None:
    bomb = await asyncio.to_thread(bomb_png)
    async with many_connections(server, clients) as client:
        job_id = await queued_job(client)
        until = time.monotonic() + wait
        with Prober(server) as probe:
            late, *uploads = await asyncio.gather(
                bare_long_pollers(server, job_id, clients, wait),
                *(upload_bombs(client, bomb, until) for _ in range(4)),
            )
    statuses = sorted({code for batch in uploads for code in batch})
    count = sum(len(batch) for batch in uploads)
    print(
        f"  {count} bomb uploads or upload URLs ({len(bomb) / 1024:.0f} KiB PNG, 13000x13000) "
        f"answered {statuses}; {clients} long-polls (bare sockets) {lateness(late)}"
    )
    print(f"  {probe.summary()}")


SCENARIOS: dict[str, Callable[[ServerProcess], Awaitable[None]]] = {
    "body": scenario_body,
    "slow-body": scenario_slow_body,
    "slow-headers": scenario_slow_headers,
    "reput": scenario_reput,
    "b64": scenario_b64,
    "rate": scenario_rate,
    "metrics": scenario_metrics,
    "perms": scenario_perms,
    "longpoll": scenario_longpoll,
    "storm": scenario_storm,
}


async def main(args: argparse.Namespace) -> None:
    for name in args.scenarios:
        print(f"{name}:", flush=True)
        async with served(args.python, *args.server_arg) as server:
            await SCENARIOS[name](server)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenarios", nargs="+", choices=sorted(SCENARIOS), metavar="SCENARIO")
    parser.add_argument("--python", default=sys.executable, help="the server's interpreter")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="an extra `tessera serve` argument"
    )
    parsed: Any = parser.parse_args()
    asyncio.run(main(parsed))
