"""What only the S3 store does: presigned URLs, AWS-style configuration, surviving a restart."""

from __future__ import annotations

import asyncio
import calendar
import secrets
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tessera.runtime.errors import FileNotFound, StorageUnavailable
from tessera.runtime.storage import LocalFileStore, open_storage
from tessera.runtime.storage.s3 import S3FileStore
from tests.support.build import run_build_script
from tests.support.s3_server import BUILD_SCRIPT, S3Server
from tests.support.server import free_port

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture
def store(s3_server: S3Server) -> S3FileStore:
    return S3FileStore(s3_server.bucket, f"test-{secrets.token_hex(4)}", environ=s3_server.environ)


def signed_at_and_ttl(url: str) -> tuple[int, int]:
    """The Unix time a SigV4 presigned URL was signed at, and the seconds it stays valid."""
    query = parse_qs(urlsplit(url).query)
    signed = time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
    return calendar.timegm(signed), int(query["X-Amz-Expires"][0])


async def test_a_presigned_download_is_a_plain_get(store: S3FileStore) -> None:
    await store.put("results/1/0.png", PNG)
    url = await store.download_url("results/1/0.png", 60)
    assert url is not None
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"


async def test_a_presigned_url_expires_after_its_ttl(store: S3FileStore) -> None:
    await store.put("results/1/0.png", PNG)
    before = int(time.time())
    url = await store.download_url("results/1/0.png", 2)
    assert url is not None
    signed, ttl = signed_at_and_ttl(url)
    assert ttl == 2 and before <= signed <= time.time()
    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).status_code == 200
        # Fetch until the store refuses: it must, soon after signed + ttl, and not before.
        deadline = time.monotonic() + 10
        while (response := await client.get(url)).status_code == 200:
            assert time.monotonic() < deadline, "the URL was still valid long past its TTL"
            await asyncio.sleep(0.2)
    assert response.status_code == 403
    assert time.time() >= signed + ttl


async def test_a_tampered_presigned_url_is_refused(store: S3FileStore) -> None:
    await store.put("results/1/0.png", PNG)
    await store.put("results/2/0.png", b"someone else's")
    url = await store.download_url("results/1/0.png", 60)
    assert url is not None
    async with httpx.AsyncClient() as client:
        response = await client.get(url.replace("results/1/", "results/2/"))
    assert response.status_code == 403


async def test_a_presigned_upload_is_a_plain_put(store: S3FileStore) -> None:
    url = await store.upload_url("uploads/key-1/upload-a.png", 60)
    assert url is not None
    async with httpx.AsyncClient() as client:
        response = await client.put(url, content=PNG)
    assert response.status_code == 200
    assert await store.get("uploads/key-1/upload-a.png") == PNG
    _, ttl = signed_at_and_ttl(url)
    assert ttl == 60


async def test_gateway_downloads_leave_every_url_to_the_gateway(
    s3_server: S3Server, tmp_path: Path
) -> None:
    behind_a_firewall = S3FileStore(
        s3_server.bucket, "gateway", public_downloads="gateway", environ=s3_server.environ
    )
    for store in (behind_a_firewall, LocalFileStore(tmp_path)):
        assert await store.download_url("results/1/0.png", 60) is None
        assert await store.upload_url("uploads/k/upload-a.png", 60) is None


async def test_configured_from_the_aws_environment(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_server.environ.items():
        monkeypatch.setenv(name, value)
    # The S3-specific endpoint wins over the general one, as in the AWS tools.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    store = open_storage(f"s3://{s3_server.bucket}/env-{secrets.token_hex(4)}")
    await store.put("results/1/0.png", PNG)
    assert await store.get("results/1/0.png") == PNG
    url = await store.download_url("results/1/0.png", 60)
    assert url is not None and url.startswith(s3_server.endpoint + "/")


async def test_wrong_credentials_fail_at_once_and_name_no_secret(s3_server: S3Server) -> None:
    environ = {**s3_server.environ, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    store = S3FileStore(s3_server.bucket, "wrong", environ=environ)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as caught:
        await store.put("results/1/0.png", PNG)
    # A refusal is not transient: it must not be retried for the two-minute budget.
    assert time.monotonic() - started < 10
    assert s3_server.secret_key not in caught.value.message


async def test_a_put_during_a_restart_waits_for_the_server(tmp_path: Path) -> None:
    server = S3Server(tmp_path / "s3").start()
    try:
        store = S3FileStore(server.bucket, "restart", environ=server.environ)
        await store.put("results/1/0.png", b"before")
        server.stop()
        put = asyncio.ensure_future(store.put("results/2/0.png", b"during"))
        # With nothing listening, the put neither fails nor finishes: it retries.
        done, _ = await asyncio.wait({put}, timeout=1.5)
        assert not done
        # Same ports, same data folder. SeaweedFS then refuses connections, and after that
        # answers writes with 5xx for its 15 s topology warm-up: both are retried.
        server.launch()
        await asyncio.wait_for(put, timeout=90)
        assert await store.get("results/1/0.png") == b"before"
        assert await store.get("results/2/0.png") == b"during"
        with pytest.raises(FileNotFound):
            await store.get("results/3/0.png")
    finally:
        server.stop()


def test_without_go_the_s3_server_is_an_error_not_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TESSERA_WEED", raising=False)
    monkeypatch.setenv("TESSERA_GO", "/nonexistent/go")
    with pytest.raises(RuntimeError, match="no Go toolchain found") as caught:
        run_build_script(BUILD_SCRIPT)
    assert "scripts/bootstrap --test" in str(caught.value)
