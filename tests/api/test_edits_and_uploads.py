"""Edits with every kind of source reference, the upload flow, and the SSRF rules."""

from __future__ import annotations

import base64
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

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
from tests.conftest import new_server
from tests.support.server import ServerProcess

EDIT = {"model": "tessera-demo-edit", "prompt": "make it blue", "image_size": "256x192", **FAST}


def upload(client: httpx.Client, data: bytes) -> tuple[str, httpx.Response]:
    grant = client.get("/images/signed-url")
    assert grant.status_code == 201, grant.text
    body = grant.json()
    put = httpx.put(body["signed_url"], content=data, timeout=60)
    return body["filename"], put


def refused_upload(client: httpx.Client, data: bytes) -> tuple[httpx.Response, str]:
    """The answer that refuses an upload, and the field it names.

    The gateway checks an upload when it is PUT (field ``body``); a presigned PUT goes
    straight to the store, which checks nothing, so the edit that reads it is refused
    instead (field ``image_url``).
    """
    filename, put = upload(client, data)
    if not put.is_success:
        return put, "body"
    return client.post("/images/edits", json={**EDIT, "image_url": filename}), "image_url"


def edit(client: httpx.Client, **fields: object) -> dict[str, object]:
    task = wait(client, submit(client, {**EDIT, **fields}, "/images/edits"))
    assert task["status"] == "completed", task
    return task


