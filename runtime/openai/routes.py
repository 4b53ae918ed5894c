"""``/openai/v1``: OpenAI's Images API on the same models, queue, billing and keys."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tessera.runtime.api.deps import Service, get_keys
from tessera.runtime.errors import NotFound, Unauthorized
from tessera.runtime.keys import ApiKey, KeyRing
from tessera.runtime.openai.errors import OpenAIRoute
from tessera.runtime.openai.images import OpenAIImages, model_record
from tessera.runtime.openai.multipart import edit_form
from tessera.runtime.openai.schema import (
    EditFields,
    ImageRequest,
    ImagesResponse,
    ModelList,
    ModelRecord,
)

PREFIX = "/openai"

router = APIRouter(prefix=PREFIX, route_class=OpenAIRoute, tags=["openai"])

_bearer = HTTPBearer(
    auto_error=False, description="Your Tessera API key, as `Authorization: Bearer KEY`."
)


async def bearer_key(
    keys: Annotated[KeyRing, Depends(get_keys)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> ApiKey:
    if credentials is None:
        raise Unauthorized("missing API key: send it as 'Authorization: Bearer KEY'")
    return keys.authenticate(credentials.credentials)


async def get_calls(request: Request) -> OpenAIImages:
    calls: OpenAIImages = request.app.state.openai
    return calls


BearerKey = Annotated[ApiKey, Depends(bearer_key)]
Calls = Annotated[OpenAIImages, Depends(get_calls)]

_EDIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "prompt"],
                    "properties": {
                        "image": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "One or more source images (also as image[]).",
                        },
                        "mask": {
                            "type": "string",
                            "format": "binary",
                            "description": "Refused: no model here does inpainting.",
                        },
                        **EditFields.model_json_schema()["properties"],
                    },
                }
            }
        },
    }
}


def _answer(body: ImagesResponse | None) -> Any:
    # Nobody reads an answer to a client that left; the job runs on regardless.
    return body if body is not None else Response(status_code=499)


@router.post(
    "/v1/images/generations",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    summary="Make images and wait for them (OpenAI)",
)
async def create_image(
    body: ImageRequest, request: Request, key: BearerKey, service: Service, calls: Calls
) -> Any:
    return _answer(await calls.create(request, service, key, body))


@router.post(
    "/v1/images/edits",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    summary="Edit images and wait for them (OpenAI)",
    openapi_extra=_EDIT_BODY,
)
async def create_image_edit(
    request: Request, key: BearerKey, service: Service, calls: Calls
) -> Any:
    async with edit_form(request, calls.settings) as form:
        return _answer(await calls.create(request, service, key, form.request(), form))


@router.get("/v1/models", summary="The image models (OpenAI)")
async def list_models(_key: BearerKey, service: Service) -> ModelList:
    return ModelList(data=[model_record(m) for m in service.catalog.all()])


@router.get("/v1/models/{model:path}", summary="One image model (OpenAI)")
async def get_model(model: str, _key: BearerKey, service: Service) -> ModelRecord:
    return model_record(service.catalog.get(model))


@router.api_route(
    "/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False
)
async def unknown(path: str, request: Request) -> None:
    raise NotFound(f"Invalid URL ({request.method} {PREFIX}/{path})")
