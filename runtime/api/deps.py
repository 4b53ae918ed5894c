"""Request dependencies: the caller's key and the shared service, as ``Annotated`` aliases.

Every dependency is ``async def`` although none awaits: FastAPI runs a plain ``def``
dependency in its thread pool, and two thread hand-offs per request cost a gateway more CPU
than the submission itself (bench/gateway.py, docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request, Response, Security
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader

from tessera.runtime.errors import Forbidden
from tessera.runtime.keys import ApiKey, KeyRing
from tessera.runtime.service import ImageService

API_KEY_HEADER = "api_key"

_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="Your Tessera API key (no Bearer prefix)."
)


async def get_service(request: Request) -> ImageService:
    service: ImageService = request.app.state.service
    return service


async def get_keys(request: Request) -> KeyRing:
    keys: KeyRing = request.app.state.keys
    return keys


def authenticate(request: Request) -> ApiKey:
    """The caller's key, checked once per request and kept on ``request.state``.

    Read through the dictionary behind ``request.state`` (the scope's ``state``): a first
    look up of a missing attribute raises and words an ``AttributeError``, a fiftieth of a
    gateway's CPU per submission (bench/gateway.py)."""
    stash: dict[str, Any] = request.scope.setdefault("state", {})
    key: ApiKey | None = stash.get("api_key")
    if key is None:
        keys: KeyRing = request.app.state.keys
        key = keys.authenticate(request.headers.get(API_KEY_HEADER))
        stash["api_key"] = key
    return key


class KeyFirstRoute(APIRoute):
    """A route that checks the key before FastAPI reads the body (its dependencies run only
    after), so a client without a key cannot make the server read a body at all."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            authenticate(request)
            return await handler(request)

        return checked


async def current_key(
    request: Request, _presented: Annotated[str | None, Security(_api_key_header)]
) -> ApiKey:
    # ``_presented`` puts the header in the OpenAPI document; ``authenticate`` reads it.
    return authenticate(request)


async def admin_key(key: Annotated[ApiKey, Depends(current_key)]) -> ApiKey:
    if not key.admin:
        raise Forbidden("only an admin key may read usage; this key is not one")
    return key


Service = Annotated[ImageService, Depends(get_service)]
CurrentKey = Annotated[ApiKey, Depends(current_key)]
AdminKey = Annotated[ApiKey, Depends(admin_key)]
