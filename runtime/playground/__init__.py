"""The browser Playground: static files served at ``/playground``, talking to the public API.

The Playground is a client like any other: it holds no server-side state and calls only the
documented ``/v1`` endpoints with the user's key, so it works unchanged in front of
``tessera serve`` or the gateway. Its assets are plain ES modules shipped inside the package,
so nothing is built and nothing is fetched from outside (clusters often have no internet).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

__all__ = ["PATH", "STATIC_DIR", "mount"]

PATH = "/playground"
STATIC_DIR = Path(__file__).parent / "static"

# The page handles an API key, so it refuses framing, inline script and third-party code.
# Result images may live on another host (object storage), hence the wide img-src.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        "img-src 'self' data: blob: http: https:; connect-src 'self' http: https:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate on every load (ETags make that cheap) so an upgrade is never half-applied.
    "Cache-Control": "no-cache",
}


class _Assets(StaticFiles):
    """Static files with the Playground's security and caching headers on every answer."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(_HEADERS)
        return response


def mount(app: FastAPI) -> None:
    """Serve the Playground at ``/playground/`` (``/playground`` redirects there).

    The trailing slash matters: the page loads its modules by relative URL, which keeps it
    working behind a proxy that adds a path prefix.
    """

    @app.get(PATH, include_in_schema=False)
    async def playground_root() -> RedirectResponse:
        return RedirectResponse(PATH + "/")

    app.mount(PATH, _Assets(directory=STATIC_DIR, html=True), name="playground")
