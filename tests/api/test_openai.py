"""The OpenAI-compatible API, driven by the official ``openai`` SDK against a real server."""

from __future__ import annotations

import base64
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from tests.api.helpers import FAST, download, generate, image_of, png_bytes, submit, wait
from tests.conftest import new_server
from tests.support.server import ServerProcess

# Long enough (a few seconds on one core) for a client to give up or leave while it runs.
SLOW = {"num_inference_steps": 50}


def sdk(server: ServerProcess, key: str | None = None, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.base_url + "/openai/v1", api_key=key or server.api_key, **options
    )


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(image_of(data), dtype=int)


def jobs_with_prompt(server: ServerProcess, prompt: str) -> list[sqlite3.Row]:
    """Jobs and their usage rows, read from ``serve``'s SQLite store: the tests that count
    attempts and bills run on ``serve`` (the gateway's Redis store is counted in tests/gateway).
    """
    with sqlite3.connect(server.data_dir / "jobs.db") as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT jobs.id, jobs.status, jobs.attempts, jobs.params,"
            " (SELECT COUNT(*) FROM ledger WHERE ledger.job_id = jobs.id) AS billed"
            " FROM jobs ORDER BY jobs.id"
        ).fetchall()
    return [row for row in rows if json.loads(row["params"])["prompt"] == prompt]


def poll_job(server: ServerProcess, prompt: str, statuses: set[str]) -> sqlite3.Row:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = jobs_with_prompt(server, prompt)
        if rows and rows[-1]["status"] in statuses:
            return rows[-1]
        time.sleep(0.05)
    raise AssertionError(f"no job for {prompt!r} reached {statuses}")


def test_generate_two_images_at_an_odd_size_as_b64(demo_server: ServerProcess) -> None:
    answer = sdk(demo_server).images.generate(
        model="tessera-demo",
        prompt="a lighthouse at dusk",
        n=2,
        size="200x136",
        response_format="b64_json",
        extra_body={**FAST, "seed": 11},
    )
    assert len(answer.data or []) == 2
    images = [base64.b64decode(item.b64_json or "") for item in answer.data or []]
    assert [image_of(data).size for data in images] == [(200, 136), (200, 136)]
    assert all(item.url is None for item in answer.data or [])
    assert answer.size == "200x136" and answer.output_format == "png"
    assert answer.usage is not None
    assert answer.usage.output_tokens == answer.usage.total_tokens == 2 * 13 * 9
    assert abs(answer.created - time.time()) < 120

    # The same request to the native API bills the same patches and makes the same pixels.
    with demo_server.client() as client:
        native = generate(
            client, prompt="a lighthouse at dusk", num_images=2, image_size="200x136", seed=11
        )
    assert native["result"]["usage"]["output_tokens"] == answer.usage.output_tokens
    for ours, theirs in zip(images, native["result"]["data"], strict=True):
        assert np.abs(pixels(ours) - pixels(download(theirs["url"]))).max() <= 1


def test_generate_as_url_with_the_only_text_to_image_model(demo_server: ServerProcess) -> None:
    answer = sdk(demo_server).images.generate(
        prompt="a fox", size="72x40", output_format="jpeg", extra_body=FAST
    )
    [item] = answer.data or []
    assert item.b64_json is None and item.url
    assert item.url.startswith(demo_server.results_url)
    data = download(item.url)
    assert data.startswith(b"\xff\xd8\xff")
    assert image_of(data).size == (72, 40)
    assert answer.usage is not None and answer.usage.output_tokens == 5 * 3


def test_size_auto_and_quality_follow_the_model(serve_server: ServerProcess) -> None:
    client = sdk(serve_server)
    client.images.generate(prompt="auto sized", size="auto", quality="low")
    [row] = jobs_with_prompt(serve_server, "auto sized")
    params = json.loads(row["params"])
    # The demo model's own default size, and half its default 4 steps.
    assert (params["width"], params["height"], params["num_inference_steps"]) == (1024, 768, 2)


@pytest.mark.parametrize("field", ["image", "image[]"])
def test_edit_with_an_uploaded_png(demo_server: ServerProcess, field: str) -> None:
    source = png_bytes(96, 64)
    # A single file goes up as `image`, a list as `image[]`, as the SDK sends them.
    image: Any = ("source.png", source, "image/png")
    answer = sdk(demo_server).images.edit(
        model="tessera-demo-edit",
        image=image if field == "image" else [image],
        prompt="make it teal",
        size="64x64",
        response_format="b64_json",
        extra_body={**FAST, "seed": 3},
    )
    [item] = answer.data or []
    edited = base64.b64decode(item.b64_json or "")
    assert image_of(edited).size == (64, 64)
    assert answer.usage is not None and answer.usage.output_tokens == 16

    with demo_server.client() as client:
        body = {
            "model": "tessera-demo-edit",
            "prompt": "make it teal",
            "image_size": "64x64",
            "seed": 3,
            "image_url": "data:image/png;base64," + base64.b64encode(source).decode(),
            **FAST,
        }
        native = wait(client, submit(client, body, "/images/edits"))
    assert native["result"]["usage"]["output_tokens"] == answer.usage.output_tokens
    native_pixels = pixels(download(native["result"]["data"][0]["url"]))
    assert np.abs(pixels(edited) - native_pixels).max() <= 1


def test_models_list_and_retrieve(demo_server: ServerProcess) -> None:
    client = sdk(demo_server)
    models = {model.id: model for model in client.models.list()}
    assert set(models) == {"tessera-demo", "tessera-demo-edit"}
    assert models["tessera-demo-edit"].model_extra == {"task": "image-to-image"}
    assert client.models.retrieve("tessera-demo").owned_by == "Tessera"


