"""One request straight into an ASGI application, as uvicorn hands it over after parsing:
no socket and no HTTP, for tests and benches that count or time the application alone."""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp


def post_scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The scope of an HTTP/1.1 POST to ``path`` from a local client."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def call(
    app: ASGIApp, scope: dict[str, Any], body: list[bytes], *, whole: bool = True
) -> list[dict[str, Any]]:
    """The messages ``app`` sent for a request whose body came in these parts, then the
    client left; ``whole=False``: it left before the body's end."""
    parts = [
        {"type": "http.request", "body": part, "more_body": i < len(body) - 1 or not whole}
        for i, part in enumerate(body)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return parts.pop(0) if parts else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent
