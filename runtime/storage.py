"""Where images live (results, uploads, edit inputs) and the signed URLs that reach them.

A URL is signed with HMAC-SHA256 over its path and expiry, so it can be fetched with a plain
GET by anyone who holds it, until it expires, and by no one who guessed a path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import mimetypes
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import urlencode

from tessera.runtime.errors import FileNotFound

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*$")


def content_type_for(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


def _check_key(key: str) -> str:
    if not _SAFE_KEY.match(key) or ".." in key:
        raise FileNotFound(f"no file named {key!r}")
    return key


class FileStore(Protocol):
    async def put(self, key: str, data: bytes) -> None: ...

    async def create(self, key: str, data: bytes) -> bool:
        """Write ``data`` only if nothing is stored under ``key`` yet; False if something was.

        Two racing writers cannot both succeed.
        """
        ...

    async def delete_older_than(self, prefix: str, seconds: float) -> int:
        """Delete the files under ``prefix`` written more than ``seconds`` ago; how many."""
        ...

    async def get(self, key: str) -> bytes:
        """The bytes, or ``FileNotFound``."""
        ...


class LocalFileStore:
    """Files under one folder; writes go through a temporary file and a rename."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / _check_key(key)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, key, data)

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

    async def get(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self.path(key).read_bytes)
        except (FileNotFoundError, IsADirectoryError):
            raise FileNotFound(f"no file named {key!r}") from None


class UrlSigner:
    """Makes and checks expiring signed URLs for paths under one public base URL."""

    def __init__(self, secret: bytes, public_url: str, ttl_seconds: int = 3600):
        self._secret = secret
        self.public_url = public_url.rstrip("/")
        self.ttl_seconds = ttl_seconds

    def _signature(self, path: str, expires: int) -> str:
        message = f"{path}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(self, path: str, ttl_seconds: int | None = None) -> str:
        """An absolute URL for ``path`` (which starts with ``/``), valid for the TTL."""
        expires = int(time.time()) + (ttl_seconds or self.ttl_seconds)
        query = urlencode({"expires": expires, "signature": self._signature(path, expires)})
        return f"{self.public_url}{path}?{query}"

    def verify(self, path: str, expires: int | str | None, signature: str | None) -> None:
        """Raise ``FileNotFound`` unless the signature matches and has not expired.

        A bad or expired signature answers like a missing file, so URLs reveal nothing.
        """
        try:
            expires_at = int(expires) if expires is not None else 0
        except ValueError:
            expires_at = 0
        expected = self._signature(path, expires_at)
        if (
            signature is None
            or not hmac.compare_digest(expected.encode(), signature.encode())
            or expires_at < time.time()
        ):
            raise FileNotFound("this link is invalid or has expired")
