"""Generations through a real `tessera serve --demo` over a real socket."""

from __future__ import annotations

import base64
import uuid

import httpx
import numpy as np
import pytest

from tessera.runtime.control import REPLAYED_HEADER
from tessera.runtime.params import PRESETS
from tests.api.helpers import download, generate, image_of
from tests.support.server import ServerProcess


def test_default_request_follows_the_contract(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        task = generate(client, num_inference_steps=None)
    result = task["result"]
    assert task["progress"] == 100
    assert result["parameters"]["num_inference_steps"] == 4  # the demo model's own default
    assert (result["parameters"]["width"], result["parameters"]["height"]) == (1024, 768)
    assert result["usage"] == {"output_tokens": 3072, "total_tokens": 3072}
    assert result["created"][:2] == "20" and "T" in result["created"]
    [item] = result["data"]
    assert item["b64_json"] is None
    assert item["url"].startswith(demo_server.results_url)
    image = image_of(download(item["url"]))
    assert image.size == (1024, 768) and image.format == "PNG"


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset(demo_server: ServerProcess, preset: str) -> None:
    width, height = PRESETS[preset]
    with demo_server.client() as client:
        task = generate(client, image_size=preset)
    assert task["result"]["usage"]["output_tokens"] == -(-width // 16) * -(-height // 16)
    assert image_of(download(task["result"]["data"][0]["url"])).size == (width, height)


@pytest.mark.parametrize(
    ("image_size", "size"),
    [
        ({"width": 1000, "height": 600}, (1000, 600)),
        ("520x264", (520, 264)),
        ({"width": 17, "height": 33}, (17, 33)),
    ],
)
def test_sizes_off_the_16_pixel_grid_come_out_exact(
    demo_server: ServerProcess, image_size: object, size: tuple[int, int]
) -> None:
    with demo_server.client() as client:
        task = generate(client, image_size=image_size)
    assert image_of(download(task["result"]["data"][0]["url"])).size == size
    patches = -(-size[0] // 16) * -(-size[1] // 16)
    assert task["result"]["usage"]["output_tokens"] == patches


@pytest.mark.parametrize(
    ("output_format", "magic", "content_type"),
    [
        ("png", b"\x89PNG", "image/png"),
        ("jpeg", b"\xff\xd8\xff", "image/jpeg"),
        ("webp", b"RIFF", "image/webp"),
    ],
)
def test_output_formats(
    demo_server: ServerProcess, output_format: str, magic: bytes, content_type: str
) -> None:
    with demo_server.client() as client:
        task = generate(client, image_size="square", output_format=output_format)
    item = task["result"]["data"][0]
    assert item["content_type"] == content_type
    assert download(item["url"]).startswith(magic)


def test_same_seed_same_pixels_other_seed_other_pixels(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        first = generate(client, image_size="square", seed=42, prompt="same")
        second = generate(client, image_size="square", seed=42, prompt="same")
        other = generate(client, image_size="square", seed=43, prompt="same")
    a, b, c = (download(t["result"]["data"][0]["url"]) for t in (first, second, other))
    assert a == b
    assert a != c
    assert first["result"]["seed"] == 42


def test_unseeded_jobs_report_the_seed_that_reproduces_them(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        task = generate(client, image_size="square")
        seed = task["result"]["seed"]
        replay = generate(client, image_size="square", seed=seed)
    assert download(task["result"]["data"][0]["url"]) == download(
        replay["result"]["data"][0]["url"]
    )


def test_num_images_bills_each_and_batches_like_single_runs(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        batch = generate(client, image_size="square", seed=7, num_images=3)
        single = generate(client, image_size="square", seed=8)
    data = batch["result"]["data"]
    assert len(data) == 3
    assert batch["result"]["usage"]["output_tokens"] == 3 * 1024
    images = [np.asarray(image_of(download(item["url"])), dtype=int) for item in data]
    assert not np.array_equal(images[0], images[1])
    # Image 1 of a batch seeded 7 is the single image seeded 8, up to float noise.
    alone = np.asarray(image_of(download(single["result"]["data"][0]["url"])), dtype=int)
    assert np.abs(images[1] - alone).max() <= 2


def test_b64_json_when_asked(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        task = generate(client, image_size="square", response_format="b64_json")
    item = task["result"]["data"][0]
    assert base64.b64decode(item["b64_json"]) == download(item["url"])


def test_price_is_patches_times_rate(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        task = generate(client, image_size="square_hd")
        models = client.get("/base_models").json()["models"]
    rate = next(m for m in models if m["model_name"] == "tessera-demo")["pricing"][
        "price_per_patch"
    ]
    from decimal import Decimal

    assert Decimal(task["result"]["price"]) == 4096 * Decimal(rate)


def test_usage_reaches_prometheus_without_any_key(demo_server: ServerProcess) -> None:
    """Usage is counted per model; keys and their ids stay out of metrics (issue 9, item 9)."""
    with demo_server.client() as client:
        generate(client, image_size="square")
    metrics = "\n".join(httpx.get(url).text for url in demo_server.metrics_urls)
    line = next(
        row
        for row in metrics.splitlines()
        if row.startswith("tessera_patches_total") and 'model="tessera-demo"' in row
    )
    assert float(line.rsplit(" ", 1)[1]) >= 1024
    assert demo_server.api_key not in metrics
    assert "key_id" not in metrics


def test_negative_prompt_changes_the_image(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        plain = generate(client, image_size="square", seed=5)
        negative = generate(client, image_size="square", seed=5, negative_prompt="blurry")
    assert negative["result"]["parameters"]["negative_prompt"] == "blurry"
    assert download(plain["result"]["data"][0]["url"]) != download(
        negative["result"]["data"][0]["url"]
    )


# FastAPI answers a body sent as "application/json; charset=utf-8" itself; the submission
# routes answer a plain "application/json" one without it (api/images.py's SubmitRoute).
GENERAL_JSON = "application/json; charset=utf-8"
QUICK_JSON = "application/json"


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"model": "tessera-demo", "prompt": "a lighthouse", "image_size": "square"}', {}),
        (b'{"model": "tessera-demo", "prompt": "a lighthouse"}', {"Prefer": "wait=0"}),
        (b'{"model": "tessera-demo", "prompt": "a lighthouse"}', {"Cancel-After": "90s"}),
        (b'{"model": "tessera-demo", "prompt": "a lighthouse"}', {"Cancel-After": "soon"}),
        (b'{"model": "tessera-demo", "prompt": "a lighthouse"}', {"Prefer": "wait=never"}),
        (b'{"model": "tessera-demo", "prompt": "x", "num_images": 99}', {}),
        (b'{"model": "tessera-demo", "prompt": "x", "unknown": 1}', {}),
        (b'{"model": "no-such-model", "prompt": "x"}', {}),
        (b'{"model": "tessera-demo", "prompt": 7}', {}),
        (b'{"model": "tessera-demo", "prompt": "x"', {}),
        (b'["tessera-demo"]', {}),
        (b"", {}),
    ],
)
def test_a_submission_answers_alike_either_way(
    demo_server: ServerProcess, body: bytes, headers: dict[str, str]
) -> None:
    """The quick way and FastAPI's give the same status, the same headers and the same body
    (a new job's id aside), valid or not: the quick way hands every error to FastAPI."""

    def answer(content_type: str) -> tuple[int, dict[str, str], object]:
        with demo_server.client() as client:
            response = client.post(
                "/images/generations",
                content=body,
                headers={**headers, "content-type": content_type},
            )
        kept = {
            name: value
            for name, value in response.headers.items()
            if name not in ("date", "content-length")
        }
        document = response.json()
        if response.status_code == 200:
            assert isinstance(document.pop("job_id"), int)
        return response.status_code, kept, document

    assert answer(QUICK_JSON) == answer(GENERAL_JSON)


def test_a_repeated_idempotency_key_replays_alike_either_way(demo_server: ServerProcess) -> None:
    body = b'{"model": "tessera-demo", "prompt": "once", "image_size": "square"}'
    once = str(uuid.uuid4())
    answers = []
    with demo_server.client() as client:
        for content_type in (QUICK_JSON, GENERAL_JSON, QUICK_JSON):
            response = client.post(
                "/images/generations",
                content=body,
                headers={"content-type": content_type, "Idempotency-Key": once},
            )
            assert response.status_code == 200
            answers.append((response.json(), response.headers.get(REPLAYED_HEADER)))
    first, *replays = answers
    assert first[1] is None
    assert replays == [(first[0], "true")] * 2
