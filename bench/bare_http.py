"""The least HTTP/1.1 server a benchmark's floor can stand on: a raw asyncio protocol on
uvloop (as uvicorn runs), keep-alive, one request at a time per connection (as the
benches' clients send them), every answer a 200 with a Content-Length.

``BareProcess`` runs one of the benches' servers built on it in a child process. A
``Handler`` gets the method, the target (path and query) and the body, and returns the
content type and the payload.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import httpx

from tests.support.server import free_port, stop_process, wait_for_http

Handler = Callable[[str, str, bytes], Awaitable[tuple[str, bytes]]]


class BareHttp(asyncio.Protocol):
    def __init__(self, handle: Handler):
        self.handle = handle
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head, found, rest = self.buffer.partition(b"\r\n\r\n")
        if not found:
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        length = next(
            (
                int(line.split(":", 1)[1])
                for line in lines
                if line.lower().startswith("content-length:")
            ),
            0,
        )
        if len(rest) < length:
            return
        self.buffer = rest[length:]
        asyncio.get_running_loop().create_task(self._answer(method, target, rest[:length]))

    async def _answer(self, method: str, target: str, body: bytes) -> None:
        content_type, payload = await self.handle(method, target, body)
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (content_type.encode(), len(payload), payload)
        )


async def serve(handle: Handler, port: int) -> None:
    """Answer on 127.0.0.1:``port`` until cancelled."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: BareHttp(handle), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


@dataclass
class BareProcess:
    """``script`` (one of bench/'s servers on ``serve``) in a child process, with the
    attributes of a ``ServerProcess`` that the benches' clients use."""

    script: str
    arguments: tuple[str, ...]
    folder: Path  # for its log
    port: int = field(default_factory=free_port)
    api_key: str = "none"
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def metrics_urls(self) -> list[str]:
        return [self.base_url + "/metrics"]

    @property
    def log_path(self) -> Path:
        return self.folder / f"{Path(self.script).stem}-{self.port}.log"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, timeout=30)

    def start(self) -> BareProcess:
        script = Path(__file__).with_name(self.script)
        command = [sys.executable, str(script), "--port", str(self.port), *self.arguments]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for_http(self.base_url + "/", self.process, self.script, self.log_path.read_text, 120)
        return self

    def kill(self) -> None:
        stop_process(self.process, signal.SIGKILL)
