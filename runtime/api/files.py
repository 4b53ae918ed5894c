"""Signed file URLs: results to GET and uploads to PUT, with no API key needed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from tessera.runtime.api.deps import Service
from tessera.runtime.errors import FileNotFound, PayloadTooLarge
from tessera.runtime.keys import ApiKey
from tessera.runtime.sources import UPLOAD_NAME, check_image, off_the_loop, upload_key
from tessera.runtime.storage import content_type_for

router = APIRouter(tags=["files"])

Expires = Annotated[str | None, Query()]
Signature = Annotated[str | None, Query()]


@router.get("/files/{key:path}", summary="Download a result by its signed URL")
async def get_file(
    key: str, service: Service, expires: Expires = None, signature: Signature = None
) -> Response:
    service.signer.verify(f"/v1/files/{key}", expires, signature)
    data = await service.files.get(key)
    return Response(
        data,
        media_type=content_type_for(key),
        headers={"Cache-Control": "private, max-age=3600"},
    )


@router.put("/uploads/{key_id}/{name}", status_code=204, summary="Upload a source image")
async def put_upload(
    key_id: str,
    name: str,
    request: Request,
    service: Service,
    expires: Expires = None,
    signature: Signature = None,
) -> Response:
    service.signer.verify(f"/v1/uploads/{key_id}/{name}", expires, signature)
    if not UPLOAD_NAME.match(name):
        raise FileNotFound("this link is invalid or has expired")
    limits = service.sources.limits
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limits.max_bytes:
            raise PayloadTooLarge(
                f"uploads are limited to {limits.max_bytes} bytes", field="body", rule="max_bytes"
            )
    await off_the_loop(check_image, bytes(body), limits, "body")
    await service.files.put(upload_key(ApiKey(key_id), name), bytes(body))
    return Response(status_code=204)
