"""uvicorn's HTTP protocol with the deadlines it lacks for slow clients.

uvicorn times out only an idle kept-alive connection. A client that sends its headers a
line a second, or its body a byte a second, keeps a connection (and, for a body, a task and
its buffer) for as long as it likes, and a few hundred such clients exhaust a server. This
protocol cuts both, as nginx's ``client_header_timeout`` and Kestrel's minimum request body
data rate do:

- a request's headers must be complete within ``header_seconds`` of its first byte (or of
  the connection, for the first request);
- after ``body_grace_seconds``, a body must have arrived at ``min_body_bytes_per_second``
  on average. Time in which the server itself stopped reading (flow control, while the
  application is busy) does not count against the client.

A cut request is answered 408 when nothing was answered yet, and its connection closed.

It also sends a response whose length is known (every JSON answer) in one write, not two:
uvicorn writes the head and then the body, each a TCP segment that wakes the client, and a
submission paid for the second write and wake-up on both sides (bench/gateway.py).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_RATE_CHECK_SECONDS = 0.5


@dataclass(frozen=True)
class ClientDeadlines:
    header_seconds: float = 5.0
    body_grace_seconds: float = 5.0
    min_body_bytes_per_second: int = 1024


def _timeout_response(message: str) -> bytes:
    body = json.dumps(
        {"code": 408, "message": message, "status": "error", "error": "request.timeout"}
    ).encode()
    return (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )


class _HeadWithBody:
    """One response's transport: the head of a response with a Content-Length is held back
    and leaves with the body, in one write. Everything else passes straight through (a
    ``100 Continue``, a streamed response's head, a HEAD request's head, which has no body
    write to wait for)."""

    def __init__(self, transport: asyncio.Transport, cycle: Any):
        self._transport = transport
        self._cycle = cycle
        self._head = b""
        self._head_seen = False

    def write(self, data: bytes) -> None:
        if not self._head_seen and self._cycle.response_started:
            self._head_seen = True
            if self._cycle.chunked_encoding is False and self._cycle.scope["method"] != "HEAD":
                self._head = data
                return
        if self._head:
            data, self._head = self._head + data, b""
        self._transport.write(data)

    def close(self) -> None:
        if self._head:
            self._transport.write(self._head)
            self._head = b""
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class DeadlineProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` plus the header and body deadlines of ``deadlines``."""

    deadlines: ClassVar[ClientDeadlines] = ClientDeadlines()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_bytes = 0
        self._body_counted_seconds = 0.0

    @classmethod
    def with_deadlines(cls, deadlines: ClientDeadlines) -> type[DeadlineProtocol]:
        """A subclass for uvicorn's ``http=``, which takes a class, not an instance."""
        return type(cls.__name__, (cls,), {"deadlines": deadlines})

    # -- headers ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(
            self.deadlines.header_seconds, self._headers_too_slow
        )

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        idle = self.cycle is None or self.cycle.response_complete
        self._cut(
            f"the request headers did not arrive within {self.deadlines.header_seconds:g} s",
            answer=idle,
        )

    def on_headers_complete(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not None and self.cycle is not previous:
            self.cycle.transport = _HeadWithBody(self.transport, self.cycle)  # type: ignore[assignment]
        self._body_bytes = 0
        self._body_counted_seconds = 0.0
        self._body_timer = self.loop.call_later(_RATE_CHECK_SECONDS, self._check_body_rate)

    # -- body -------------------------------------------------------------------------------

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def _check_body_rate(self) -> None:
        self._body_timer = None
        if not self.flow.read_paused:
            self._body_counted_seconds += _RATE_CHECK_SECONDS
        elapsed = self._body_counted_seconds
        rate = self.deadlines.min_body_bytes_per_second
        if elapsed >= self.deadlines.body_grace_seconds and self._body_bytes < rate * elapsed:
            answered = self.cycle is not None and self.cycle.response_started
            self._cut(
                f"the request body arrived slower than {rate} bytes/s",
                answer=not answered,
            )
            return
        self._body_timer = self.loop.call_later(_RATE_CHECK_SECONDS, self._check_body_rate)

    def on_message_complete(self) -> None:
        self._stop_body_timer()
        super().on_message_complete()

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    # -- both -------------------------------------------------------------------------------

    def _cut(self, message: str, *, answer: bool) -> None:
        if self.transport.is_closing():
            return
        if answer:
            self.transport.write(_timeout_response(message))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._stop_body_timer()
        super().connection_lost(exc)
