"""Every error leaves the API in one envelope, mapped here and nowhere else."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tessera.runtime.api.bodylimit import BodyTooLarge
from tessera.runtime.errors import PayloadTooLarge, TesseraError

log = logging.getLogger(__name__)


def envelope(status: int, message: str, code: str, **extra: Any) -> JSONResponse:
    body = {"code": status, "message": message, "status": "error", "error": code}
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status_code=status)


def _field_name(location: tuple[Any, ...]) -> str:
    parts = [str(part) for part in location if part not in ("body", "query", "path", "header")]
    # A union type names its branch (str, ImageDimensions) in the location; drop those.
    parts = [p for p in parts if not p[:1].isupper() and p not in ("str", "int", "float")]
    return ".".join(parts) or "body"


async def _tessera_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, TesseraError)
    return JSONResponse(error.to_dict(), status_code=error.status_code, headers=error.headers())


def _broken_json(error: RequestValidationError) -> JSONResponse | None:
    """A body that is not JSON at all: say where it breaks, and name no field (FastAPI puts
    the character offset where a field would be)."""
    broken = [item for item in error.errors() if item.get("type") == "json_invalid"]
    if not broken or not isinstance(error.body, str):
        return None
    offset = broken[0]["loc"][-1]
    where = json.JSONDecodeError(
        broken[0].get("ctx", {}).get("error", "invalid"), error.body, offset
    )
    return envelope(
        422,
        f"the body is not valid JSON: {where.msg} at line {where.lineno}, column {where.colno}",
        "parameter.invalid",
        field="body",
        rule="json_invalid",
        line=where.lineno,
        column=where.colno,
    )


async def _validation_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    if (response := _broken_json(error)) is not None:
        return response
    problems = []
    for item in error.errors():
        field = _field_name(tuple(item.get("loc", ())))
        problems.append({"field": field, "rule": item.get("type"), "message": item.get("msg")})
    # A value that fits no branch of a union fails once per branch; the deepest location
    # (``image_size.height`` rather than ``image_size``) is the branch the client meant.
    first = max(
        problems,
        key=lambda problem: str(problem["field"]).count("."),
        default={"field": "body", "rule": "invalid", "message": "invalid"},
    )
    message = f"{first['field']}: {first['message']}"
    if first["rule"] == "extra_forbidden":
        message = f"{first['field']}: unknown field"
    return envelope(
        422,
        message,
        "parameter.invalid",
        field=first["field"],
        rule=first["rule"],
        errors=problems,
    )


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    if isinstance(error, BodyTooLarge):
        return await _tessera_error(
            request,
            PayloadTooLarge(
                f"the request body is larger than this endpoint's limit of {error.limit} bytes",
                field="body",
                rule="max_bytes",
            ),
        )
    codes = {404: "not_found", 405: "method.not_allowed"}
    response = envelope(
        error.status_code, str(error.detail), codes.get(error.status_code, "http.error")
    )
    if error.headers:
        response.headers.update(error.headers)
    return response


async def _unexpected(_request: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=error)
    return envelope(500, "internal error; the request was not completed", "internal")


def install(app: FastAPI) -> None:
    app.add_exception_handler(TesseraError, _tessera_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
