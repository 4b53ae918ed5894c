"""OpenAI's Images API beside the native one: ``OpenAI(base_url=".../openai/v1")`` works.

The same models, queue, limits, billing and keys as ``/v1``; only the shape differs. Any app
built by ``create_app`` mounts it, so ``tessera serve`` and the gateway both serve it.
"""

from __future__ import annotations

from fastapi import FastAPI

from tessera.runtime.openai.images import OpenAIImages
from tessera.runtime.openai.routes import PREFIX, router
from tessera.runtime.openai.settings import OpenAISettings
from tessera.runtime.openai.waiting import WaitingRequests

__all__ = ["PREFIX", "OpenAISettings", "mount"]


def mount(app: FastAPI, settings: OpenAISettings) -> None:
    app.state.openai = OpenAIImages(settings, WaitingRequests(settings.max_waiting_per_key))
    app.include_router(router)
