"""``kubectl port-forward svc/NAME LOCAL:PORT`` for Services whose pods run on local nodes.

kubectl forwards through the kubelet's streaming API, which local nodes do not serve; this
does what it amounts to: it listens on 127.0.0.1:LOCAL and carries each connection to a
ready endpoint of the Service (read afresh for every connection, as kubectl picks one pod).
"""

from __future__ import annotations

import contextlib
import random
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator

_CHUNK = 65536


def _pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(_CHUNK):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    endpoints: Callable[[], list[str]]


class _Connection(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        endpoints = self.server.endpoints()
        if not endpoints:
            return  # as kubectl does, the client sees the connection close
        host, _, port = random.choice(endpoints).rpartition(":")
        with socket.create_connection((host, int(port)), timeout=10) as upstream:
            upstream.settimeout(None)
            back = threading.Thread(target=_pump, args=(upstream, self.request), daemon=True)
            back.start()
            _pump(self.request, upstream)
            back.join()


@contextlib.contextmanager
def port_forward(endpoints: Callable[[], list[str]], local_port: int) -> Iterator[int]:
    """Forward 127.0.0.1:``local_port`` to ``endpoints()`` (``["address:port", ...]``)."""
    server = _Server(("127.0.0.1", local_port), _Connection)
    server.endpoints = endpoints
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
