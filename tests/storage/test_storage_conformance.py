"""The file store's rules (see tessera.runtime.storage.base), run against every backend.

Each backend lives in a sandbox one level above the store itself, and ``listing`` reads
the sandbox past the store, so a key that escaped the store's root or prefix would show.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tessera.runtime.errors import FileNotFound, PayloadTooLarge
from tessera.runtime.storage import FileStore, LocalFileStore
from tessera.runtime.storage.s3 import S3FileStore
from tests.support.s3_server import S3Server

BACKENDS = ["local_backend", "s3_backend"]

UNSAFE_KEYS = [
    "",
    "/etc/passwd",
    "../escaped.png",
    "results/../../escaped.png",
    "results//0.png",
    "results/..",
    ".hidden",
    "results\\0.png",
    "results/0.png?x=1",
    "results/%2e%2e/0.png",
    "results/0.png\n",
]


@dataclass
class Backend:
    store: FileStore
    listing: Callable[[], list[str]]
    """Every file in the sandbox, as paths relative to it; the store's own files are under
    ``store/``."""


@pytest.fixture
def local_backend(tmp_path: Path) -> Backend:
    def listing() -> list[str]:
        return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())

    return Backend(LocalFileStore(tmp_path / "store"), listing)


@pytest.fixture
def s3_backend(s3_server: S3Server) -> Backend:
    sandbox = f"test-{secrets.token_hex(4)}"

    def listing() -> list[str]:
        return [key.removeprefix(sandbox + "/") for key in s3_server.objects(sandbox)]

    store = S3FileStore(s3_server.bucket, f"{sandbox}/store", environ=s3_server.environ)
    return Backend(store, listing)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


async def test_put_then_get(backend: Backend) -> None:
    await backend.store.put("results/1/0.png", b"\x89PNG first")
    await backend.store.put("inputs/a.png", b"second")
    assert await backend.store.get("results/1/0.png") == b"\x89PNG first"
    assert await backend.store.get("inputs/a.png") == b"second"
    assert backend.listing() == ["store/inputs/a.png", "store/results/1/0.png"]


async def test_a_missing_key_is_file_not_found(backend: Backend) -> None:
    await backend.store.put("results/1/0.png", b"x")
    for missing in ("results/1/1.png", "results/1", "results", "nothing"):
        with pytest.raises(FileNotFound):
            await backend.store.get(missing)


@pytest.mark.parametrize("key", UNSAFE_KEYS)
async def test_unsafe_keys_are_refused_and_write_nothing(backend: Backend, key: str) -> None:
    store = backend.store
    for attempt in (
        store.put(key, b"x"),
        store.get(key),
        store.delete(key),
        store.download_url(key, 60),
        store.upload_url(key, 60),
    ):
        with pytest.raises(FileNotFound):
            await attempt
    assert backend.listing() == []


async def test_overwrite_replaces_the_bytes(backend: Backend) -> None:
    await backend.store.put("results/1/0.png", b"old, and longer than the new")
    await backend.store.put("results/1/0.png", b"new")
    assert await backend.store.get("results/1/0.png") == b"new"
    assert backend.listing() == ["store/results/1/0.png"]


async def test_delete_removes_only_that_file_and_may_repeat(backend: Backend) -> None:
    await backend.store.put("results/1/0.png", b"a")
    await backend.store.put("results/1/1.png", b"b")
    await backend.store.delete("results/1/0.png")
    await backend.store.delete("results/1/0.png")  # a retention sweep that runs twice
    await backend.store.delete("results/9/0.png")  # or one that finds nothing
    await backend.store.delete("results")  # a "folder" is no file by that key
    with pytest.raises(FileNotFound):
        await backend.store.get("results/1/0.png")
    assert await backend.store.get("results/1/1.png") == b"b"
    assert backend.listing() == ["store/results/1/1.png"]


async def test_a_large_object_round_trips(backend: Backend) -> None:
    data = os.urandom(20 * 1024 * 1024)  # past S3's 5 MiB multipart threshold
    await backend.store.put("results/1/large.png", data)
    assert await backend.store.get("results/1/large.png") == data


async def test_get_refuses_a_file_past_max_bytes(backend: Backend) -> None:
    await backend.store.put("uploads/k/upload-a.png", b"x" * 1000)
    assert await backend.store.get("uploads/k/upload-a.png", max_bytes=1000) == b"x" * 1000
    with pytest.raises(PayloadTooLarge) as caught:
        await backend.store.get("uploads/k/upload-a.png", max_bytes=999)
    assert caught.value.rule == "max_bytes" and "1000 bytes" in caught.value.message


async def test_create_writes_once_and_refuses_the_second_writer(backend: Backend) -> None:
    """One PUT per upload URL: a racing or repeated write keeps the first bytes."""
    results = await asyncio.gather(
        *(backend.store.create("uploads/key_1/a.png", b"writer %d" % n) for n in range(4))
    )
    assert sorted(results) == [False, False, False, True]
    winner = results.index(True)
    assert await backend.store.get("uploads/key_1/a.png") == b"writer %d" % winner
    assert await backend.store.create("uploads/key_1/a.png", b"again") is False
    assert backend.listing() == ["store/uploads/key_1/a.png"]


async def test_delete_older_than_sweeps_only_old_files_under_the_prefix(backend: Backend) -> None:
    await backend.store.put("uploads/key_1/a.png", b"a")
    await backend.store.put("uploads/key_2/b.png", b"b")
    await backend.store.put("results/1/0.png", b"r")
    assert await backend.store.delete_older_than("uploads", 3600) == 0
    assert len(backend.listing()) == 3
    await asyncio.sleep(1.1)  # S3 keeps last-modified times to the second
    assert await backend.store.delete_older_than("uploads", 1) == 2
    assert backend.listing() == ["store/results/1/0.png"]
    assert await backend.store.delete_older_than("uploads", 0) == 0
