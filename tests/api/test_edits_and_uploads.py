"""Edits with every kind of source reference, the upload flow, and the SSRF rules."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from tests.api.helpers import FAST, assert_error, download, image_of, png_bytes, submit, wait
from tests.conftest import new_server
from tests.support.server import ServerProcess

EDIT = {"model": "tessera-demo-edit", "prompt": "make it blue", "image_size": "256x192", **FAST}


def upload(client: httpx.Client, data: bytes) -> tuple[str, httpx.Response]:
    grant = client.get("/images/signed-url")
    assert grant.status_code == 201, grant.text
    body = grant.json()
    put = httpx.put(body["signed_url"], content=data, timeout=60)
    return body["filename"], put


def edit(client: httpx.Client, **fields: object) -> dict[str, object]:
    task = wait(client, submit(client, {**EDIT, **fields}, "/images/edits"))
    assert task["status"] == "completed", task
    return task


def test_edit_with_an_uploaded_image(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        filename, put = upload(client, png_bytes(300, 200))
        assert put.status_code == 204, put.text
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
        _, not_an_image = upload(client, b"%PDF-1.4 definitely not a picture")
        assert_error(not_an_image, 422, "body")
        _, too_large = upload(client, b"\0" * (20 * 1024 * 1024 + 1))
        assert_error(too_large, 413)
        grant = client.get("/images/signed-url").json()
    parts = urlsplit(grant["signed_url"])
    query = parse_qs(parts.query)
    forged = f"{demo_server.base_url}{parts.path}?" + urlencode(
        {"expires": int(query["expires"][0]) + 10_000, "signature": query["signature"][0]}
    )
    assert_error(httpx.put(forged, content=png_bytes()), 404)
    expired = f"{demo_server.base_url}{parts.path}?" + urlencode(
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
    assert_error(httpx.get(url.replace("signature=", "signature=0")), 404)
    assert_error(httpx.get(url.split("?")[0]), 404)


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
    def do_GET(self) -> None:
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
        status, content_type, body = routes.get(self.path, (404, "text/plain", b"no"))
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
