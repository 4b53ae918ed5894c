"""``/v1/webhooks``: the secret that signs the caller's webhooks (Replicate's path)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from tessera.runtime.api.deps import CurrentKey, KeyFirstRoute
from tessera.runtime.api.openapi import errors
from tessera.runtime.webhooks import webhook_secret

router = APIRouter(
    prefix="/webhooks", tags=["webhooks"], route_class=KeyFirstRoute, responses=errors(401, 429)
)


class WebhookSecret(BaseModel):
    key: str


@router.get(
    "/default/secret",
    response_model=WebhookSecret,
    summary="The whsec_ secret that signs this key's webhooks (Standard Webhooks)",
)
async def get_webhook_secret(request: Request, key: CurrentKey) -> WebhookSecret:
    return WebhookSecret(key=webhook_secret(request.app.state.signing_secret, key.id))
