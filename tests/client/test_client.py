"""The client library against scripted answers: the parts a real Tessera never exercises
(servers that ignore ``wait``, other error shapes) but Hyperstack or a proxy might."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tessera.runtime import client as client_module
from tessera.runtime.client import ApiError, JobFailed, TesseraClient, WaitTimeout

Handler = Callable[[httpx.Request], httpx.Response]


def scripted(statuses: list[str], seen: list[httpx.Request]) -> Handler:
    """A server that answers task requests at once (it ignores `wait`), walking `statuses`."""
    answers: Iterator[str] = iter(statuses)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status = next(answers)
        body: dict[str, object] = {"job_id": 7, "status": status, "progress": 50}
        if status == "completed":
            png = base64.b64encode(b"\x89PNG fake").decode()
            body["result"] = {
                "data": [{"url": None, "b64_json": png, "content_type": "image/png"}],
                "usage": {"output_tokens": 4096, "total_tokens": 4096},
                "seed": 3,
            }
        if status == "failed":
            body["error"] = {"code": "job.failed", "message": "out of memory"}
        return httpx.Response(200, json=body)

    return handle


def test_exports_are_complete() -> None:
    for name in client_module.__all__:
        assert hasattr(client_module, name), name


def test_wait_falls_back_to_polling_when_wait_is_ignored(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    progress: list[str] = []
    transport = httpx.MockTransport(scripted(["queued", "in_progress", "completed"], seen))
    with TesseraClient("http://hyperstack.test/v1", "k", transport=transport) as client:
        task = client.wait(7, on_progress=lambda t: progress.append(t.status), poll_wait=0.2)
        saved = client.download(task.images[0], tmp_path / "out.png")
    assert progress == ["queued", "in_progress", "completed"]
    assert all(r.url.params["wait"] == "0.2" for r in seen)
    assert all(r.headers["api_key"] == "k" for r in seen)
    assert (task.patches, task.seed, task.images[0].extension) == (4096, 3, "png")
    assert saved.read_bytes() == b"\x89PNG fake"


def test_a_failed_job_raises_with_the_servers_reason() -> None:
    transport = httpx.MockTransport(scripted(["in_progress", "failed"], []))
    with (
        TesseraClient("http://x/v1", "k", transport=transport) as client,
        pytest.raises(JobFailed, match="job 7 failed: out of memory"),
    ):
        client.wait(7, poll_wait=0.01)


def test_waiting_gives_up_after_the_timeout() -> None:
    transport = httpx.MockTransport(scripted(["queued"] * 100, []))
    with (
        TesseraClient("http://x/v1", "k", transport=transport) as client,
        pytest.raises(WaitTimeout, match="still queued"),
    ):
        client.wait(7, timeout=0.1, poll_wait=0.02)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            422,
            {
                "code": 422,
                "message": "seed: too big",
                "status": "error",
                "error": "parameter.invalid",
                "field": "seed",
                "rule": "range",
            },
            ("seed: too big", "parameter.invalid", "seed"),
        ),
        (401, {"detail": "Not authenticated"}, ("Not authenticated", None, None)),
        (
            400,
            {"error": {"message": "bad prompt", "code": "prompt.bad", "field": "prompt"}},
            ("bad prompt", "prompt.bad", "prompt"),
        ),
        (
            422,
            {"detail": [{"loc": ["body", "num_images"], "msg": "too many"}]},
            ("num_images: too many", None, None),
        ),
        (502, "<html>Bad gateway</html>", ("<html>Bad gateway</html>", None, None)),
    ],
)
def test_error_answers_become_api_errors(
    status: int, body: object, expected: tuple[str, str | None, str | None]
) -> None:
    def handle(_request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, content=json.dumps(body).encode())

    with (
        TesseraClient("http://x/v1", "k", transport=httpx.MockTransport(handle)) as client,
        pytest.raises(ApiError) as caught,
    ):
        client.models()
    error = caught.value
    assert (error.status, (error.message, error.code, error.field)) == (status, expected)
    assert str(error).startswith(expected[0])
    assert f"HTTP {status}" in str(error)


def test_upload_never_sends_the_key_to_the_signed_url(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "GET":
            return httpx.Response(
                201, json={"signed_url": "http://storage.test/u?sig=1", "filename": "upload-abc"}
            )
        return httpx.Response(204)

    source = tmp_path / "in.png"
    source.write_bytes(b"png bytes")
    with TesseraClient("http://x/v1", "secret", transport=httpx.MockTransport(handle)) as client:
        assert client.upload(source) == "upload-abc"
    grant, put = seen
    assert grant.headers["api_key"] == "secret"
    assert "api_key" not in put.headers
    assert (put.content, put.headers["content-type"]) == (b"png bytes", "image/png")