def _error(call: Any, kind: type[openai.APIStatusError]) -> dict[str, Any]:
    with pytest.raises(kind) as caught:
        call()
    body = caught.value.body
    assert isinstance(body, dict), body
    assert set(body) == {"message", "type", "param", "code"}, body
    assert body["message"]
    return body


def test_every_error_class_the_sdk_maps(demo_server: ServerProcess) -> None:
    client = sdk(demo_server, max_retries=0)
    wrong = sdk(demo_server, key="not-a-key", max_retries=0)

    body = _error(wrong.models.list, openai.AuthenticationError)
    assert body["type"] == "authentication_error"
    missing = httpx.get(demo_server.base_url + "/openai/v1/models")
    assert missing.status_code == 401 and "Bearer" in missing.json()["error"]["message"]

    body = _error(lambda: client.models.retrieve("no-such-model"), openai.NotFoundError)
    assert body["code"] == "model.not_found" and "tessera-demo" in body["message"]
    body = _error(
        lambda: client.images.generate(model="no-such-model", prompt="x"), openai.NotFoundError
    )
    assert body["param"] == "model"
    unknown = httpx.post(
        demo_server.base_url + "/openai/v1/chat/completions",
        headers={"Authorization": f"Bearer {demo_server.api_key}"},
        json={},
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "Invalid URL (POST /openai/v1/chat/completions)"

    cases: list[tuple[dict[str, Any], str]] = [
        ({"size": "1024"}, "size"),
        ({"size": "5000x5000"}, "size"),
        ({"n": 5}, "n"),
        ({"style": "vivid"}, "style"),
        ({"background": "transparent"}, "background"),
        ({"output_format": "gif"}, "output_format"),
        ({"stream": True}, "stream"),
        ({"model": "tessera-demo-edit"}, "model"),
        ({"extra_body": {"num_inference_steps": 0}}, "num_inference_steps"),
        ({"extra_body": {"frames": 3}}, "frames"),
    ]
    for fields, param in cases:
        body = _error(
            lambda fields=fields: client.images.generate(prompt="x", **fields),
            openai.BadRequestError,
        )
        assert body["param"] == param, (fields, body)
        assert body["type"] == "invalid_request_error"

    body = _error(
        lambda: client.images.edit(image=png_bytes(), mask=png_bytes(), prompt="x"),
        openai.BadRequestError,
    )
    assert body["param"] == "mask" and "inpainting" in body["message"]
    body = _error(
        lambda: client.images.edit(model="tessera-demo", image=png_bytes(), prompt="x"),
        openai.BadRequestError,
    )
    assert body["param"] == "model"

    # The native API keeps its own envelope.
    native = httpx.get(demo_server.api_url + "/base_models")
    assert native.status_code == 401 and native.json()["status"] == "error"


@pytest.fixture
def strict_server(tmp_path: Path, demo_models_dir: Path) -> Iterator[ServerProcess]:
    """A server that holds one request per key."""
    server = new_server(tmp_path / "strict", demo_models_dir, "--openai-max-waiting", "1").start()
    yield server
    server.stop()


def test_a_key_holding_too_many_requests_gets_a_rate_limit(strict_server: ServerProcess) -> None:
    held: dict[str, Any] = {}

    def hold() -> None:
        held["answer"] = sdk(strict_server).images.generate(
            prompt="held", size="1024x1024", extra_body=SLOW
        )

    thread = threading.Thread(target=hold)
    thread.start()
    poll_job(strict_server, "held", {"queued", "in_progress"})
    body = _error(
        lambda: sdk(strict_server, max_retries=0).images.generate(prompt="second"),
        openai.RateLimitError,
    )
    assert body["type"] == "rate_limit_error"
    thread.join(120)
    assert held["answer"].data
    assert jobs_with_prompt(strict_server, "second") == [], "a refused request makes no job"


def test_a_short_sdk_timeout_gets_the_job_id_and_never_a_second_job(
    serve_server: ServerProcess,
) -> None:
    prompt = "impatient client"
    client = sdk(serve_server, timeout=2.0)  # answered at 1 s; retries left at the default 2
    with pytest.raises(openai.InternalServerError) as caught:
        client.images.generate(prompt=prompt, size="2048x2048", extra_body=SLOW)
    assert caught.value.status_code == 504
    assert caught.value.response.headers["x-should-retry"] == "false"
    job_id = int(caught.value.response.headers["x-tessera-job-id"])
    assert f"job {job_id}" in caught.value.message
    with serve_server.client() as native:
        # 2048x2048 outlasts the 1 s answer; on two busy cores it may take minutes.
        assert wait(native, job_id, timeout=360)["status"] == "completed"
    [row] = jobs_with_prompt(serve_server, prompt)
    assert (row["id"], row["attempts"], row["billed"]) == (job_id, 1, 1)


def test_a_client_that_disconnects_mid_job_is_billed_once(serve_server: ServerProcess) -> None:
    prompt = "the client walks away"
    body = json.dumps({"prompt": prompt, "size": "1024x1024", **SLOW}).encode()
    request = (
        b"POST /openai/v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {serve_server.api_key}\r\n".encode()
        + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with socket.create_connection(("127.0.0.1", serve_server.port)) as connection:
        connection.sendall(request)
        job = poll_job(serve_server, prompt, {"in_progress"})
    with serve_server.client() as native:
        task = wait(native, job["id"])
    assert task["status"] == "completed"
    [row] = jobs_with_prompt(serve_server, prompt)
    assert (row["attempts"], row["billed"]) == (1, 1)
    deadline = time.monotonic() + 10
    while f"the client left while job {job['id']}" not in serve_server.log():
        assert time.monotonic() < deadline, "the server never noticed the client leave"
        time.sleep(0.05)
