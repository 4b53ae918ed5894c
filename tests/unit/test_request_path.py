"""What every request pays for: no route or dependency hops to a thread, and no dependency
solving for a plain JSON submission.

FastAPI runs a plain ``def`` endpoint or dependency in its thread pool; one such hop per
submission cost a gateway more CPU than the rest of the request (bench/gateway.py,
docs/benchmarks.md), so the API's routes and dependencies are all ``async def``. Its
dependency solving was a fifth of a gateway's CPU per submission: a valid
``application/json`` submission is answered without it (``SubmitRoute``).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import Mount

from tessera.runtime.api.app import create_app
from tessera.runtime.config import ServerConfig, gateway_config
from tessera.runtime.keys import KeyRing
from tessera.runtime.settings import GatewaySettings
from tests.support.asgi import call, post_scope
from tests.support.gateway import demo_image_models, write_models
from tests.support.redis_server import RedisServer


def _api_routes(routes: Iterable[Any]) -> Iterator[APIRoute]:
    """Every APIRoute, through included routers (FastAPI keeps them nested) and mounts."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (router := getattr(route, "original_router", None)) is not None:
            yield from _api_routes(router.routes)
        elif isinstance(route, Mount):
            yield from _api_routes(route.routes)


def _calls(dependant: Dependant) -> Iterator[Any]:
    if dependant.call is not None:
        yield dependant.call
    for sub in dependant.dependencies:
        yield from _calls(sub)


def _awaited(call: Any) -> bool:
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(
        getattr(call, "__call__", None)  # noqa: B004 - security schemes are callable objects
    )


def test_no_route_or_dependency_runs_in_the_thread_pool() -> None:
    config = ServerConfig(
        queue="redis://127.0.0.1:1/0",
        storage="file:///nonexistent",
        signing_secret=b"secret",
        models=[],
        keys=KeyRing.from_keys(["key"], b"ids"),
        public_url="http://127.0.0.1",
        embedded_worker=False,
    )
    routes = list(_api_routes(create_app(config).routes))
    assert {"create_generation", "get_task", "create_image"} <= {r.name for r in routes}
    threaded = {
        f"{route.path}: {getattr(call, '__qualname__', call)}"
        for route in routes
        for call in _calls(route.dependant)
        if not _awaited(call)
    }
    assert threaded == set()


def _gateway_app(redis_server: RedisServer, tmp_path: Path) -> FastAPI:
    settings = GatewaySettings(
        queue=redis_server.url,
        storage=f"file://{tmp_path / 'storage'}",
        models=write_models(tmp_path / "models.yaml", demo_image_models()),
        api_keys=("key",),
        signing_secret="secret",
    )
    return create_app(gateway_config(settings).config)


async def test_a_plain_json_submission_solves_no_dependencies(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted, not timed: a gateway over a real redis-server answers a valid
    ``application/json`` submission without FastAPI's dependency solving; the same body
    with a charset (FastAPI's way) solves them once, and both queue a job."""
    app = _gateway_app(redis_server, tmp_path)
    solved = 0
    solve = fastapi.routing.solve_dependencies

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal solved
        solved += 1
        return await solve(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counted)
    body = b'{"model": "tessera-demo", "prompt": "a lighthouse"}'
    answers = []
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as client,
    ):
        for content_type in ("application/json", "application/json; charset=utf-8"):
            response = await client.post(
                "/v1/images/generations",
                content=body,
                headers={"api_key": "key", "content-type": content_type},
            )
            answers.append((response.status_code, response.json()["status"], solved))
    assert answers == [(200, "queued", 0), (200, "queued", 1)]


async def test_a_client_gone_mid_body_raises_nothing_out_of_the_app(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """uvicorn logs whatever the app raises as an unhandled error with its traceback: a
    submission whose client left before its body was whole is a 400 that nobody reads."""
    app = _gateway_app(redis_server, tmp_path)
    headers = [(b"api_key", b"key"), (b"content-type", b"application/json")]
    scope = post_scope("/v1/images/generations", [*headers, (b"content-length", b"60")])
    async with app.router.lifespan_context(app):
        store = app.state.service.store
        before = await store.queue_depth("tessera-demo")  # the server is the module's
        sent = await call(app, scope, [b'{"model": "tessera-'], whole=False)
        after = await store.queue_depth("tessera-demo")
    assert sent[0]["status"] == 400
    assert after == before  # nothing was queued
