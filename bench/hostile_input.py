"""Hostile source images and request bodies against a real `tessera serve --demo`: prints
figures, asserts nothing.

For each probe: the HTTP status (and error field/rule), the server's peak RSS growth while it
ran, and the worst `/healthz` latency seen meanwhile (a thread polls it back to back, so that
figure is how long the event loop stalled). Probes follow issue 9's numbering.

Run it with the interpreter of the checkout to measure; the server is started from the same
environment, so `/work/main/.venv/bin/python bench/hostile_input.py` measures main:

    .venv/bin/python bench/hostile_input.py [--bombs 4]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

# The repository root, for tests.support.
sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from tessera.runtime.keys import ApiKey
from tessera.runtime.sources import SourceLimits, SourceResolver
from tessera.runtime.storage import LocalFileStore, UrlSigner
from tests.support.image_host import ImageHost
from tests.support.server import ServerProcess

EDIT = {"model": "tessera-demo-edit", "prompt": "make it blue", "num_inference_steps": 1}


def encoded(image: Image.Image, image_format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def data_url(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


class Watch:
    """Polls /healthz back to back and samples the server's RSS, in a thread."""

    def __init__(self, server: ServerProcess):
        self.server = server
        self.samples: list[tuple[float, float, int]] = []  # (time, healthz seconds, rss KiB)
        self.running = True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def rss_kib(self) -> int:
        assert self.server.process is not None
        status = Path(f"/proc/{self.server.process.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1])

    def _poll(self) -> None:
        with httpx.Client(base_url=self.server.base_url, timeout=60) as client:
            while self.running:
                started = time.perf_counter()
                client.get("/healthz")
                took = time.perf_counter() - started
                self.samples.append((started, took, self.rss_kib()))
                time.sleep(0.005)

    @contextmanager
    def probe(self, name: str, outcome: dict[str, Any]) -> Iterator[None]:
        baseline = self.rss_kib()
        started = time.perf_counter()
        yield
        time.sleep(0.05)
        window = [s for s in self.samples if s[0] >= started]
        stall = max((s[1] for s in window), default=0.0)
        peak = max((s[2] for s in window), default=baseline)
        print(
            f"{name:<44} {json.dumps(outcome)[:150]:<150} "
            f"rss +{(peak - baseline) / 1024:.0f} MiB  stall {stall * 1000:.0f} ms",
            flush=True,
        )

    def stop(self) -> None:
        self.running = False
        self.thread.join()


def summary(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"status": response.status_code}
    if not isinstance(body, dict):
        return {"status": response.status_code}
    keys = ("error", "field", "rule", "message")
    return {"status": response.status_code, **{k: body[k] for k in keys if k in body}}


def final_task(client: httpx.Client, response: httpx.Response) -> dict[str, Any]:
    """The submit's summary, and the job's outcome if a job was made."""
    outcome = summary(response)
    if response.status_code == 200:
        job_id = response.json()["job_id"]
        started = time.perf_counter()
        while (task := client.get(f"/images/tasks/{job_id}", params={"wait": 30}).json())[
            "status"
        ] not in ("completed", "failed"):
            pass
        outcome["job"] = task["status"]
        outcome["job_seconds"] = round(time.perf_counter() - started, 2)
        if task.get("error"):
            outcome["job_error"] = task["error"]["message"]
    return outcome


def upload(client: httpx.Client, data: bytes) -> tuple[str, httpx.Response]:
    grant = client.get("/images/signed-url").json()
    return grant["filename"], httpx.put(grant["signed_url"], content=data, timeout=120)


def rebinding_probe() -> dict[str, Any]:
    """Item 1, in this process: a name that resolves to a public address when checked and to
    127.0.0.1 on any later lookup. Counts the requests that reach the loopback server."""
    loopback = ImageHost("127.0.0.1")
    port = loopback.port
    lookups = 0

    async def rebinding_getaddrinfo(host: Any, port: Any, *_: Any, **__: Any) -> list[Any]:
        nonlocal lookups
        lookups += 1
        if lookups == 1:  # a public address with no route here: connecting to it fails fast
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2606:4700::1111", port, 0, 0))]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    async def attempt() -> str:
        asyncio.get_running_loop().getaddrinfo = rebinding_getaddrinfo  # type: ignore[method-assign]
        with tempfile.TemporaryDirectory() as folder:
            files = LocalFileStore(Path(folder))
            resolver = SourceResolver(files, UrlSigner(b"k" * 32, "http://127.0.0.1:1"))
            resolver.limits = SourceLimits(fetch_timeout_seconds=3)
            try:
                await resolver.read(
                    ApiKey("bench"), f"http://rebind.test:{port}/a.png", "image_url"
                )
            except Exception as error:  # the outcome is what is printed
                return f"{type(error).__name__}: {error}"
            return "fetched"

    outcome = asyncio.run(attempt())
    loopback.close()
    return {
        "loopback_requests": len(loopback.hosts_seen),
        "lookups": lookups,
        "outcome": outcome[:90],
    }


def bomb_png(side: int) -> bytes:
    return encoded(Image.new("L", (side, side)), "PNG", optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bombs", type=int, default=4, help="parallel bomb uploads")
    args = parser.parse_args()

    print(f"python {sys.executable}")
    print(f"{'item 1 rebinding (in process)':<44} {json.dumps(rebinding_probe())}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        server = ServerProcess(Path(folder)).start()
        watch = Watch(server)
        try:
            run_probes(server, watch, args.bombs)
        finally:
            watch.stop()
            server.stop()


def run_probes(server: ServerProcess, watch: Watch, bombs: int) -> None:
    client = server.client(timeout=120)
    post: Callable[..., httpx.Response] = client.post
    small = encoded(Image.new("RGB", (64, 48), "orange"), "PNG")

    def edit(**fields: Any) -> httpx.Response:
        return post("/images/edits", json={**EDIT, "image_size": "256x192", **fields})

    for name, url in [
        ("item 2 NAT64 loopback", "http://[64:ff9b::7f00:1]/a.png"),
        ("item 2 6to4 loopback", "http://[2002:7f00:1::]/a.png"),
        ("item 2 IPv4-mapped loopback", "http://[::ffff:127.0.0.1]/a.png"),
        ("item 3 port 99999", "http://example.com:99999/a.png"),
        ("item 3 port -1", "http://example.com:-1/a.png"),
        ("item 3 port abc", "http://example.com:abc/a.png"),
        ("item 3 broken IPv6 bracket", "http://[::1"),
    ]:
        outcome: dict[str, Any] = {}
        with watch.probe(name, outcome):
            outcome.update(summary(edit(image_url=url)))
    outcome = {}
    with watch.probe("item 3 image_size with 5000 digits", outcome):
        outcome.update(summary(edit(image_url=data_url(small), image_size="1" * 5000 + "x16")))

    large = encoded(Image.radial_gradient("L").resize((4096, 4096)).convert("RGB"), "PNG")
    outcome = {"source_bytes": len(large)}
    with watch.probe("item 5 4096x4096 source, 512x512 edit", outcome):
        name, put = upload(client, large)
        outcome["put"] = put.status_code
        outcome.update(final_task(client, edit(image_url=name, image_size="512x512")))

    for size in ((8, 8), (1, 200000)):
        data = encoded(Image.new("RGB", size, "white"), "PNG")
        outcome = {}
        with watch.probe(f"item 6 {size[0]}x{size[1]} source", outcome):
            outcome.update(final_task(client, edit(image_url=data_url(data))))

    five_mb = encoded(Image.effect_noise((1450, 1450), 64).convert("RGB"), "PNG", compress_level=0)
    outcome = {"data_url_chars": len(data_url(five_mb))}
    with watch.probe("item 7 5 MB data: URL", outcome):
        outcome.update(final_task(client, edit(image_url=data_url(five_mb))))

    picture = Image.new("RGB", (64, 48), "orange")
    for image_format in ("PPM", "TGA", "PCX", "SGI", "ICO", "DDS", "QOI", "BMP", "TIFF", "GIF"):
        source = picture.convert("1") if image_format == "XBM" else picture
        outcome = {}
        with watch.probe(f"item 8 {image_format} source", outcome):
            outcome.update(summary(edit(image_url=data_url(encoded(source, image_format)))))

    generation = {"model": "tessera-demo", "prompt": "a lighthouse", "num_inference_steps": 1}
    for name, extra in [
        ("item 11 num_images true", {"num_images": True}),
        ('item 11 num_images "2"', {"num_images": "2"}),
        ('item 11 seed "7"', {"seed": "7"}),
        ("item 11 fullwidth digits in image_size", {"image_size": "\uff15\uff11\uff12x512"}),
    ]:
        outcome = {}
        with watch.probe(name, outcome):
            outcome.update(summary(post("/images/generations", json={**generation, **extra})))
    outcome = {}
    with watch.probe("item 11 broken JSON", outcome):
        broken = post(
            "/images/generations",
            content=b'{"model": "tessera-demo",\n "prompt": "x" "seed": 1}',
            headers={"content-type": "application/json"},
        )
        outcome.update(summary(broken))

    outcome = {}
    with watch.probe("item 13 own URL, bad signature", outcome):
        own = f"{server.api_url}/files/results/1/0.png?expires=9999999999&signature=00"
        outcome.update(summary(edit(image_url=own)))
    # The largest source a server accepts, decoded at once by several clients: the loop
    # must keep answering while it is decoded and scaled.
    outcome = {"source_bytes": len(large), "parallel": bombs}
    with watch.probe("item 5 4096x4096 sources in parallel (submit)", outcome):

        def one_large(_: int) -> int:
            return edit(image_url=upload(client, large)[0]).status_code

        with ThreadPoolExecutor(bombs) as pool:
            outcome["edit"] = sorted(set(pool.map(one_large, range(bombs))))
    # Last: on a server that accepts them, the bombs' jobs hold the worker for minutes.
    bomb = bomb_png(13000)
    outcome = {"bomb_bytes": len(bomb), "parallel": bombs}
    with watch.probe("item 5 13000x13000 PNG bombs (upload+edit)", outcome):

        def one_bomb(_: int) -> tuple[int, int]:
            name, put = upload(client, bomb)
            return put.status_code, edit(image_url=name).status_code

        with ThreadPoolExecutor(bombs) as pool:
            outcome["put,edit"] = sorted(set(pool.map(one_bomb, range(bombs))))
    client.close()


if __name__ == "__main__":
    main()
