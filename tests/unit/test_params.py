"""Parameter resolution is pure: every rule of the API contract, table-driven."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tessera.runtime.errors import InvalidParameter, ModalityIncompatible
from tessera.runtime.params import (
    PRESETS,
    GenerationRequest,
    IntRange,
    OutputFormat,
    ParameterLimits,
    Task,
    request_schema,
    resolve,
)

LIMITS = ParameterLimits()


def _resolve(
    limits: ParameterLimits = LIMITS,
    task: Task = Task.TEXT_TO_IMAGE,
    edit: bool = False,
    **fields: Any,
):
    return resolve(GenerationRequest(model="m", prompt="p", **fields), limits, task, edit=edit)


def test_defaults_follow_the_contract() -> None:
    params = _resolve()
    assert (params.width, params.height) == (1024, 768)
    assert params.num_images == 1
    assert params.num_inference_steps == 28
    assert params.guidance_scale == 4.5
    assert params.output_format is OutputFormat.PNG
    assert params.response_format == "url"
    assert isinstance(params.seed, int)


@pytest.mark.parametrize(("preset", "size"), list(PRESETS.items()))
def test_presets(preset: str, size: tuple[int, int]) -> None:
    params = _resolve(image_size=preset)
    assert (params.width, params.height) == size


@pytest.mark.parametrize(
    ("image_size", "size"),
    [({"width": 1000, "height": 600}, (1000, 600)), ("520x264", (520, 264)), ("64X48", (64, 48))],
)
def test_explicit_sizes(image_size: Any, size: tuple[int, int]) -> None:
    params = _resolve(image_size=image_size)
    assert (params.width, params.height) == size


@pytest.mark.parametrize(
    ("fields", "field", "rule"),
    [
        ({"image_size": "huge"}, "image_size", "image_size"),
        ({"image_size": {"width": 14143, "height": 512}}, "image_size.width", "max_side"),
        ({"image_size": "512x8"}, "image_size.height", "min_side"),
        ({"num_images": 0}, "num_images", "range"),
        ({"num_images": 5}, "num_images", "range"),
        ({"num_inference_steps": 0}, "num_inference_steps", "range"),
        ({"num_inference_steps": 51}, "num_inference_steps", "range"),
        ({"guidance_scale": 0.99}, "guidance_scale", "range"),
        ({"guidance_scale": 20.5}, "guidance_scale", "range"),
        ({"scheduler": "euler"}, "scheduler", "unsupported"),
        ({"image_url": "https://example.com/a.png"}, "image_url", "edit_only"),
    ],
)
def test_each_rule_names_field_and_rule(fields: dict[str, Any], field: str, rule: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        _resolve(**fields)
    assert caught.value.field == field
    assert caught.value.rule == rule
    assert field.split(".")[0] in caught.value.message


@pytest.mark.parametrize(
    "fields",
    [
        {"seed": "abc"},
        {"output_format": "gif"},
        {"response_format": "base64"},
        {"unknown_field": 1},
        {"image_size": {"width": 512}},
        {"image_urls": ["a", "b", "c", "d", "e"]},
        {"seed": 2**64},
    ],
)
def test_type_errors_are_rejected_by_the_request_model(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        GenerationRequest(model="m", prompt="p", **fields)


def test_prompt_is_required_and_non_empty() -> None:
    with pytest.raises(ValidationError):
        GenerationRequest(model="m", prompt="")
    with pytest.raises(ValidationError):
        GenerationRequest.model_validate({"model": "m"})


def test_modality_mismatch_is_its_own_error() -> None:
    with pytest.raises(ModalityIncompatible):
        _resolve(edit=True, image_url="upload-abcdefghijklmnopqrstu")
    with pytest.raises(ModalityIncompatible):
        _resolve(task=Task.IMAGE_TO_IMAGE, edit=False)


def test_edit_needs_a_source_and_respects_the_model_count() -> None:
    with pytest.raises(InvalidParameter, match="source image"):
        _resolve(task=Task.IMAGE_TO_IMAGE, edit=True)
    with pytest.raises(InvalidParameter) as caught:
        _resolve(task=Task.IMAGE_TO_IMAGE, edit=True, image_url="a", image_urls=["b"])
    assert caught.value.rule == "max_source_images"


def test_a_model_can_narrow_limits_and_change_defaults() -> None:
    limits = ParameterLimits(
        max_side=2048,
        num_inference_steps=IntRange(min=1, max=8, default=4),
        output_formats=(OutputFormat.PNG, OutputFormat.WEBP),
        default_output_format=OutputFormat.WEBP,
        default_image_size="square",
    )
    params = _resolve(limits)
    assert (params.width, params.height, params.num_inference_steps) == (512, 512, 4)
    assert params.output_format is OutputFormat.WEBP
    with pytest.raises(InvalidParameter, match="between 1 and 8"):
        _resolve(limits, num_inference_steps=9)
    with pytest.raises(InvalidParameter, match="2048"):
        _resolve(limits, image_size="4096x512")
    with pytest.raises(InvalidParameter) as caught:
        _resolve(limits, output_format="jpeg")
    assert caught.value.rule == "enum"


@pytest.mark.parametrize(
    "fields",
    [
        {"num_inference_steps": {"min": 1, "max": 60, "default": 4}},
        {"num_images": {"min": 1, "max": 2, "default": 3}},
        {"min_side": 512, "max_side": 256},
        {"max_side": 512, "default_image_size": "square_hd"},
        {"output_formats": ["png"], "default_output_format": "jpeg"},
    ],
)
def test_limits_cannot_widen_the_api_or_hold_bad_defaults(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ParameterLimits.model_validate(fields)


def test_limits_read_camel_case_as_in_the_crd() -> None:
    limits = ParameterLimits.model_validate(
        {"maxSide": 1024, "numInferenceSteps": {"min": 1, "max": 8, "default": 4}}
    )
    assert limits.max_side == 1024 and limits.num_inference_steps.max == 8


def test_published_schema_carries_the_model_limits() -> None:
    limits = ParameterLimits(max_side=2048, num_inference_steps=IntRange(min=1, max=50, default=4))
    schema = request_schema(limits, Task.IMAGE_TO_IMAGE)
    props = schema["properties"]
    assert props["num_inference_steps"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 50,
        "default": 4,
    }
    assert props["image_size"]["default"] == "landscape_4_3"
    assert props["image_size"]["oneOf"][1]["properties"]["width"]["maximum"] == 2048
    assert "image_url" in props
    assert schema["required"] == ["prompt"]
