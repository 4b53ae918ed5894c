"""The OpenAI-compatible API under hostile input: a 4xx that names the parameter, never a
5xx, never a job, and a multipart body that is cut off at its limit rather than buffered."""

from __future__ import annotations

import select
import socket
import sqlite3
import struct
import zlib
from typing import Any

import httpx
import pytest

from tessera.runtime.openai import OpenAISettings
from tessera.runtime.sources import SourceLimits
from tests.api.helpers import png_bytes
from tests.support.server import ServerProcess

GENERATIONS = "/openai/v1/images/generations"
EDITS = "/openai/v1/images/edits"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def demo_server(serve_server: ServerProcess) -> ServerProcess:
    """``serve`` only: "never a job" is counted in its SQLite store. The requests refused here
    are answered before any store is touched, so the gateway shares these code paths."""
    return serve_server


def job_count(server: ServerProcess) -> int:
    with sqlite3.connect(server.data_dir / "jobs.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])


def refused(response: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["param"] == param, error
    assert error["message"] and error["type"] == "invalid_request_error"
    return error


@pytest.fixture
def client(demo_server: ServerProcess) -> httpx.Client:
    return httpx.Client(
        base_url=demo_server.base_url,
        headers={"Authorization": f"Bearer {demo_server.api_key}"},
        timeout=60,
    )


def huge_png(width: int, height: int) -> bytes:
    """A PNG header claiming ``width`` x ``height`` and almost no data: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "n": 10**30}, "n"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "n": "many"}, "n"),
        ({"prompt": "x", "n": "2"}, "n"),
        ({"prompt": "x", "n": 2.0}, "n"),
        ({"prompt": "x", "stream": "false"}, "stream"),
        ({"prompt": "x", "size": ""}, "size"),
        ({"prompt": "x", "size": "x"}, "size"),
        ({"prompt": "x", "size": "0x0"}, "size"),
        ({"prompt": "x", "size": "-16x16"}, "size"),
        ({"prompt": "x", "size": "1e3x10"}, "size"),
        ({"prompt": "x", "size": "1024x1024x3"}, "size"),
        ({"prompt": "x", "size": "99999999999999999999x16"}, "size"),
        ({"prompt": "x", "size": "9" * 10_000}, "size"),
        ({"prompt": "x", "size": {"width": 64, "height": 64}}, "size"),
        ({"prompt": "x" * 10_001}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"n": 1}, "prompt"),
        ({"prompt": "x", "response_format": "file"}, "response_format"),
        ({"prompt": "x", "partial_images": 2}, "partial_images"),
        ({"prompt": "x", "output_compression": 50}, "output_compression"),
        ({"prompt": "x", "seed": 2**70}, "seed"),
    ],
)
def test_bad_generation_fields_name_the_parameter(
    demo_server: ServerProcess, client: httpx.Client, body: dict[str, Any], param: str
) -> None:
    before = job_count(demo_server)
    refused(client.post(GENERATIONS, json=body), 400, param)
    assert job_count(demo_server) == before


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_a_body_that_is_not_an_object_is_a_bad_request(
    client: httpx.Client, content: bytes
) -> None:
    response = client.post(
        GENERATIONS, content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]


def _edit_cases() -> list[tuple[dict[str, Any], int, str | None]]:
    png = ("a.png", png_bytes(), "image/png")
    return [
        ({"files": [("mask", png)], "data": {"prompt": "x"}}, 400, "image"),
        ({"files": [("mask", png)], "data": {"prompt": "x", "image": "not a file"}}, 400, "image"),
        ({"files": [("image", png), ("prompt", ("p.txt", b"x", "text/plain"))]}, 400, "prompt"),
        ({"files": [("image", png)], "data": {"prompt": "x", "n": "two"}}, 400, "n"),
        ({"files": [("image", png)], "data": {"prompt": "x", "size": "huge"}}, 400, "size"),
        ({"files": [("image", png)], "data": {"prompt": ["x", "y"]}}, 400, "prompt"),
        ({"files": [("image", png)], "data": {"prompt": "x", "colour": "red"}}, 400, "colour"),
        ({"files": [("image", png)], "data": {"prompt": "x", "mask": "text"}}, 400, "mask"),
        (
            {"files": [("image", ("a.png", b"GIF89a?", "image/png"))], "data": {"prompt": "x"}},
            400,
            "image",
        ),
        (
            {
                "files": [("image", ("b.png", huge_png(50_000, 50_000), "image/png"))],
                "data": {"prompt": "x"},
            },
            400,
            "image",
        ),
        # The parser's own limits concern the whole body, so they name no parameter.
        ({"files": [("image[]", png)] * 6, "data": {"prompt": "x"}}, 400, None),
        ({"files": [("image", png)], "data": {"prompt": "x" * (70 * 1024)}}, 400, None),
        ({"files": [("image", png)], "data": {f"f{i}": "1" for i in range(40)}}, 400, None),
        ({"files": [("image", png), ("image", png)], "data": {"prompt": "x"}}, 400, "image"),
    ]


@pytest.mark.parametrize(("fields", "status", "param"), _edit_cases())
def test_bad_multipart_edits_name_the_parameter(
    demo_server: ServerProcess,
    client: httpx.Client,
    fields: dict[str, Any],
    status: int,
    param: str | None,
) -> None:
    before = job_count(demo_server)
    fields.setdefault("data", {}).setdefault("model", "tessera-demo-edit")
    refused(client.post(EDITS, **fields), status, param)
    assert job_count(demo_server) == before


@pytest.mark.parametrize(
    ("content_type", "content"),
    [
        ("application/json", b'{"prompt": "x"}'),
        ("application/x-www-form-urlencoded", b"prompt=x&image=y"),
        ("multipart/form-data", b"--x\r\n"),
        ("multipart/form-data; boundary=abc", b"this is no multipart body at all"),
        ("multipart/form-data; boundary=abc", b"--abc\r\nContent-Disposition: form-data\r\n\r\nx"),
    ],
)
def test_malformed_multipart_is_a_bad_request(
    client: httpx.Client, content_type: str, content: bytes
) -> None:
    response = client.post(EDITS, content=content, headers={"content-type": content_type})
    refused(response, 400, None)


def test_a_file_over_the_source_image_limit_is_refused(client: httpx.Client) -> None:
    too_big = png_bytes() + b"\0" * SourceLimits().max_bytes
    response = client.post(
        EDITS, files={"image": ("a.png", too_big, "image/png")}, data={"prompt": "x"}
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["param"] == "image"


def _raw_request(server: ServerProcess, headers: list[str]) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    head = [f"POST {EDITS} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {server.api_key}"]
    connection.sendall(("\r\n".join([*head, *headers]) + "\r\n\r\n").encode())
    return connection


def _status(connection: socket.socket) -> int:
    answer = connection.recv(65536).decode(errors="replace")
    return int(answer.split(" ", 2)[1])


def test_a_declared_length_over_the_limit_is_refused_before_reading(
    demo_server: ServerProcess,
) -> None:
    declared = OpenAISettings().max_body_bytes + 1
    with _raw_request(
        demo_server,
        ["Content-Type: multipart/form-data; boundary=abc", f"Content-Length: {declared}"],
    ) as connection:
        assert _status(connection) == 413


def test_a_streamed_body_is_cut_off_at_the_limit(demo_server: ServerProcess) -> None:
    """Chunked, so no length is declared: the server stops reading at the limit and answers."""
    limit = OpenAISettings().max_body_bytes
    with _raw_request(
        demo_server,
        ["Content-Type: multipart/form-data; boundary=abc", "Transfer-Encoding: chunked"],
    ) as connection:
        opening = b'--abc\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        connection.sendall(b"%x\r\n%s\r\n" % (len(opening), opening))
        sent = 0
        block = b"\0" * MIB
        while not select.select([connection], [], [], 0)[0]:
            assert sent <= limit + 8 * MIB, "the server read far past its limit"
            try:
                connection.sendall(b"%x\r\n%s\r\n" % (len(block), block))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(block)
        assert _status(connection) == 413
    assert sent >= limit - MIB
