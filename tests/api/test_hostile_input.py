"""Hostile sources and request bodies over a real server: every one is a 4xx naming the field
and the rule, never a 500, a stall or a job that fails later (issue 9)."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.api.helpers import (
    FAST,
    assert_error,
    download,
    image_of,
    png_bytes,
    submit,
    tampered,
    wait,
)
from tests.api.test_edits_and_uploads import EDIT, refused_upload, upload
from tests.support.server import ServerProcess

GENERATION = {"model": "tessera-demo", "prompt": "a lighthouse", **FAST}


def encoded(image: Image.Image, image_format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def post_edit(client: httpx.Client, **fields: Any) -> httpx.Response:
    return client.post("/images/edits", json={**EDIT, **fields})


def completed_edit(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    task = wait(client, submit(client, {**EDIT, **fields}, "/images/edits"))
    assert task["status"] == "completed", task
    return task


@pytest.mark.parametrize(
    "image_url",
    [
        "http://[64:ff9b::7f00:1]/a.png",
        "http://[2002:7f00:1::]/a.png",
        "http://[::ffff:127.0.0.1]/a.png",
        "http://[::ffff:a9fe:a9fe]/latest/meta-data",
        "http://0.0.0.0:8000/a.png",
        "http://100.64.0.1/a.png",
        "http://224.0.0.1/a.png",
    ],
)
def test_addresses_that_lead_to_private_ranges_are_refused(
    demo_server: ServerProcess, image_url: str
) -> None:
    with demo_server.client() as client:
        body = assert_error(post_edit(client, image_url=image_url), 422, "image_url")
    assert body["rule"] == "public_address"


@pytest.mark.parametrize(
    "image_url",
    [
        "http://example.com:99999/a.png",
        "http://example.com:-1/a.png",
        "http://example.com:abc/a.png",
        "http://[::1",
        "http://exa mple.com/a.png",
    ],
)
def test_malformed_urls_are_a_422(demo_server: ServerProcess, image_url: str) -> None:
    with demo_server.client() as client:
        body = assert_error(post_edit(client, image_url=image_url), 422, "image_url")
    assert body["rule"] == "url"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"num_images": True}, "num_images"),
        ({"num_images": "2"}, "num_images"),
        ({"num_images": 2.0}, "num_images"),
        ({"seed": "7"}, "seed"),
        ({"seed": True}, "seed"),
        ({"num_inference_steps": "1"}, "num_inference_steps"),
        ({"guidance_scale": "4.5"}, "guidance_scale"),
        ({"guidance_scale": True}, "guidance_scale"),
        ({"prompt": 5}, "prompt"),
        ({"image_size": {"width": "512", "height": 512}}, "image_size.width"),
        ({"image_size": {"width": 512, "height": True}}, "image_size.height"),
        ({"image_size": "\uff15\uff11\uff12x512"}, "image_size"),  # full-width digits
        ({"image_size": "\u0665\u0661\u0662x512"}, "image_size"),  # Arabic-Indic digits
        ({"image_size": "1" * 5000 + "x16"}, "image_size"),
        ({"output_format": "PNG"}, "output_format"),
    ],
)
def test_request_fields_are_strictly_typed(
    demo_server: ServerProcess, fields: dict[str, Any], field: str
) -> None:
    with demo_server.client() as client:
        assert_error(client.post("/images/generations", json={**GENERATION, **fields}), 422, field)


def test_a_number_is_still_a_number(demo_server: ServerProcess) -> None:
    """Strict does not mean fussy: an integer guidance scale is a number."""
    with demo_server.client() as client:
        task = wait(client, submit(client, {**GENERATION, "guidance_scale": 5, "seed": 7}))
    assert task["status"] == "completed", task


def test_a_body_that_is_not_json_says_where_it_breaks(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        response = client.post(
            "/images/generations",
            content=b'{"model": "tessera-demo",\n  "prompt": "x" "seed": 1}',
            headers={"content-type": "application/json"},
        )
        not_an_object = client.post("/images/generations", json=[1, 2])
    body = assert_error(response, 422, "body")
    assert (body["rule"], body["line"], body["column"]) == ("json_invalid", 2, 17)
    assert "line 2, column 17" in body["message"]
    assert_error(not_an_object, 422, "body")


@pytest.mark.parametrize(
    "content",
    [b"[" * 200_000, b'{"model": "tessera-demo", "prompt": "x", "seed": ' + b"[" * 200_000],
    ids=["top-level", "in-a-field"],
)
def test_json_nested_too_deep_to_parse_is_a_400(demo_server: ServerProcess, content: bytes) -> None:
    # Deeper than Python's JSON parser recurses: a client error, never a 500.
    with demo_server.client() as client:
        response = client.post(
            "/images/generations", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert "parsing the body" in response.json()["message"]


def test_this_servers_own_url_with_a_bad_signature(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        task = completed_edit(client, image_url=data_url(png_bytes()))
        url = task["result"]["data"][0]["url"]
        forged = tampered(url)
        upload_url = client.get("/images/signed-url").json()["signed_url"]
        for reference in (forged, url.split("?")[0], upload_url):
            body = assert_error(post_edit(client, image_url=reference), 422, "image_url")
            assert body["rule"] == "signed_url"


def _bomb(side: int) -> bytes:
    """A few hundred kilobytes of PNG that decode to side x side pixels."""
    return encoded(Image.new("L", (side, side)), "PNG", optimize=True)


def test_a_decompression_bomb_is_refused_before_it_is_decoded(
    demo_server: ServerProcess,
) -> None:
    bomb = _bomb(13000)
    assert len(bomb) < 1_000_000
    with demo_server.client() as client:
        put, field = refused_upload(client, bomb)
        as_data_url = post_edit(client, image_url=data_url(bomb))
    assert assert_error(put, 422, field)["rule"] == "max_pixels"
    assert assert_error(as_data_url, 422, "image_url")["rule"] == "max_pixels"


def test_a_large_source_is_scaled_down_once_at_submit(demo_server: ServerProcess) -> None:
    before = set(demo_server.stored("inputs"))
    large = Image.linear_gradient("L").resize((4096, 1024)).convert("RGB")
    with demo_server.client() as client:
        filename, put = upload(client, encoded(large, "PNG"))
        assert put.is_success, put.text
        task = completed_edit(client, image_url=filename, image_size="256x192")
    stored = demo_server.stored("inputs")
    (new,) = set(stored) - before
    # Just enough to cover 256x192 with the source's 4:1 shape: 768x192, not 4096x1024.
    assert image_of(stored[new]).size == (768, 192)
    assert image_of(download(task["result"]["data"][0]["url"])).size == (256, 192)


@pytest.mark.parametrize("size", [(8, 8), (1, 200000), (15, 4000)])
def test_a_degenerate_source_is_refused_at_submit(
    demo_server: ServerProcess, size: tuple[int, int]
) -> None:
    source = encoded(Image.new("RGB", size, "white"), "PNG")
    with demo_server.client() as client:
        body = assert_error(post_edit(client, image_url=data_url(source)), 422, "image_url")
    assert body["rule"] == "min_side"
    assert "at least 16" in body["message"]


def test_a_5_mb_data_url_makes_an_edit(demo_server: ServerProcess) -> None:
    noise = Image.effect_noise((1450, 1200), 64).convert("RGB")
    source = encoded(noise, "PNG", compress_level=0)
    assert 5_000_000 <= len(source) <= 6_000_000
    with demo_server.client(timeout=120) as client:
        task = completed_edit(client, image_url=data_url(source))
    assert task["result"]["data"][0]["width"] == 256


def _picture() -> Image.Image:
    return Image.new("RGB", (64, 48), "orange")


@pytest.mark.parametrize(
    "image_format", ["PPM", "TGA", "PCX", "SGI", "ICO", "DDS", "QOI", "XBM", "BMP", "TIFF"]
)
def test_only_the_documented_formats_are_decoded(
    demo_server: ServerProcess, image_format: str
) -> None:
    picture = _picture().convert("1") if image_format == "XBM" else _picture()
    source = encoded(picture, image_format)
    with demo_server.client() as client:
        body = assert_error(post_edit(client, image_url=data_url(source)), 422, "image_url")
        put, field = refused_upload(client, source)
    assert body["rule"] == "image"
    assert "png, jpeg, webp, gif" in body["message"]
    assert assert_error(put, 422, field)["rule"] == "image"


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP", "GIF"])
def test_the_documented_formats_make_edits(demo_server: ServerProcess, image_format: str) -> None:
    with demo_server.client() as client:
        task = completed_edit(client, image_url=data_url(encoded(_picture(), image_format)))
    assert task["result"]["data"][0]["height"] == 192
