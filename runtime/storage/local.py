"""Files under one folder: one disk, or a ReadWriteMany volume that every pod mounts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tessera.runtime.errors import FileNotFound
from tessera.runtime.storage.base import check_key, check_size


class LocalFileStore:
    """Writes go through a temporary file and a rename; the gateway serves every download."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, key, data)

    def blocking_put(self) -> Callable[[str, bytes], None]:
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
                return True
            # A hard link fails if the target exists, where a rename would replace it.
            try:
                os.link(staging, target)
            except FileExistsError:
                return False
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
                    path.unlink()
                    deleted += 1
        return deleted

    async def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        return await asyncio.to_thread(self._get, key, max_bytes)

    def _get(self, key: str, max_bytes: int | None) -> bytes:
        try:
            with self.path(key).open("rb") as file:
                check_size(os.fstat(file.fileno()).st_size, max_bytes)
                return file.read()
        except (FileNotFoundError, IsADirectoryError):
            raise FileNotFound(f"no file named {key!r}") from None

    async def delete(self, key: str) -> None:
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
