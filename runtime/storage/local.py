"""Files under one folder: one disk, or a ReadWriteMany volume that every pod mounts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
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

    def _put(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(staging, target)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise

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
