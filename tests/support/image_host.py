"""A real HTTP(S) server on one loopback address that serves a PNG (or a redirect) and
records the Host header of every request, so a test can count what reached it."""

from __future__ import annotations

import io
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


def served_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "teal").save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class ImageHost:
    """Started on construction; ``close`` stops it."""

    address: str
    port: int = 0
    redirect_to: str | None = None
    tls: ssl.SSLContext | None = None
    hosts_seen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host.hosts_seen.append(self.headers["Host"])
                if host.redirect_to:
                    self.send_response(302)
                    self.send_header("Location", host.redirect_to)
                    self.end_headers()
                    return
                body = served_png()
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer((self.address, self.port), Handler)
        self.port = self.server.server_address[1]
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
