"""OpenAI's image request fields, and their translation into a native ``GenerationRequest``.

Pure: every request becomes a native one, so it meets the same model limits, queue and
billing as a request to ``/v1``. OpenAI fields with no equivalent are refused by name; the
native settings that OpenAI lacks (``seed``, ``num_inference_steps``, ``guidance_scale``,
``negative_prompt``) are accepted beside them, as the SDK sends them through ``extra_body``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tessera.runtime.errors import InvalidParameter
from tessera.runtime.models import ModelCatalog, ModelSpec
from tessera.runtime.params import (
    MAX_SEED,
    MIN_SEED,
    GenerationRequest,
    Task,
    parse_image_size,
)

# ``quality`` scales the model's default step count; the result stays within its range.
QUALITY_STEPS: dict[str, float] = {
    "low": 0.5,
    "medium": 1.0,
    "standard": 1.0,
    "auto": 1.0,
    "high": 2.0,
    "hd": 2.0,
}


class ImageRequest(BaseModel):
    """The fields that ``images.generate`` and ``images.edit`` share; as JSON, typed strictly
    like a native request (``"2"`` is not a number)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1, max_length=10_000)
    model: str | None = Field(
        default=None,
        max_length=256,
        description="A model from GET /openai/v1/models; optional when only one fits.",
    )
    n: int | None = Field(default=None, ge=1, description="Images to make (the model's range).")
    size: str | None = Field(
        default=None, max_length=32, description='"WIDTHxHEIGHT" or "auto" (the default size).'
    )
    response_format: Literal["url", "b64_json"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    quality: Literal["auto", "low", "medium", "high", "standard", "hd"] | None = Field(
        default=None, description="Scales the model's default number of steps."
    )
    background: Literal["auto", "opaque", "transparent"] | None = Field(
        default=None, description="Images are opaque; 'transparent' is refused."
    )
    style: Literal["vivid", "natural"] | None = Field(
        default=None, description="A DALL-E 3 setting; refused when set."
    )
    output_compression: int | None = Field(
        default=None, ge=0, le=100, description="Refused when set: encoding quality is fixed."
    )
    moderation: Literal["auto", "low"] | None = Field(
        default=None, description="Accepted; this server applies no moderation."
    )
    stream: bool | None = Field(default=None, description="Refused when true.")
    partial_images: int | None = Field(default=None, ge=0, le=3, description="Refused above 0.")
    user: str | None = Field(default=None, max_length=256, description="Accepted and ignored.")
    safety_identifier: str | None = Field(
        default=None, max_length=256, description="Accepted and ignored."
    )
    # Tessera's own settings, for extra_body.
    seed: Annotated[int, Field(ge=MIN_SEED, le=MAX_SEED)] | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = Field(default=None, max_length=10_000)


class EditFields(ImageRequest):
    """The text fields of a multipart ``images.edit``; the files arrive beside them. Every
    multipart value is text, so numbers and booleans are read from it."""

    model_config = ConfigDict(extra="forbid", strict=False)

    input_fidelity: Literal["low", "high"] | None = Field(
        default=None, description="Refused when set."
    )


def _refuse(param: str, message: str) -> InvalidParameter:
    return InvalidParameter(message, field=param, rule="unsupported")


def _check_unsupported(request: ImageRequest) -> None:
    if request.background == "transparent":
        raise _refuse(
            "background", "background 'transparent' is not supported: images here are opaque"
        )
    if request.style is not None:
        raise _refuse("style", "style is a DALL-E 3 setting with no equivalent here; omit it")
    if request.output_compression is not None:
        raise _refuse(
            "output_compression", "output_compression is not supported: encoding is fixed"
        )
    if request.stream:
        raise _refuse("stream", "streaming is not supported: omit stream, the answer is whole")
    if request.partial_images:
        raise _refuse("partial_images", "partial images are not supported: omit partial_images")
    if isinstance(request, EditFields) and request.input_fidelity is not None:
        raise _refuse("input_fidelity", "input_fidelity is not supported; omit it")


def pick_model(catalog: ModelCatalog, name: str | None, task: Task) -> ModelSpec:
    """The named model, or the only one of ``task`` when none is named."""
    if name:
        return catalog.get(name)
    fitting = [model.name for model in catalog.all() if model.task is task]
    if len(fitting) == 1:
        return catalog.get(fitting[0])
    raise InvalidParameter(
        f"model is required: this server offers {', '.join(fitting) or 'no'} {task.value} models",
        field="model",
        rule="required",
    )


def check_image_count(count: int, model: ModelSpec) -> None:
    limit = model.limits.max_source_images
    if count > limit:
        raise InvalidParameter(
            f"model {model.name!r} takes at most {limit} image(s), not {count}",
            field="image",
            rule="max_source_images",
        )


def _steps(request: ImageRequest, model: ModelSpec) -> int | None:
    if request.num_inference_steps is not None or request.quality is None:
        return request.num_inference_steps
    steps = model.limits.num_inference_steps
    scaled = round(steps.default * QUALITY_STEPS[request.quality])
    return max(steps.min, min(steps.max, scaled))


def native_request(
    request: ImageRequest, model: ModelSpec, sources: list[str] | None = None
) -> GenerationRequest:
    """The native request that does what ``request`` asks of ``model``, or a 4xx naming the
    parameter that cannot be honoured.

    ``n`` and ``size`` are checked here, so their errors name OpenAI's parameters; the
    native resolution checks everything else.
    """
    _check_unsupported(request)
    limits = model.limits
    if request.n is not None and not limits.num_images.min <= request.n <= limits.num_images.max:
        raise InvalidParameter(
            f"n must be between {limits.num_images.min} and {limits.num_images.max} for this "
            f"model, not {request.n}",
            field="n",
            rule="range",
        )
    image_size = None
    if request.size is not None and request.size != "auto":
        try:
            width, height = parse_image_size(request.size, "size")
        except InvalidParameter:
            raise InvalidParameter(
                f"size must be 'WIDTHxHEIGHT' (such as '1024x768') or 'auto', not {request.size!r}",
                field="size",
                rule="size",
            ) from None
        limits.check_size(width, height, "size")
        image_size = f"{width}x{height}"
    fields: dict[str, Any] = {
        "model": model.name,
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "image_size": image_size,
        "num_images": request.n,
        "num_inference_steps": _steps(request, model),
        "guidance_scale": request.guidance_scale,
        "seed": request.seed,
        "output_format": request.output_format,
        "response_format": request.response_format or "url",
        "image_urls": sources or None,
    }
    return GenerationRequest(**fields)


class GeneratedImage(BaseModel):
    url: str | None = None
    b64_json: str | None = None


class TokenDetails(BaseModel):
    image_tokens: int = 0
    text_tokens: int = 0


class ImagesUsage(BaseModel):
    """Patches, as the native API counts them: nothing is billed for the prompt or inputs."""

    input_tokens: int = 0
    input_tokens_details: TokenDetails = TokenDetails()
    output_tokens: int
    total_tokens: int


class ImagesResponse(BaseModel):
    created: int
    data: list[GeneratedImage]
    output_format: Literal["png", "jpeg", "webp"]
    size: str
    background: Literal["opaque"] = "opaque"
    usage: ImagesUsage


class ModelRecord(BaseModel):
    id: str
    object: Literal["model"] = "model"
    # OpenAI requires it; no model here has a creation time, so it is the epoch.
    created: int = 0
    owned_by: str
    task: Task = Field(description="Which endpoint the model serves.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelRecord]
