"""``/v1/base_models``: what can be called, with each model's parameter schema and price."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from tessera.runtime.api.deps import CurrentKey, KeyFirstRoute, Service
from tessera.runtime.api.openapi import errors
from tessera.runtime.params import Task

router = APIRouter(tags=["models"], route_class=KeyFirstRoute, responses=errors(401, 413, 422, 429))


@router.get("/base_models", summary="List the models, optionally by modality")
async def list_models(
    _key: CurrentKey,
    service: Service,
    inference: Annotated[
        bool | None, Query(description="Only models that serve inference.")
    ] = None,
    modalities: Annotated[
        list[Task] | None, Query(description="Repeat to list models of any of these tasks.")
    ] = None,
) -> dict[str, Any]:
    # Every model here serves inference, so `inference=false` lists none.
    models = [] if inference is False else service.catalog.all()
    if modalities:
        models = [model for model in models if set(model.tasks) & set(modalities)]
    return {"models": [model.public_record() for model in models]}
