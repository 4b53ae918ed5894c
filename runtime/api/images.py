"""``/v1/images``: submit generations and edits, poll tasks, get an upload URL."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query
from pydantic import BaseModel

from tessera.runtime.api.deps import CurrentKey, KeyFirstRoute, Service
from tessera.runtime.api.openapi import errors
from tessera.runtime.control import CANCEL_AFTER_HEADER, IDEMPOTENCY_HEADER, SubmitControls
from tessera.runtime.jobs.base import MAX_JOB_ID, JobStatus
from tessera.runtime.params import GenerationRequest
from tessera.runtime.service import MAX_WAIT_SECONDS, UPLOAD_URL_TTL_SECONDS

router = APIRouter(
    prefix="/images",
    tags=["images"],
    route_class=KeyFirstRoute,
    responses=errors(401, 413, 422, 429, 503),
)
SUBMIT_ERRORS = errors(400, 404)


class JobAccepted(BaseModel):
    job_id: int
    status: JobStatus


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


def submit_controls(
    idempotency_key: IdempotencyKey = None, cancel_after: CancelAfter = None
) -> SubmitControls:
    return SubmitControls(idempotency_key=idempotency_key, cancel_after=cancel_after)


Controls = Annotated[SubmitControls, Depends(submit_controls)]


@router.post(
    "/generations",
    response_model=JobAccepted,
    responses=SUBMIT_ERRORS,
    summary="Submit a text-to-image job",
)
async def create_generation(
    body: GenerationRequest, key: CurrentKey, service: Service, controls: Controls
) -> JobAccepted:
    job = await service.submit(key, body, edit=False, controls=controls)
    return JobAccepted(job_id=job.id, status=job.status)


@router.post(
    "/edits",
    response_model=JobAccepted,
    responses=SUBMIT_ERRORS,
    summary="Submit an image-to-image job",
)
async def create_edit(
    body: GenerationRequest, key: CurrentKey, service: Service, controls: Controls
) -> JobAccepted:
    job = await service.submit(key, body, edit=True, controls=controls)
    return JobAccepted(job_id=job.id, status=job.status)


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
    "/signed-url",
    status_code=201,
    response_model=SignedUpload,
    summary="A URL to PUT a source image to; pass the filename as image_url",
)
async def create_upload_url(key: CurrentKey, service: Service) -> SignedUpload:
    url, name = await service.upload_url(key)
    return SignedUpload(signed_url=url, filename=name, expires_in=UPLOAD_URL_TTL_SECONDS)
