"""``/v1/images``: submit generations and edits, poll tasks, get an upload URL."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from tessera.runtime.api.deps import CurrentKey, KeyFirstRoute, Service, authenticate
from tessera.runtime.api.openapi import errors
from tessera.runtime.control import (
    CANCEL_AFTER_HEADER,
    IDEMPOTENCY_HEADER,
    REPLAYED_HEADER,
    SubmitControls,
)
from tessera.runtime.errors import InvalidParameter
from tessera.runtime.jobs.base import MAX_JOB_ID, Job, JobStatus
from tessera.runtime.keys import ApiKey
from tessera.runtime.params import GenerationRequest
from tessera.runtime.service import MAX_WAIT_SECONDS, UPLOAD_URL_TTL_SECONDS, ImageService

router = APIRouter(
    prefix="/images",
    tags=["images"],
    route_class=KeyFirstRoute,
    responses=errors(401, 413, 422, 429, 503),
)
SUBMIT_ERRORS = errors(400, 404)


class JobAccepted(BaseModel):
    """The job id at once; with ``Prefer: wait=N``, the whole task (as
    ``GET /tasks/{job_id}`` answers) if it finished within N seconds."""

    job_id: int
    status: JobStatus


PREFER_HEADER = Header(
    alias="Prefer",
    description=(
        "`wait=N` (RFC 7240, Replicate's convention): hold the submission up to N seconds "
        f"(at most {MAX_WAIT_SECONDS:g}; `wait` alone means {MAX_WAIT_SECONDS:g}) and answer "
        "with the finished task if it finishes by then, the job id otherwise. Other "
        "preferences are ignored."
    ),
)
SUBMIT_HEADERS = {
    "Preference-Applied": {
        "description": "`wait=N` as honoured (N capped), when the request asked to wait",
        "schema": {"type": "string"},
    },
    REPLAYED_HEADER: {
        "description": "`true` when the Idempotency-Key named an earlier submission, whose"
        " job this is: nothing new was queued",
        "schema": {"type": "string"},
    },
}


def prefer_wait(header: str | None) -> float | None:
    """The seconds a ``Prefer`` header asks a submission to wait, capped; None if it does not.

    An unknown preference is ignored, as RFC 7240 says; a ``wait`` that is not a number of
    seconds is a 422 naming the header.
    """
    for preference in (header or "").split(","):
        name, _, value = preference.split(";")[0].partition("=")
        if name.strip().lower() != "wait":
            continue
        value = value.strip().strip('"')
        if not value:
            return MAX_WAIT_SECONDS
        if not _SECONDS.fullmatch(value):
            raise InvalidParameter(
                f"Prefer: wait must be a number of seconds (at most {MAX_WAIT_SECONDS:g}), "
                f"not {value[:40]!r}",
                field="Prefer",
                rule="prefer_wait",
            )
        return min(float(value), MAX_WAIT_SECONDS)
    return None


_SECONDS = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?")


PreferWait = Annotated[str | None, PREFER_HEADER]


async def _submitted(
    service: ImageService,
    key: ApiKey,
    body: GenerationRequest,
    controls: SubmitControls,
    prefer: str | None,
    *,
    edit: bool,
) -> Response:
    """The job id, or with ``Prefer: wait`` the task if it finishes in time: serialised
    here, once (``response_model`` still documents it)."""
    wait = prefer_wait(prefer)  # a bad header is refused before a job exists
    job = await service.submit(key, body, edit=edit, controls=controls)
    headers = {REPLAYED_HEADER: "true"} if job.replayed else {}
    if wait is not None:
        headers["Preference-Applied"] = f"wait={wait:g}"
        job = await service.finished_within(job, wait)
        if job.status.finished:
            return JSONResponse(await service.task_body(job), headers=headers)
    accepted = JobAccepted(job_id=job.id, status=job.status).model_dump_json()
    return Response(accepted, media_type="application/json", headers=headers)


class SignedUpload(BaseModel):
    signed_url: str
    filename: str
    expires_in: int


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        description="Up to 255 visible ASCII characters (a UUID). The same key and body from"
        " this API key within 24 h answer the first job_id; another body is a 422.",
    ),
]
CancelAfter = Annotated[
    str | None,
    Header(
        alias=CANCEL_AFTER_HEADER,
        description="Cancel the job, unbilled, if it has not started this long after"
        " submission: seconds (300) or a duration (90s, 5m, 1h30m), 1 s to 24 h.",
    ),
]


async def submit_controls(
    idempotency_key: IdempotencyKey = None, cancel_after: CancelAfter = None
) -> SubmitControls:
    return SubmitControls(idempotency_key=idempotency_key, cancel_after=cancel_after)


Controls = Annotated[SubmitControls, Depends(submit_controls)]


class SubmitRoute(KeyFirstRoute):
    """A submission route that answers the common request itself: an ``application/json``
    body that validates, and the three headers read as FastAPI would read them, passed to
    the same endpoint. FastAPI's per-request machinery (dependency solving, the body's
    content-type parsing) was a fifth of a gateway's CPU per submission (bench/gateway.py).
    Everything else (another content type, a body that is not JSON or does not validate)
    takes FastAPI's own way, so every 4xx is worded as before
    (tests/api/test_generations.py compares the two ways)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        general = super().get_route_handler()
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            headers = request.headers
            if headers.get("content-type") == "application/json":
                key = authenticate(request)  # before the body, as KeyFirstRoute does
                try:
                    body = GenerationRequest.model_validate(json.loads(await request.body()))
                # JSON, validation, nesting too deep for the parser and a client gone mid-body
                # (no 500 logged for a client that left): FastAPI words the 4xx.
                except (ValueError, RecursionError, ClientDisconnect):
                    pass
                else:
                    controls = SubmitControls(
                        idempotency_key=headers.get(IDEMPOTENCY_HEADER),
                        cancel_after=headers.get(CANCEL_AFTER_HEADER),
                    )
                    response: Response = await endpoint(
                        body=body,
                        key=key,
                        service=request.app.state.service,
                        controls=controls,
                        prefer=headers.get(PREFER_HEADER.alias),
                    )
                    return response
            return await general(request)

        return handler


