"""Request parameters: the API's global rules, a model's narrower limits, and their resolution.

Everything here is pure. The gateway validates a request against a model's limits before a
job exists, so a worker only ever sees parameters that it can run; the operator reads the
same ``ParameterLimits`` from an ImageModel's ``spec.parameters`` (camelCase there).
"""

from __future__ import annotations

import enum
import re
import secrets
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel

from tessera.runtime.errors import InvalidParameter, ModalityIncompatible

MAX_SIDE = 14142
MIN_SIDE = 16
# torch.Generator.manual_seed accepts exactly this range.
MIN_SEED = -(2**63)
MAX_SEED = 2**64 - 1
# A source image's bytes; a data: URL carrying that much base64 fits in a reference field.
MAX_SOURCE_BYTES = 20 * 1024 * 1024
MAX_REFERENCE_CHARS = 4 * -(-MAX_SOURCE_BYTES // 3) + 256


class Task(enum.StrEnum):
    TEXT_TO_IMAGE = "text-to-image"
    IMAGE_TO_IMAGE = "image-to-image"


class OutputFormat(enum.StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"


class WebhookEvent(enum.StrEnum):
    """What a webhook may be sent for: the job started, or it finished so (the names of the
    finished statuses, so a new one is an event too)."""

    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"


# Long enough for any real endpoint with a token in its query; far below a header's size.
MAX_WEBHOOK_URL_CHARS = 2048

PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}

# ASCII digits only, and few enough that no side can be absurd before the range check.
_SIZE_STRING = re.compile(r"^ *([0-9]{1,6}) *[xX] *([0-9]{1,6}) *$")


class ImageDimensions(BaseModel):
    """An explicit ``{width, height}``; the side limits are checked against the model later."""

    model_config = ConfigDict(extra="forbid", strict=True)
    width: int
    height: int


ImageSize = str | ImageDimensions


def parse_image_size(value: ImageSize, field: str = "image_size") -> tuple[int, int]:
    """A preset name, an object or a ``"WIDTHxHEIGHT"`` string, as (width, height)."""
    if isinstance(value, ImageDimensions):
        return value.width, value.height
    if value in PRESETS:
        return PRESETS[value]
    match = _SIZE_STRING.match(value)
    if match:
        return int(match.group(1)), int(match.group(2))
    raise InvalidParameter(
        f"{field} must be one of {', '.join(PRESETS)}, an object {{width, height}} "
        f"or a 'WIDTHxHEIGHT' string, not {value!r}",
        field=field,
        rule="image_size",
    )


class _Limits(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class IntRange(_Limits):
    min: int
    max: int
    default: int


class FloatRange(_Limits):
    min: float
    max: float
    default: float


def _check_range(name: str, narrowed: IntRange | FloatRange, bound: IntRange | FloatRange) -> None:
    if not bound.min <= narrowed.min <= narrowed.max <= bound.max:
        raise ValueError(
            f"{name}: min {narrowed.min} and max {narrowed.max} must satisfy "
            f"{bound.min} <= min <= max <= {bound.max}"
        )
    if not narrowed.min <= narrowed.default <= narrowed.max:
        raise ValueError(
            f"{name}: default {narrowed.default} is outside [{narrowed.min}, {narrowed.max}]"
        )


GLOBAL_NUM_IMAGES = IntRange(min=1, max=4, default=1)
GLOBAL_STEPS = IntRange(min=1, max=50, default=28)
GLOBAL_GUIDANCE = FloatRange(min=1.0, max=20.0, default=4.5)


_RANGES: dict[str, IntRange | FloatRange] = {
    "num_images": GLOBAL_NUM_IMAGES,
    "num_inference_steps": GLOBAL_STEPS,
    "guidance_scale": GLOBAL_GUIDANCE,
}


class ParameterLimits(_Limits):
    """What one model accepts: the API's rules, optionally narrowed, with its own defaults."""

    min_side: int = Field(default=MIN_SIDE, ge=MIN_SIDE, le=MAX_SIDE)
    max_side: int = Field(default=MAX_SIDE, ge=MIN_SIDE, le=MAX_SIDE)
    default_image_size: ImageSize = "landscape_4_3"
    num_images: IntRange = GLOBAL_NUM_IMAGES
    num_inference_steps: IntRange = GLOBAL_STEPS
    guidance_scale: FloatRange = GLOBAL_GUIDANCE
    output_formats: tuple[OutputFormat, ...] = tuple(OutputFormat)
    default_output_format: OutputFormat = OutputFormat.PNG
    # Reference images an edit may carry; most edit pipelines take exactly one. An
    # image-to-image model with a minimum of 0 also generates from text alone (FLUX.2).
    max_source_images: int = Field(default=1, ge=1, le=4)
    min_source_images: int = Field(default=1, ge=0, le=4)
    # Sent when a request gives none: Qwen-Image runs true CFG only with a negative prompt,
    # and its model card passes " ".
    default_negative_prompt: str | None = Field(default=None, max_length=10_000)

    @field_validator("num_images", "num_inference_steps", "guidance_scale", mode="before")
    @classmethod
    def _fill_partial_range(cls, given: Any, info: ValidationInfo) -> Any:
        # The CRD defaults each end of a range on its own, so `{default: 5}` means the API's
        # min and max: a models file read without a cluster means what the server stores.
        if not isinstance(given, dict) or info.field_name is None:
            return given
        return {**_RANGES[info.field_name].model_dump(by_alias=True), **given}

    @model_validator(mode="after")
    def _narrower_than_the_api(self) -> Self:
        if self.min_side > self.max_side:
            raise ValueError(f"minSide {self.min_side} is larger than maxSide {self.max_side}")
        for name, bound in _RANGES.items():
            _check_range(to_camel(name), getattr(self, name), bound)
        if self.min_source_images > self.max_source_images:
            raise ValueError(
                f"minSourceImages {self.min_source_images} is larger than "
                f"maxSourceImages {self.max_source_images}"
            )
        if not self.output_formats:
            raise ValueError("outputFormats must name at least one format")
        if self.default_output_format not in self.output_formats:
            raise ValueError(
                f"defaultOutputFormat {self.default_output_format.value} is not in outputFormats"
            )
        try:
            width, height = parse_image_size(self.default_image_size, "defaultImageSize")
            self.check_size(width, height, "defaultImageSize")
        except InvalidParameter as error:
            raise ValueError(error.message) from None
        return self

    def check_size(self, width: int, height: int, field: str = "image_size") -> None:
        for side_name, side in (("width", width), ("height", height)):
            if not self.min_side <= side <= self.max_side:
                raise InvalidParameter(
                    f"{field}.{side_name} must be between {self.min_side} and {self.max_side} "
                    f"pixels for this model, not {side}",
                    field=f"{field}.{side_name}",
                    rule="min_side" if side < self.min_side else "max_side",
                )


class GenerationRequest(BaseModel):
    """The body of ``POST /images/generations`` and ``/images/edits`` (Hyperstack's fields).

    Types are checked here, strictly: ``true``, ``"2"`` or ``2.0`` is not an integer, and
    ``"4.5"`` is not a number. Ranges depend on the model and are checked by ``resolve``.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=256)
    prompt: str = Field(min_length=1, max_length=10_000)
    negative_prompt: str | None = Field(default=None, max_length=10_000)
    image_size: ImageSize | None = None
    num_images: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: Annotated[int, Field(ge=MIN_SEED, le=MAX_SEED)] | None = None
    # An enum's JSON form is its value: the one field where a string is the right type.
    output_format: OutputFormat | None = Field(default=None, strict=False)
    response_format: Literal["url", "b64_json"] = "url"
    # Long enough for a data: URL of the largest source image (sources.SourceLimits).
    image_url: str | None = Field(default=None, max_length=MAX_REFERENCE_CHARS)
    image_urls: list[Annotated[str, Field(max_length=MAX_REFERENCE_CHARS)]] | None = Field(
        default=None, max_length=4
    )
    # Accepted for compatibility with Hyperstack clients; only their absence is supported.
    scheduler: str | None = None
    preset: str | None = None
    # Where to POST signed notifications of this job, and for which events (default: all).
    webhook_url: str | None = Field(default=None, max_length=MAX_WEBHOOK_URL_CHARS)
    webhook_events: list[Annotated[WebhookEvent, Field(strict=False)]] | None = Field(
        default=None, min_length=1, max_length=len(WebhookEvent)
    )

    def source_images(self) -> list[str]:
        return ([self.image_url] if self.image_url else []) + list(self.image_urls or [])


class JobParams(BaseModel):
    """Fully resolved parameters: what a worker runs and what the task reports back."""

    model_config = ConfigDict(frozen=True)

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    num_images: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    output_format: OutputFormat
    response_format: Literal["url", "b64_json"]
    # Storage keys: the checked sources a worker reads, and the uploads they came from
    # (deleted with the job when its retention runs out).
    source_images: tuple[str, ...] = ()
    uploads: tuple[str, ...] = ()
    webhook_url: str | None = None
    webhook_events: tuple[WebhookEvent, ...] = ()


def _within(field: str, value: float, limits: IntRange | FloatRange) -> None:
    if not limits.min <= value <= limits.max:
        raise InvalidParameter(
            f"{field} must be between {limits.min} and {limits.max} for this model, not {value}",
            field=field,
            rule="range",
        )


# The request fields a model may refuse (``PipelineOptions.arguments`` set to null).
REFUSABLE = ("guidance_scale", "negative_prompt", "image_size")


def generates_from_text(limits: ParameterLimits, task: Task) -> bool:
    return task is Task.TEXT_TO_IMAGE or limits.min_source_images == 0


def resolve(
    request: GenerationRequest,
    limits: ParameterLimits,
    task: Task,
    *,
    edit: bool,
    refused: frozenset[str] = frozenset(),
) -> JobParams:
    """Apply the model's defaults and limits to a request, or raise ``InvalidParameter``.

    A missing seed is drawn here, once, so the task can report the seed that made the image
    and the same request can be replayed exactly. A parameter the model cannot honour
    (``refused``) is an error here, before a job exists, not a failed job later.
    """
    for name in REFUSABLE:
        if name in refused and getattr(request, name) is not None:
            raise InvalidParameter(
                f"model {request.model!r} does not take {name}; omit it",
                field=name,
                rule="unsupported",
            )
    if edit and task is not Task.IMAGE_TO_IMAGE:
        raise ModalityIncompatible(
            f"model {request.model!r} is a {task.value} model and cannot edit images; "
            "use POST /images/generations or pick an image-to-image model",
            field="model",
            rule="modality",
        )
    if not edit and not generates_from_text(limits, task):
        raise ModalityIncompatible(
            f"model {request.model!r} is an image-to-image model and needs a source image; "
            "use POST /images/edits with image_url",
            field="model",
            rule="modality",
        )
    sources = request.source_images()
    if edit and len(sources) < max(1, limits.min_source_images):
        raise InvalidParameter(
            f"an edit with this model needs at least {max(1, limits.min_source_images)} "
            "source image(s): set image_url (or image_urls)",
            field="image_url",
            rule="required",
        )
    if len(sources) > limits.max_source_images:
        raise InvalidParameter(
            f"this model takes at most {limits.max_source_images} source image(s), "
            f"not {len(sources)}",
            field="image_urls",
            rule="max_source_images",
        )
    if not edit and sources:
        raise InvalidParameter(
            "image_url is only accepted by POST /images/edits", field="image_url", rule="edit_only"
        )
    for name in ("scheduler", "preset"):
        if getattr(request, name) is not None:
            raise InvalidParameter(
                f"{name} is not supported by this server; omit it to use the model's own",
                field=name,
                rule="unsupported",
            )

    size = request.image_size if request.image_size is not None else limits.default_image_size
    width, height = parse_image_size(size)
    limits.check_size(width, height)

    num_images = limits.num_images.default if request.num_images is None else request.num_images
    _within("num_images", num_images, limits.num_images)
    steps = (
        limits.num_inference_steps.default
        if request.num_inference_steps is None
        else request.num_inference_steps
    )
    _within("num_inference_steps", steps, limits.num_inference_steps)
    guidance = (
        limits.guidance_scale.default if request.guidance_scale is None else request.guidance_scale
    )
    _within("guidance_scale", guidance, limits.guidance_scale)

    output_format = request.output_format or limits.default_output_format
    if output_format not in limits.output_formats:
        allowed = ", ".join(f.value for f in limits.output_formats)
        raise InvalidParameter(
            f"output_format must be one of {allowed} for this model, not {output_format.value}",
            field="output_format",
            rule="enum",
        )

    if request.webhook_events is not None and request.webhook_url is None:
        raise InvalidParameter(
            "webhook_events needs webhook_url: say where to send them",
            field="webhook_events",
            rule="requires_webhook_url",
        )
    webhook_events = tuple(dict.fromkeys(request.webhook_events or WebhookEvent))

    return JobParams(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt
        if request.negative_prompt is not None
        else limits.default_negative_prompt,
        width=width,
        height=height,
        num_images=num_images,
        num_inference_steps=steps,
        guidance_scale=guidance,
        seed=secrets.randbelow(2**32) if request.seed is None else request.seed,
        output_format=output_format,
        response_format=request.response_format,
        source_images=tuple(sources),
        webhook_url=request.webhook_url,
        webhook_events=webhook_events if request.webhook_url else (),
    )


def request_schema(
    limits: ParameterLimits, task: Task, refused: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The JSON Schema a model publishes for its requests, with its own limits and defaults;
    a parameter the model refuses is absent, and listed in ``x-unsupported``."""
    dimensions = {"type": "integer", "minimum": limits.min_side, "maximum": limits.max_side}
    default_size = limits.default_image_size
    properties: dict[str, Any] = {
        "prompt": {"type": "string", "minLength": 1},
        "negative_prompt": {"type": ["string", "null"]}
        | ({"default": limits.default_negative_prompt} if limits.default_negative_prompt else {}),
        "image_size": {
            "default": default_size.model_dump()
            if isinstance(default_size, ImageDimensions)
            else default_size,
            "oneOf": [
                {"type": "string", "enum": list(PRESETS)},
                {
                    "type": "object",
                    "properties": {"width": dimensions, "height": dimensions},
                    "required": ["width", "height"],
                    "additionalProperties": False,
                },
                {"type": "string", "pattern": _SIZE_STRING.pattern},
            ],
        },
        "num_images": _range_schema("integer", limits.num_images),
        "num_inference_steps": _range_schema("integer", limits.num_inference_steps),
        "guidance_scale": _range_schema("number", limits.guidance_scale),
        "seed": {"type": ["integer", "null"], "minimum": MIN_SEED, "maximum": MAX_SEED},
        "output_format": {
            "type": "string",
            "enum": [f.value for f in limits.output_formats],
            "default": limits.default_output_format.value,
        },
        "response_format": {"type": "string", "enum": ["url", "b64_json"], "default": "url"},
        "webhook_url": {
            "type": "string",
            "format": "uri",
            "maxLength": MAX_WEBHOOK_URL_CHARS,
            "description": "An http(s) URL on a public address; signed POSTs go there",
        },
        "webhook_events": {
            "type": "array",
            "items": {"type": "string", "enum": [event.value for event in WebhookEvent]},
            "minItems": 1,
            "maxItems": len(WebhookEvent),
            "description": "Which events to send (default: all); only with webhook_url",
        },
    }
    if task is Task.IMAGE_TO_IMAGE:
        properties["image_url"] = {"type": "string"}
        properties["image_urls"] = {
            "type": "array",
            "items": {"type": "string"},
            "minItems": limits.min_source_images,
            "maxItems": limits.max_source_images,
        }
    schema_extra = (
        {"anyOf": [{"required": ["image_url"]}, {"required": ["image_urls"]}]}
        if not generates_from_text(limits, task)
        else {}
    )
    for name in refused:
        properties.pop(name, None)
    return {
        **schema_extra,
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": properties,
        "required": ["prompt"],
        "x-max-side": limits.max_side,
        "x-min-side": limits.min_side,
        "x-unsupported": sorted(refused),
    }


def _range_schema(kind: str, limits: IntRange | FloatRange) -> dict[str, Any]:
    return {"type": kind, "minimum": limits.min, "maximum": limits.max, "default": limits.default}
