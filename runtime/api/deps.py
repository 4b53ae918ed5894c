"""Request dependencies: the caller's key and the shared service, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from tessera.runtime.keys import ApiKey, KeyRing
from tessera.runtime.service import ImageService

_api_key_header = APIKeyHeader(
    name="api_key", auto_error=False, description="Your Tessera API key (no Bearer prefix)."
)


def get_service(request: Request) -> ImageService:
    service: ImageService = request.app.state.service
    return service


def get_keys(request: Request) -> KeyRing:
    keys: KeyRing = request.app.state.keys
    return keys


def current_key(
    keys: Annotated[KeyRing, Depends(get_keys)],
    presented: Annotated[str | None, Security(_api_key_header)],
) -> ApiKey:
    return keys.authenticate(presented)


Service = Annotated[ImageService, Depends(get_service)]
CurrentKey = Annotated[ApiKey, Depends(current_key)]
