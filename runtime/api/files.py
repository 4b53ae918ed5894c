"""Signed file URLs: results to GET and uploads to PUT, with no API key needed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from tessera.runtime.api.deps import Service
from tessera.runtime.api.openapi import errors
from tessera.runtime.errors import FileNotFound, UploadUsed
from tessera.runtime.keys import ApiKey
from tessera.runtime.sources import UPLOAD_NAME, check_image, off_the_loop, upload_key
from tessera.runtime.storage import content_type_for

router = APIRouter(tags=["files"], responses=errors(404, 422))

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


@router.put(
    "/uploads/{key_id}/{name}",
    status_code=204,
    responses=errors(409, 413),
    summary="Upload a source image",
)
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
    # The body is capped at the source limit as it streams in (bodylimit.BodyLimit).
    body = await request.body()
    await off_the_loop(check_image, body, service.sources.limits, "body")
    if not await service.files.create(upload_key(ApiKey(key_id), name), body):
        raise UploadUsed("this upload URL was already used; ask for a new one")
    return Response(status_code=204)
