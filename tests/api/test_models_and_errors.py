"""Model listing, auth, key isolation and every bad-input rule, over HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.helpers import FAST, assert_error, submit, wait
from tests.support.server import ServerProcess


def test_base_models_lists_both_demo_models_with_schema(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        models = client.get("/base_models", params={"inference": "true"}).json()["models"]
    by_name = {m["model_name"]: m for m in models}
    assert set(by_name) == {"tessera-demo", "tessera-demo-edit"}
    demo = by_name["tessera-demo"]
    assert demo["model_type"] == "image_model"
    assert demo["input_modalities"] == ["text"] and demo["output_modalities"] == ["image"]
    assert by_name["tessera-demo-edit"]["input_modalities"] == ["text", "image"]
    schema = demo["parameters"]
    assert schema["properties"]["num_inference_steps"]["default"] == 4
    assert schema["x-max-side"] == 2048
    assert demo["pricing"]["price_per_patch"] == "0.00000079"


@pytest.mark.parametrize(
    ("modalities", "expected"),
    [
        (["text-to-image"], {"tessera-demo"}),
        (["image-to-image"], {"tessera-demo-edit"}),
        (["text-to-image", "image-to-image"], {"tessera-demo", "tessera-demo-edit"}),
    ],
)
def test_base_models_filters_by_repeated_modalities(
    demo_server: ServerProcess, modalities: list[str], expected: set[str]
) -> None:
    with demo_server.client() as client:
        response = client.get(
            "/base_models", params=[("inference", "true")] + [("modalities", m) for m in modalities]
        )
    assert {m["model_name"] for m in response.json()["models"]} == expected


def test_unknown_modality_is_a_clear_422(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        body = assert_error(client.get("/base_models", params={"modalities": "text-to-video"}), 422)
    assert body["field"] == "modalities.0"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing"),
        ({"api_key": "wrong"}, "invalid"),
        ({"Authorization": "Bearer x"}, "missing"),
    ],
)
def test_missing_or_wrong_key_is_401(
    demo_server: ServerProcess, headers: dict[str, str], reason: str
) -> None:
    for method, path in [
        ("GET", "/base_models"),
        ("POST", "/images/generations"),
        ("GET", "/images/tasks/1"),
        ("GET", "/images/signed-url"),
    ]:
        response = httpx.request(
            method, demo_server.api_url + path, headers=headers, json={"model": "x", "prompt": "y"}
        )
        body = assert_error(response, 401)
        assert reason in body["message"]


def test_unknown_model_is_404_listing_what_exists(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        response = client.post("/images/generations", json={"model": "flux-9", "prompt": "x"})
    body = assert_error(response, 404, "model")
    assert "flux-9" in body["message"]
    assert body["available_models"] == ["tessera-demo", "tessera-demo-edit"]


def test_unknown_job_is_404(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        assert_error(client.get("/images/tasks/987654321"), 404)
        for not_an_id in ("not-a-number", "0", "51056102258093187072"):
            assert_error(client.get(f"/images/tasks/{not_an_id}"), 422, "job_id")


def test_a_task_is_visible_only_to_the_key_that_made_it(demo_server: ServerProcess) -> None:
    with demo_server.client() as owner, demo_server.client(demo_server.keys[1]) as other:
        job_id = submit(owner, {"model": "tessera-demo", "prompt": "mine", **FAST})
        body = assert_error(other.get(f"/images/tasks/{job_id}"), 404)
        assert str(job_id) in body["message"]
        assert wait(owner, job_id)["status"] == "completed"
        assert_error(other.get(f"/images/tasks/{job_id}", params={"wait": 1}), 404)


BAD_BODIES: list[tuple[str, dict[str, Any], int, str]] = [
    ("no prompt", {"model": "tessera-demo"}, 422, "prompt"),
    ("empty prompt", {"model": "tessera-demo", "prompt": ""}, 422, "prompt"),
    ("no model", {"prompt": "x"}, 422, "model"),
    ("unknown field", {"model": "tessera-demo", "prompt": "x", "strength": 1}, 422, "strength"),
    (
        "bad preset",
        {"model": "tessera-demo", "prompt": "x", "image_size": "huge"},
        422,
        "image_size",
    ),
    (
        "bad size string",
        {"model": "tessera-demo", "prompt": "x", "image_size": "10 by 10"},
        422,
        "image_size",
    ),
    (
        "size over model max",
        {"model": "tessera-demo", "prompt": "x", "image_size": {"width": 4096, "height": 512}},
        422,
        "image_size.width",
    ),
    (
        "size over API max",
        {"model": "tessera-demo", "prompt": "x", "image_size": "512x20000"},
        422,
        "image_size.height",
    ),
    (
        "size under min",
        {"model": "tessera-demo", "prompt": "x", "image_size": {"width": 8, "height": 512}},
        422,
        "image_size.width",
    ),
    (
        "size missing height",
        {"model": "tessera-demo", "prompt": "x", "image_size": {"width": 64}},
        422,
        "image_size.height",
    ),
    (
        "negative size",
        {"model": "tessera-demo", "prompt": "x", "image_size": {"width": -64, "height": 64}},
        422,
        "image_size.width",
    ),
    ("zero images", {"model": "tessera-demo", "prompt": "x", "num_images": 0}, 422, "num_images"),
    ("five images", {"model": "tessera-demo", "prompt": "x", "num_images": 5}, 422, "num_images"),
    (
        "zero steps",
        {"model": "tessera-demo", "prompt": "x", "num_inference_steps": 0},
        422,
        "num_inference_steps",
    ),
    (
        "51 steps",
        {"model": "tessera-demo", "prompt": "x", "num_inference_steps": 51},
        422,
        "num_inference_steps",
    ),
    (
        "guidance low",
        {"model": "tessera-demo", "prompt": "x", "guidance_scale": 0.5},
        422,
        "guidance_scale",
    ),
    (
        "guidance high",
        {"model": "tessera-demo", "prompt": "x", "guidance_scale": 21},
        422,
        "guidance_scale",
    ),
    (
        "guidance text",
        {"model": "tessera-demo", "prompt": "x", "guidance_scale": "high"},
        422,
        "guidance_scale",
    ),
    ("seed text", {"model": "tessera-demo", "prompt": "x", "seed": "lucky"}, 422, "seed"),
    ("seed too big", {"model": "tessera-demo", "prompt": "x", "seed": 2**70}, 422, "seed"),
    ("gif", {"model": "tessera-demo", "prompt": "x", "output_format": "gif"}, 422, "output_format"),
    (
        "bad response format",
        {"model": "tessera-demo", "prompt": "x", "response_format": "base64"},
        422,
        "response_format",
    ),
    ("scheduler", {"model": "tessera-demo", "prompt": "x", "scheduler": "ddim"}, 422, "scheduler"),
    (
        "image_url on a generation",
        {"model": "tessera-demo", "prompt": "x", "image_url": "https://example.com/a.png"},
        422,
        "image_url",
    ),
    ("prompt not a string", {"model": "tessera-demo", "prompt": ["a"]}, 422, "prompt"),
]


@pytest.mark.parametrize(
    ("body", "status", "field"), [b[1:] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES]
)
def test_bad_input_names_field_and_rule(
    demo_server: ServerProcess, body: dict[str, Any], status: int, field: str
) -> None:
    with demo_server.client() as client:
        result = assert_error(client.post("/images/generations", json=body), status, field)
    assert result["rule"]


def test_modality_incompatible_both_ways(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        edit_on_t2i = client.post(
            "/images/edits",
            json={
                "model": "tessera-demo",
                "prompt": "x",
                "image_url": "upload-aaaaaaaaaaaaaaaaaaaa",
            },
        )
        generate_on_i2i = client.post(
            "/images/generations", json={"model": "tessera-demo-edit", "prompt": "x"}
        )
    assert assert_error(edit_on_t2i, 400, "model")["error"] == "modality.incompatible"
    assert assert_error(generate_on_i2i, 400, "model")["error"] == "modality.incompatible"


def test_rejected_requests_create_no_job(demo_server: ServerProcess) -> None:
    """A 4xx leaves nothing behind: the next job id follows the last accepted one."""
    with demo_server.client() as client:
        first = submit(client, {"model": "tessera-demo", "prompt": "x", **FAST})
        for _ in range(3):
            client.post(
                "/images/generations",
                json={"model": "tessera-demo", "prompt": "x", "num_images": 9},
            )
        second = submit(client, {"model": "tessera-demo", "prompt": "x", **FAST})
        assert second == first + 1
        wait(client, second)


def test_unknown_route_and_method_use_the_envelope(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        assert_error(client.get("/nothing-here"), 404)
        assert_error(client.delete("/images/generations"), 405)


def test_long_poll_returns_when_the_status_changes(demo_server: ServerProcess) -> None:
    import time

    with demo_server.client() as client:
        job_id = submit(client, {"model": "tessera-demo", "prompt": "x", **FAST})
        started = time.monotonic()
        task = client.get(f"/images/tasks/{job_id}", params={"wait": 30}).json()
        assert task["status"] != "queued" or time.monotonic() - started >= 29
        final = wait(client, job_id)
        started = time.monotonic()
        again = client.get(f"/images/tasks/{job_id}", params={"wait": 30}).json()
        assert time.monotonic() - started < 2, "a finished job must not be held"
        assert again == {**final, "result": again["result"]} or again["status"] == "completed"
        assert_error(client.get(f"/images/tasks/{job_id}", params={"wait": 61}), 422, "wait")
