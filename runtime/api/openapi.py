"""The OpenAPI document, corrected where FastAPI's generation loses what the API does.

- FastAPI passes every schema through its OpenAPI models, whose numeric bounds are floats:
  a seed's maximum, 2**64 - 1, came out as 1.8446744073709552e+19 (which is 2**64), so a
  schema-valid seed was refused. Bounds of integer schemas are published as exact integers.
- A submission's body is described by the served models' own parameter schemas (the ones
  ``/base_models`` publishes, with each model's limits), one per model: generations list the
  text-to-image models and edits the image-to-image ones, so a body the schema allows is
  one the endpoint accepts, and a client (or a fuzzer) sees which models exist.
- Every error a route can answer is declared, with the one envelope they all share.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from tessera.runtime.jobs.base import MAX_JOB_ID
from tessera.runtime.models import ModelSpec
from tessera.runtime.params import MAX_SEED, MIN_SEED, GenerationRequest, Task, request_schema

_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
# Integers beyond 2**53 that the API uses as bounds, by the float FastAPI turns them into.
_EXACT = {float(bound): bound for bound in (MIN_SEED, MAX_SEED, MAX_JOB_ID)}


class ErrorBody(BaseModel):
    """The one error envelope (Hyperstack's, plus the machine code and offending field)."""

    code: int
    message: str
    status: str
    error: str
    field: str | None = None
    rule: str | None = None


_DESCRIPTIONS = {
    400: "The request does not fit the model (an edit sent to a text-to-image model)",
    401: "Missing or unknown API key",
    403: "The key is valid but may not do this (usage needs an admin key)",
    404: "No such model, job or file (another key's job answers the same)",
    409: "This upload URL was already used, or the job to cancel already finished",
    413: "The body or an image is larger than its limit",
    422: "A field breaks a rule; the body names the field and the rule",
    429: "Too many requests for this key; Retry-After says when to try again",
    503: "The job store cannot be reached; nothing was lost",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that can answer ``codes``."""
    declared: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in codes
    }
    if 429 in declared:
        declared[429]["headers"] = {
            "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
        }
    return declared


def _exact_integers(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for name in _BOUNDS:
                value = node.get(name)
                if isinstance(value, float):
                    node[name] = _EXACT.get(value, int(value))
        for child in node.values():
            _exact_integers(child)
    elif isinstance(node, list):
        for child in node:
            _exact_integers(child)


def _request_body(models: list[ModelSpec], name: str) -> dict[str, Any]:
    """A ``oneOf`` of the models' request schemas, each naming its model.

    A model's schema describes values; where the request model also takes null (meaning
    "the model's default"), the property says so.
    """
    nullable = {
        field
        for field, info in GenerationRequest.model_fields.items()
        if not info.is_required() and info.default is None
    }
    choices = []
    for model in models:
        schema = request_schema(model.limits, model.task, model.refused)
        schema.pop("$schema")
        for field in nullable & set(schema["properties"]):
            schema["properties"][field] = {"anyOf": [schema["properties"][field], {"type": "null"}]}
        schema["title"] = f"{name} for {model.name}"
        schema["properties"] = {"model": {"const": model.name}, **schema["properties"]}
        schema["required"] = ["model", *schema["required"]]
        schema["additionalProperties"] = False
        choices.append(schema)
    return {"title": name, "oneOf": choices}


def _describe_submissions(document: dict[str, Any], models: list[ModelSpec]) -> None:
    schemas = document["components"]["schemas"]
    del schemas["GenerationRequest"]
    for path, name, task in (
        ("/v1/images/generations", "GenerationRequest", Task.TEXT_TO_IMAGE),
        ("/v1/images/edits", "EditRequest", Task.IMAGE_TO_IMAGE),
    ):
        schemas[name] = _request_body([m for m in models if m.task is task], name)
        content = document["paths"][path]["post"]["requestBody"]["content"]
        content["application/json"]["schema"] = {"$ref": f"#/components/schemas/{name}"}


def install(app: FastAPI, models: list[ModelSpec]) -> None:
    """Make ``app.openapi`` build (once) the corrected document."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _describe_submissions(document, models)
            _exact_integers(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]
