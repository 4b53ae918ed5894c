"""A webhook receiver on loopback: a real HTTP server in a thread that records every POST
and answers each as the test says (fail the first N, redirect, or accept)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def payload(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class WebhookReceiver:
    port: int = 0
    # The status to answer (and headers), by delivery: the default accepts everything.
    answer: Callable[[Delivery], tuple[int, dict[str, str]]] = lambda _: (204, {})
    deliveries: list[Delivery] = field(default_factory=list)
    _arrived: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def record(self, delivery: Delivery) -> tuple[int, dict[str, str]]:
        with self._arrived:
            self.deliveries.append(delivery)
            self._arrived.notify_all()
        return self.answer(delivery)

    def at(self, path: str) -> list[Delivery]:
        with self._arrived:
            return [d for d in self.deliveries if d.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 60) -> list[Delivery]:
        """The first ``count`` deliveries to ``path``, once they have arrived."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(found := [d for d in self.deliveries if d.path == path]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(found)} of {count} deliveries to {path}: {found}")
                self._arrived.wait(left)
            return found[:count]


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            delivery = Delivery(
                self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()
            )
            status, headers = receiver.record(delivery)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
