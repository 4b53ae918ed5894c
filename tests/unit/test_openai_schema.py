"""OpenAI requests become native ones by pure rules, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from tessera.runtime.errors import InvalidParameter, ModelNotFound
from tessera.runtime.models import ModelCatalog, ModelSpec
from tessera.runtime.openai.errors import param_name
from tessera.runtime.openai.schema import (
    ImageRequest,
    check_image_count,
    native_request,
    pick_model,
)
from tessera.runtime.params import IntRange, ParameterLimits, Task

MODEL = ModelSpec(
    name="m",
    limits=ParameterLimits(num_inference_steps=IntRange(min=2, max=10, default=4)),
)


def _native(**fields: Any) -> dict[str, Any]:
    request = ImageRequest(prompt="p", **fields)
    return native_request(request, MODEL).model_dump(exclude_none=True)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, {"response_format": "url"}),
        ({"size": "auto"}, {}),
        ({"size": "1000x600"}, {"image_size": "1000x600"}),
        ({"size": " 64 X 48 "}, {"image_size": "64x48"}),
        ({"n": 3}, {"num_images": 3}),
        ({"response_format": "b64_json"}, {"response_format": "b64_json"}),
        ({"output_format": "webp"}, {"output_format": "webp"}),
        ({"quality": "auto"}, {"num_inference_steps": 4}),
        ({"quality": "low"}, {"num_inference_steps": 2}),
        ({"quality": "hd"}, {"num_inference_steps": 8}),
        # An explicit step count wins over quality.
        ({"quality": "hd", "num_inference_steps": 3}, {"num_inference_steps": 3}),
        ({"background": "opaque", "moderation": "low", "user": "u"}, {}),
        ({"seed": 9, "guidance_scale": 2.0}, {"seed": 9, "guidance_scale": 2.0}),
    ],
)
def test_fields_map_to_native_ones(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    native = _native(**fields)
    assert native == {"model": "m", "prompt": "p", "response_format": "url", **expected}


def test_quality_stays_within_the_models_steps() -> None:
    low = ModelSpec(
        name="m", limits=ParameterLimits(num_inference_steps=IntRange(min=3, max=4, default=4))
    )
    assert native_request(ImageRequest(prompt="p", quality="low"), low).num_inference_steps == 3
    assert native_request(ImageRequest(prompt="p", quality="high"), low).num_inference_steps == 4


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"size": "big"}, "size"),
        ({"size": "8x8"}, "size"),
        ({"n": 5}, "n"),
        ({"style": "natural"}, "style"),
        ({"background": "transparent"}, "background"),
        ({"output_compression": 80}, "output_compression"),
        ({"stream": True}, "stream"),
        ({"partial_images": 1}, "partial_images"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        _native(**fields)
    assert param_name(caught.value.field) == param


def test_too_many_images_for_the_model() -> None:
    check_image_count(1, MODEL)
    with pytest.raises(InvalidParameter) as caught:
        check_image_count(2, MODEL)
    assert caught.value.field == "image" and "at most 1" in caught.value.message


def test_the_model_may_be_left_out_when_only_one_fits() -> None:
    catalog = ModelCatalog(
        [ModelSpec(name="t2i"), ModelSpec(name="edit", task=Task.IMAGE_TO_IMAGE)]
    )
    assert pick_model(catalog, None, Task.TEXT_TO_IMAGE).name == "t2i"
    assert pick_model(catalog, None, Task.IMAGE_TO_IMAGE).name == "edit"
    with pytest.raises(ModelNotFound):
        pick_model(catalog, "other", Task.TEXT_TO_IMAGE)
    two = ModelCatalog([ModelSpec(name="a"), ModelSpec(name="b")])
    with pytest.raises(InvalidParameter) as caught:
        pick_model(two, None, Task.TEXT_TO_IMAGE)
    assert caught.value.field == "model" and "a, b" in caught.value.message


@pytest.mark.parametrize(
    ("field", "param"),
    [
        (None, None),
        ("image_size.width", "size"),
        ("num_images", "n"),
        ("image_urls[2]", "image"),
        ("image_url", "image"),
        ("seed", "seed"),
    ],
)
def test_native_field_names_become_openai_parameters(field: str | None, param: str | None) -> None:
    assert param_name(field) == param
