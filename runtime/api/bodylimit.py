"""A cap on request bodies, counted as they stream in, that never buffers past the cap.

Starlette has a body limit of its own, but it answers a too-long ``Content-Length`` with
413 whatever the application answered, so a request without a key would learn the size
limit before the 401. Here the cap is enforced only when the application reads the body:
routes check the key first (``deps.KeyFirstRoute``), so a client without a key is refused
with 401 and nothing of its body is read.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LIMIT_SCOPE_KEY = "tessera.max_body_bytes"


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` (FastAPI passes an ``HTTPException`` from body reading on)."""

    def __init__(self, limit: int):
        super().__init__(status_code=413)
        self.limit = limit


class BodyLimit:
    """``default`` bytes for any request, or the limit of the longest matching path prefix."""

    def __init__(self, app: ASGIApp, default: int, by_prefix: Mapping[str, int]):
        self.app = app
        self.default = default
        self.by_prefix = sorted(by_prefix.items(), key=lambda item: -len(item[0]))

    def limit_for(self, path: str) -> int:
        return next((n for prefix, n in self.by_prefix if path.startswith(prefix)), self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        scope[LIMIT_SCOPE_KEY] = limit
        declared = Headers(scope=scope).get("content-length", "")
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            if declared.isdigit() and int(declared) > limit:
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, receive_within_limit, send)
