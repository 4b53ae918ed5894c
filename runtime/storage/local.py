"""Files under one folder: one disk, or a ReadWriteMany volume that every pod mounts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from tessera.runtime.errors import FileNotFound
from tessera.runtime.storage.base import check_key, check_size

# What this process wrote in the last few seconds is read back from memory. In ``tessera
# serve`` the worker writes a result and its client downloads it a moment later: served
# from here, the download is no hand-off to a thread and back. Bounded in bytes and in
# age: a result is fetched once, right after its job finished. A worker-only process serves
# no downloads and keeps nothing (``read_back_writes=False``).
RECENT_SECONDS = 10.0
RECENT_BYTES = 32 * 2**20


class _RecentWrites:
    """The bytes of the files this store wrote within ``RECENT_SECONDS``, newest last,
    ``capacity`` at most; any thread may write (the pipeline's stores results)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._files: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0

    def remember(self, key: str, data: bytes) -> None:
        with self._lock:
            self._drop(key)
            if len(data) <= self.capacity:
                self._files[key] = (time.monotonic(), data)
                self._bytes += len(data)
            cutoff = time.monotonic() - RECENT_SECONDS
            while self._files and (
                self._bytes > self.capacity or next(iter(self._files.values()))[0] < cutoff
            ):
                self._drop(next(iter(self._files)))

    def recall(self, key: str) -> bytes | None:
        with self._lock:
            kept = self._files.get(key)
        if kept is None or kept[0] < time.monotonic() - RECENT_SECONDS:
            return None
        return kept[1]

    def forget(self, key: str) -> None:
        with self._lock:
            self._drop(key)

    def _drop(self, key: str) -> None:
        kept = self._files.pop(key, None)
        if kept is not None:
            self._bytes -= len(kept[1])


class LocalFileStore:
    """Writes go through a temporary file and a rename; the gateway serves every download."""

    def __init__(self, root: Path, *, read_back_writes: bool = True):
        self.root = Path(root)
        self._recent = _RecentWrites(RECENT_BYTES if read_back_writes else 0)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, key, data)

    def blocking_put(self) -> Callable[[str, bytes], object]:
        return self._put

    async def create(self, key: str, data: bytes) -> bool:
        return await asyncio.to_thread(self._put, key, data, exclusive=True)

    def _put(self, key: str, data: bytes, *, exclusive: bool = False) -> bool:
        target = self.path(key)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            if not exclusive:
                os.replace(staging, target)
            else:
                # A hard link fails if the target exists, where a rename would replace it.
                try:
                    os.link(staging, target)
                except FileExistsError:
                    return False
            self._recent.remember(key, data)
            return True
        finally:
            Path(staging).unlink(missing_ok=True)

    async def delete_older_than(self, prefix: str, seconds: float) -> int:
        return await asyncio.to_thread(self._delete_older_than, prefix, seconds)

    def _delete_older_than(self, prefix: str, seconds: float) -> int:
        root = self.path(prefix)
        cutoff = time.time() - seconds
        deleted = 0
        for path in root.rglob("*") if root.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):
                if path.is_file() and path.stat().st_mtime < cutoff:
                    # Forgotten first, as `delete` does: what a sweep keeps stays in memory.
                    self._recent.forget(path.relative_to(self.root).as_posix())
                    path.unlink()
                    deleted += 1
        return deleted

    async def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        recent = self._recent.recall(check_key(key))
        if recent is not None:
            check_size(len(recent), max_bytes)
            return recent
        return await asyncio.to_thread(self._get, key, max_bytes)

    def _get(self, key: str, max_bytes: int | None) -> bytes:
        try:
            with self.path(key).open("rb") as file:
                check_size(os.fstat(file.fileno()).st_size, max_bytes)
                return file.read()
        except (FileNotFoundError, IsADirectoryError):
            raise FileNotFound(f"no file named {key!r}") from None

    async def delete(self, key: str) -> None:
        self._recent.forget(key)
        await asyncio.to_thread(self._delete, key)

    def _delete(self, key: str) -> None:
        # A folder is no file by that key, as in S3, where "results" deletes nothing.
        with contextlib.suppress(IsADirectoryError):
            self.path(key).unlink(missing_ok=True)

    async def download_url(self, key: str, ttl_seconds: int) -> str | None:
        check_key(key)
        return None

    async def upload_url(self, key: str, ttl_seconds: int) -> str | None:
        check_key(key)
        return None

    async def read_signed(self, url: str, max_bytes: int) -> bytes | None:
        return None  # the gateway signs this store's URLs (UrlSigner)