def test_edit_with_an_uploaded_image(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        filename, put = upload(client, png_bytes(300, 200))
        assert put.is_success, put.text
        task = edit(client, image_url=filename)
    result = task["result"]
    assert image_of(download(result["data"][0]["url"])).size == (256, 192)  # type: ignore[index]
    assert result["usage"]["output_tokens"] == 16 * 12  # type: ignore[index]


def test_an_upload_belongs_to_its_key(demo_server: ServerProcess) -> None:
    with demo_server.client() as owner, demo_server.client(demo_server.keys[1]) as other:
        filename, _ = upload(owner, png_bytes())
        body = assert_error(
            other.post("/images/edits", json={**EDIT, "image_url": filename}), 422, "image_url"
        )
    assert body["rule"] == "upload_exists"


def test_edit_with_this_servers_own_result_url(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        first = edit(
            client, image_url="data:image/png;base64," + base64.b64encode(png_bytes()).decode()
        )
        url = first["result"]["data"][0]["url"]  # type: ignore[index]
        chained = edit(client, image_url=url)
    assert chained["status"] == "completed"


def test_uploads_are_checked(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        not_an_image, field = refused_upload(client, b"%PDF-1.4 definitely not a picture")
        assert assert_error(not_an_image, 422, field)["rule"] == "image"
        too_large, field = refused_upload(client, b"\0" * (20 * 1024 * 1024 + 1))
        assert assert_error(too_large, 413, field)["rule"] == "max_bytes"
        grant = client.get("/images/signed-url").json()
        forged = httpx.put(tampered(grant["signed_url"]), content=png_bytes())
        assert forged.status_code in (403, 404), forged.text  # the gateway's 404, S3's 403
        unstored = client.post("/images/edits", json={**EDIT, "image_url": grant["filename"]})
    assert assert_error(unstored, 422, "image_url")["rule"] == "upload_exists"


def test_an_expired_gateway_upload_url_is_refused(serve_server: ServerProcess) -> None:
    with serve_server.client() as client:
        grant = client.get("/images/signed-url").json()
    parts = urlsplit(grant["signed_url"])
    query = parse_qs(parts.query)
    expired = f"{serve_server.base_url}{parts.path}?" + urlencode(
        {"expires": 1, "signature": query["signature"][0]}
    )
    assert_error(httpx.put(expired, content=png_bytes()), 404)


def test_result_urls_are_signed(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        task = edit(
            client, image_url="data:image/png;base64," + base64.b64encode(png_bytes()).decode()
        )
    url = str(task["result"]["data"][0]["url"])  # type: ignore[index]
    assert httpx.get(url).status_code == 200
    # The gateway answers 404 as for a missing file; S3 answers 403.
    assert httpx.get(tampered(url)).status_code in (403, 404)
    assert httpx.get(url.split("?")[0]).status_code in (403, 404)


@pytest.mark.parametrize(
    ("image_url", "rule"),
    [
        ("http://127.0.0.1:9/a.png", "public_address"),
        ("http://localhost/a.png", "public_address"),
        ("http://169.254.169.254/latest/meta-data", "public_address"),
        ("http://10.0.0.1/a.png", "public_address"),
        ("http://[::1]/a.png", "public_address"),
        ("file:///etc/passwd", "url"),
        ("ftp://example.com/a.png", "url"),
        ("data:text/plain;base64,aGk=", "data_url"),
        ("data:image/png;base64,!!!", "data_url"),
        ("upload-doesnotexistdoesnotexist", "upload_exists"),
    ],
)
def test_ssrf_and_reference_rules(demo_server: ServerProcess, image_url: str, rule: str) -> None:
    with demo_server.client() as client:
        body = assert_error(
            client.post("/images/edits", json={**EDIT, "image_url": image_url}), 422, "image_url"
        )
    assert body["rule"] == rule


def test_too_many_source_images(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        body = assert_error(
            client.post("/images/edits", json={**EDIT, "image_url": "a", "image_urls": ["b"]}),
            422,
            "image_urls",
        )
    assert body["rule"] == "max_source_images"


class _ImageHost(BaseHTTPRequestHandler):
    # Requests per path, over the module's tests.
    fetched: ClassVar[Counter[str]] = Counter()

    def do_GET(self) -> None:
        self.fetched[self.path] += 1
        routes = {
            "/photo.png": (200, "image/png", png_bytes(128, 96, "teal")),
            "/page.html": (200, "text/html", b"<html></html>"),
            "/fake.png": (200, "image/png", b"not really a png"),
            "/missing.png": (404, "text/plain", b"no"),
        }
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/photo.png")
            self.end_headers()
            return
        found = routes.get(urlsplit(self.path).path, (404, "text/plain", b"no"))
        status, content_type, body = found
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHost)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def permissive_server(
    tmp_path_factory: pytest.TempPathFactory, demo_models_dir: Path
) -> Iterator[ServerProcess]:
    """A server configured to fetch from private addresses, to test fetching itself."""
    server = new_server(
        tmp_path_factory.mktemp("permissive"), demo_models_dir, "--allow-private-image-urls"
    ).start()
    yield server
    server.stop()


def test_edit_with_a_fetched_url(permissive_server: ServerProcess, image_host: str) -> None:
    with permissive_server.client() as client:
        task = edit(client, image_url=f"{image_host}/photo.png")
        redirected = edit(client, image_url=f"{image_host}/redirect")
    assert task["status"] == redirected["status"] == "completed"


def test_an_idempotent_retry_fetches_nothing_again(
    permissive_server: ServerProcess, image_host: str
) -> None:
    body = {**EDIT, "image_url": f"{image_host}/photo.png?retry"}
    headers = {"Idempotency-Key": "edit-retry-1"}
    with permissive_server.client() as client:
        first = client.post("/images/edits", json=body, headers=headers)
        again = client.post("/images/edits", json=body, headers=headers)
        assert first.status_code == again.status_code == 200, again.text
        assert again.json()["job_id"] == first.json()["job_id"]
        assert again.headers["Idempotent-Replayed"] == "true"
        assert wait(client, first.json()["job_id"])["status"] == "completed"
    assert _ImageHost.fetched["/photo.png?retry"] == 1


@pytest.mark.parametrize(
    ("path", "rule"), [("/page.html", "image"), ("/fake.png", "image"), ("/missing.png", "fetch")]
)
def test_fetched_urls_must_be_images(
    permissive_server: ServerProcess, image_host: str, path: str, rule: str
) -> None:
    with permissive_server.client() as client:
        body = assert_error(
            client.post("/images/edits", json={**EDIT, "image_url": image_host + path}),
            422,
            "image_url",
        )
    assert body["rule"] == rule
