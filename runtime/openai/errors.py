"""Errors under ``/openai`` in OpenAI's shape, so the SDK raises the class a caller expects.

``{"error": {"message", "type", "param", "code"}}`` with the status the SDK maps: 400
``BadRequestError`` (every parameter error, including those the native API answers with 422),
401 ``AuthenticationError``, 404 ``NotFoundError``, 429 ``RateLimitError``. The mapping lives
in the route class, so it applies to these routes only and the native API keeps its envelope.

    TesseraError (tessera.runtime.errors)
    ├── TooManyWaiting   429  the key already holds as many open requests as allowed
    ├── JobFailed        500  the job failed after its attempts; nothing was billed
    └── JobStillRunning  504  the wait ran out; the job goes on and its id says where to look

The last two carry ``x-should-retry: false``: a retry by the SDK would submit a second job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from tessera.runtime.errors import InvalidParameter, TesseraError

log = logging.getLogger(__name__)

# Native field names as OpenAI's parameters call them.
_PARAMS = {"image_size": "size", "num_images": "n", "image_url": "image", "image_urls": "image"}


class TooManyWaiting(TesseraError):
    status_code = 429
    code = "rate_limit.waiting_requests"


class JobFailed(TesseraError):
    status_code = 500
    code = "job.failed"


class JobStillRunning(TesseraError):
    status_code = 504
    code = "job.still_running"

    def __init__(self, job_id: int, status: str, waited: float):
        super().__init__(
            f"job {job_id} is still {status} after {waited:.0f} s; it goes on and is billed "
            f"once when it completes: read it at GET /v1/images/tasks/{job_id} (api_key header)"
        )
        self.job_id = job_id


def param_name(field: str | None) -> str | None:
    """``image_size.width`` -> ``size``: the top-level parameter, named as OpenAI names it."""
    if not field:
        return None
    top = field.split(".")[0].split("[")[0]
    return _PARAMS.get(top, top)


def _type_for(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_response(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": _type_for(status), "param": param, "code": code}}
    response = JSONResponse(body, status_code=status)
    if status == 429:
        response.headers["retry-after"] = "1"
    if status >= 500:
        response.headers["x-should-retry"] = "false"
    return response


def _from_tessera(error: TesseraError) -> JSONResponse:
    # OpenAI answers every parameter error with 400; 422 would be the SDK's
    # UnprocessableEntityError, which callers do not catch as a bad request.
    status = 400 if isinstance(error, InvalidParameter) else error.status_code
    param = param_name(error.field)
    message = error.message
    if error.field and param and message.startswith(error.field + ":"):
        message = param + message.removeprefix(error.field)
    response = error_response(status, message, error.code, param)
    if isinstance(error, JobStillRunning):
        response.headers["x-tessera-job-id"] = str(error.job_id)
    return response


def _from_validation(error: RequestValidationError) -> JSONResponse:
    problems = error.errors()
    if not problems:
        return error_response(400, "the request is invalid", "parameter.invalid")
    first = problems[0]
    location = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = param_name(location[0]) if location else None
    rule = str(first.get("type", "invalid"))
    message = str(first.get("msg", "invalid"))
    if rule == "extra_forbidden":
        message = f"Unknown parameter: '{param}'"
    elif rule == "missing":
        message = f"Missing required parameter: '{param}'"
    elif param:
        message = f"{'.'.join(location)}: {message}"
    return error_response(400, message, f"parameter.{rule}", param)


def to_response(error: Exception) -> JSONResponse:
    if isinstance(error, TesseraError):
        return _from_tessera(error)
    if isinstance(error, RequestValidationError):
        return _from_validation(error)
    if isinstance(error, HTTPException):
        return error_response(error.status_code, str(error.detail), "http.error")
    log.exception("unhandled error", exc_info=error)
    return error_response(500, "internal error; the request was not completed", "internal")


class OpenAIRoute(APIRoute):
    """A route whose every error, validation included, leaves in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as error:
                return to_response(error)

        return handle
