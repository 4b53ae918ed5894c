"""One synchronous OpenAI image call: translate, submit to the shared queue, wait, answer."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from tessera.runtime.jobs.base import Job, JobStatus
from tessera.runtime.keys import ApiKey
from tessera.runtime.models import ModelSpec
from tessera.runtime.openai.errors import JobFailed
from tessera.runtime.openai.multipart import EditForm
from tessera.runtime.openai.schema import (
    GeneratedImage,
    ImageRequest,
    ImagesResponse,
    ImagesUsage,
    ModelRecord,
    native_request,
    pick_model,
)
from tessera.runtime.openai.settings import OpenAISettings
from tessera.runtime.openai.waiting import WaitingRequests, wait_budget, wait_for_job
from tessera.runtime.params import Task
from tessera.runtime.service import ImageService


@dataclass
class OpenAIImages:
    settings: OpenAISettings
    waiting: WaitingRequests

    async def create(
        self,
        request: Request,
        service: ImageService,
        key: ApiKey,
        body: ImageRequest,
        form: EditForm | None = None,
    ) -> ImagesResponse | None:
        """The ``ImagesResponse`` for ``body`` (an edit's files in ``form``); ``None`` when the
        client left (the job runs on and is billed once, as any other)."""
        edit = form is not None
        model = pick_model(
            service.catalog, body.model, Task.IMAGE_TO_IMAGE if edit else Task.TEXT_TO_IMAGE
        )
        sources = None if form is None else await form.sources(model, service.sources.limits)
        native = native_request(body, model, sources)
        with self.waiting.hold(key.id):
            job = await service.submit(key, native, edit=edit)
            finished = await wait_for_job(
                service.store, job, request, wait_budget(request, self.settings)
            )
        if finished is None:
            return None
        if finished.status is not JobStatus.COMPLETED:  # failed, or cancelled natively
            raise JobFailed(
                f"job {finished.id} {finished.status.value} and was not billed: "
                f"{finished.error or 'no reason'}"
            )
        return await images_response(service, finished)


async def images_response(service: ImageService, job: Job) -> ImagesResponse:
    """OpenAI's answer, with usage counted in 16x16 patches exactly as natively."""
    assert job.result is not None
    assert job.finished_at is not None
    native = (await service.task_body(job))["result"]
    chosen = job.params.response_format
    first = job.result.images[0]
    patches = job.result.patches
    return ImagesResponse(
        created=int(job.finished_at.timestamp()),
        data=[GeneratedImage.model_validate({chosen: item[chosen]}) for item in native["data"]],
        output_format=job.params.output_format.value,
        size=f"{first.width}x{first.height}",
        usage=ImagesUsage(output_tokens=patches, total_tokens=patches),
    )


def model_record(model: ModelSpec) -> ModelRecord:
    return ModelRecord(id=model.name, owned_by=model.provider, task=model.task)
