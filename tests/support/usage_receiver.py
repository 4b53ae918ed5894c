"""A real HTTP receiver of CloudEvents batches that fails at random, the way a billing
backend does on a bad day: 503s, 429s, dropped connections, and writes that succeed but
answer 500 (so the sender must send them again). It keeps every event id it stored."""

from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tessera.runtime.usage.formats import BATCH_CONTENT_TYPE


@dataclass
class UsageReceiver:
    """Started on construction; ``close`` stops it. ``failure_rate`` of requests fail."""

    failure_rate: float = 0.5
    seed: int = 0
    # Answer every request with this status instead (a receiver that refuses the batch).
    refuse_with: int | None = None
    # Every id stored, in arrival order, repeats included (at-least-once shows as repeats).
    received: list[str] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    bad_requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self
        chance = random.Random(self.seed)
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    roll = chance.random() / max(receiver.failure_rate, 1e-9)
                    if self.headers["Content-Type"] != BATCH_CONTENT_TYPE:
                        receiver.bad_requests.append(self.headers["Content-Type"])
                        return self._answer(415)
                    events = json.loads(body)
                    if receiver.refuse_with is not None:
                        return self._answer(receiver.refuse_with)
                    if roll < 0.25:
                        return self._answer(503)
                    if roll < 0.5:
                        return self._answer(429)
                    if roll < 0.75:
                        self.close_connection = True
                        self.connection.close()  # no answer at all
                        return None
                    receiver.received.extend(event["id"] for event in events)
                    return self._answer(500 if roll < 1 else 200)

            def _answer(self, status: int) -> None:
                receiver.answers.append(status)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
