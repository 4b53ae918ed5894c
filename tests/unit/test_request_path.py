"""What every request pays for: no route or dependency hops to a thread.

FastAPI runs a plain ``def`` endpoint or dependency in its thread pool; one such hop per
submission cost a gateway more CPU than the rest of the request (bench/gateway.py,
docs/benchmarks.md), so the API's routes and dependencies are all ``async def``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import Mount

from tessera.runtime.api.app import create_app
from tessera.runtime.config import ServerConfig
from tessera.runtime.keys import KeyRing


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