Endpoint = Callable[..., Coroutine[Any, Any, Response]]


def _submission(path: str, summary: str) -> Callable[[Endpoint], Endpoint]:
    """``router.post`` for a submission, which has no way to name the route class."""

    def register(endpoint: Endpoint) -> Endpoint:
        router.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            response_model=JobAccepted,
            responses={**SUBMIT_ERRORS, 200: {"headers": SUBMIT_HEADERS}},
            summary=summary,
            route_class_override=SubmitRoute,
        )
        return endpoint

    return register


@_submission("/generations", summary="Submit a text-to-image job")
async def create_generation(
    body: GenerationRequest,
    key: CurrentKey,
    service: Service,
    controls: Controls,
    prefer: PreferWait = None,
) -> Response:
    return await _submitted(service, key, body, controls, prefer, edit=False)


@_submission("/edits", summary="Submit an image-to-image job")
async def create_edit(
    body: GenerationRequest,
    key: CurrentKey,
    service: Service,
    controls: Controls,
    prefer: PreferWait = None,
) -> Response:
    return await _submitted(service, key, body, controls, prefer, edit=True)


JobId = Annotated[
    int, Path(ge=1, le=MAX_JOB_ID, description="The job_id that the submission returned.")
]


@router.get("/tasks/{job_id}", responses=errors(404), summary="A job's status, progress and result")
async def get_task(
    job_id: JobId,
    key: CurrentKey,
    service: Service,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_SECONDS,
            description="Hold the request up to this many seconds until the status changes.",
        ),
    ] = 0,
) -> dict[str, Any]:
    job = await service.job_for(key, job_id, wait)
    return await service.task_body(job)


@router.post(
    "/tasks/{job_id}/cancel",
    responses=errors(404, 409),
    summary="Cancel a queued or running job; it ends cancelled and is never billed",
)
async def cancel_task(job_id: JobId, key: CurrentKey, service: Service) -> dict[str, Any]:
    return await service.task_body(await service.cancel(key, job_id))


@router.get(
    "/tasks/{job_id}/events",
    responses={
        **errors(404),
        200: {
            "description": (
                "Server-sent events: one `task` event (data: the task as a poll shows it, "
                "with URLs, never base64) now and whenever its status or progress moves; "
                "comment lines while nothing does; the stream ends once the task is finished"
            ),
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
    },
    response_class=StreamingResponse,
    summary="A live stream of a job's status and progress",
)
async def stream_task_events(
    job_id: JobId,
    key: CurrentKey,
    service: Service,
) -> StreamingResponse:
    updates = service.task_updates(key, job_id)
    first = await anext(updates)  # a missing job is a 404, not an empty stream

    async def events() -> AsyncIterator[bytes]:
        job: Job | None = first
        try:
            while True:
                if job is None:
                    yield b": keep-alive\n\n"
                else:
                    data = json.dumps(await service.task_snapshot(job), separators=(",", ":"))
                    yield f"event: task\ndata: {data}\n\n".encode()
                job = await anext(updates)
        except StopAsyncIteration:
            return
        finally:
            await updates.aclose()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/signed-url",
    status_code=201,
    response_model=SignedUpload,
    summary="A URL to PUT a source image to; pass the filename as image_url",
)
async def create_upload_url(key: CurrentKey, service: Service) -> SignedUpload:
    url, name = await service.upload_url(key)
    return SignedUpload(signed_url=url, filename=name, expires_in=UPLOAD_URL_TTL_SECONDS)
