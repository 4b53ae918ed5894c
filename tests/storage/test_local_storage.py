"""What only the local store does: it reads back what it has just written from memory,
with no hand-off to a thread, and never what was deleted, swept or written elsewhere."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from tessera.runtime.errors import FileNotFound, PayloadTooLarge
from tessera.runtime.storage import LocalFileStore, local, open_storage
from tests.support.hops import HopCountingLoop


def run_counting(scenario: Callable[[HopCountingLoop], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=HopCountingLoop) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, HopCountingLoop)
        runner.run(scenario(loop))


def test_a_file_just_written_here_is_read_back_with_no_hand_off(tmp_path: Path) -> None:
    async def scenario(loop: HopCountingLoop) -> None:
        store = LocalFileStore(tmp_path)
        other = LocalFileStore(tmp_path)  # another process sharing the folder
        await store.put("results/1/0.png", b"one")
        await asyncio.to_thread(store.blocking_put(), "results/2/0.png", b"two")
        await other.put("results/3/0.png", b"three")
        loop.hops.clear()
        assert await store.get("results/1/0.png") == b"one"
        assert await store.get("results/2/0.png") == b"two"
        with pytest.raises(PayloadTooLarge):
            await store.get("results/1/0.png", max_bytes=2)
        assert loop.hops == {}
        assert await store.get("results/3/0.png") == b"three"  # from the disk
        assert loop.hops == {"LocalFileStore._get": 1}

    run_counting(scenario)


def test_what_was_deleted_or_swept_is_not_read_from_memory(tmp_path: Path) -> None:
    async def scenario(loop: HopCountingLoop) -> None:
        store = LocalFileStore(tmp_path)
        await store.put("results/1/0.png", b"one")
        await store.put("uploads/k/a.png", b"a")
        await store.delete("results/1/0.png")
        await asyncio.sleep(0.01)
        assert await store.delete_older_than("uploads", 0) == 1
        for key in ("results/1/0.png", "uploads/k/a.png"):
            with pytest.raises(FileNotFound):
                await store.get(key)

    run_counting(scenario)


def test_a_sweep_forgets_only_what_it_deleted(tmp_path: Path) -> None:
    async def scenario(loop: HopCountingLoop) -> None:
        store = LocalFileStore(tmp_path)
        await store.put("uploads/k/kept.png", b"kept")
        old = await asyncio.to_thread(store.path, "uploads/k/old.png")
        await store.put("uploads/k/old.png", b"old")
        await asyncio.to_thread(os.utime, old, (1.0, 1.0))  # written long ago, as it were
        assert await store.delete_older_than("uploads", 60) == 1
        loop.hops.clear()
        assert await store.get("uploads/k/kept.png") == b"kept"
        assert loop.hops == {}  # still from memory
        with pytest.raises(FileNotFound):
            await store.get("uploads/k/old.png")

    run_counting(scenario)


def test_a_store_that_serves_no_downloads_keeps_nothing(tmp_path: Path) -> None:
    async def scenario(loop: HopCountingLoop) -> None:
        store = open_storage(tmp_path.as_uri(), read_back_writes=False)  # a worker's
        await store.put("results/1/0.png", b"one")
        loop.hops.clear()
        assert await store.get("results/1/0.png") == b"one"
        assert loop.hops == {"LocalFileStore._get": 1}

    run_counting(scenario)


def test_memory_holds_few_bytes_for_a_few_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "RECENT_BYTES", 6)

    async def scenario(loop: HopCountingLoop) -> None:
        store = LocalFileStore(tmp_path)
        for name, data in (("big", b"1234567"), ("old", b"abc"), ("new", b"defg")):
            await store.put(f"results/{name}", data)
        loop.hops.clear()
        assert await store.get("results/new") == b"defg"
        assert loop.hops == {}  # the newest stays; the older one made room, the big never fit
        assert (await store.get("results/old"), await store.get("results/big")) == (
            b"abc",
            b"1234567",
        )
        assert loop.hops == {"LocalFileStore._get": 2}
        monkeypatch.setattr(local, "RECENT_SECONDS", 0.0)
        assert await store.get("results/new") == b"defg"
        assert loop.hops == {"LocalFileStore._get": 3}

    run_counting(scenario)
