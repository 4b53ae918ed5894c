"""Small helpers for API tests: submit and wait, as the Hyperstack reference client does."""

from __future__ import annotations

import io
import re
from typing import Any

import httpx
from PIL import Image

from tests.support.gateway import GatewayDeployment
from tests.support.server import ServerProcess

FAST = {"num_inference_steps": 1}


def submit(client: httpx.Client, body: dict[str, Any], path: str = "/images/generations") -> int:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["status"] == "queued"
    assert isinstance(payload["job_id"], int)
    return int(payload["job_id"])


def wait(client: httpx.Client, job_id: int, timeout: float = 120) -> dict[str, Any]:
    """Long-poll until the job is finished."""
    for _ in range(int(timeout / 10) + 1):
        response = client.get(f"/images/tasks/{job_id}", params={"wait": 10})
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        if task["status"] in ("completed", "failed", "cancelled"):
            return task
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {task}")


def generate(client: httpx.Client, **body: Any) -> dict[str, Any]:
    body = {"model": "tessera-demo", "prompt": "a lighthouse at dusk", **FAST, **body}
    task = wait(client, submit(client, body))
    assert task["status"] == "completed", task
    return task


def download(url: str) -> bytes:
    """A plain GET, no key: result URLs are signed."""
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    return response.content


def image_of(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def png_bytes(width: int = 64, height: int = 48, colour: str = "orange") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_error(response: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == "error" and body["code"] == status
    assert body["message"]
    if field is not None:
        assert body["field"] == field, body
    return body


def tampered(url: str) -> str:
    """A signed URL with its signature changed: the gateway's ``signature=`` or S3's
    ``X-Amz-Signature=``."""
    forged, count = re.subn(r"(?i)(signature=)", r"\g<1>0", url, count=1)
    assert count == 1, url
    return forged


def store_url(server: ServerProcess | GatewayDeployment) -> str:
    """The job store a test deployment writes, for reading its ledger past the API."""
    if isinstance(server, GatewayDeployment):
        return server.redis.url
    return f"sqlite:///{server.data_dir / 'jobs.db'}"
