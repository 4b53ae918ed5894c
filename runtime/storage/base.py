"""The file store contract every backend keeps, and the rules shared by all of them."""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Callable
from typing import Literal, Protocol

from tessera.runtime.errors import FileNotFound, PayloadTooLarge

PublicDownloads = Literal["presigned", "gateway"]
"""Who serves result downloads: the store itself by presigned URL, or the gateway."""

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*$")


class InvalidStorageUrl(ValueError):
    """A storage URL that breaks a rule; ``rule`` is stable, for programs and tests."""

    def __init__(self, url: str, rule: str, message: str):
        super().__init__(
            f"storage URL {url!r}: {message} (expected file:///abs/path or s3://bucket/prefix)"
        )
        self.url = url
        self.rule = rule


def content_type_for(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


def is_safe_key(key: str) -> bool:
    """Whether ``key`` stays inside the store (or prefix): no ``..``, no absolute path."""
    return bool(_SAFE_KEY.fullmatch(key)) and ".." not in key


def check_key(key: str) -> str:
    """The key itself, or ``FileNotFound`` for an unsafe one.

    A refused key answers like a missing file, so a probing client learns nothing.
    """
    if not is_safe_key(key):
        raise FileNotFound(f"no file named {key!r}")
    return key


def check_size(size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise PayloadTooLarge(
            f"the file is {size} bytes; at most {max_bytes} are accepted", rule="max_bytes"
        )


class FileStore(Protocol):
    """Results, uploads and edit inputs, by key (``results/12/0.png``)."""

    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` whole: a reader sees the old bytes or the new, never a mix."""
        ...

    def blocking_put(self) -> Callable[[str, bytes], object] | None:
        """``put`` for a caller on a thread of its own, which it blocks until the file is
        stored: the worker stores results on the pipeline's thread, in the hand-off that
        encoded them, not in one more hand-off to a thread and back. None where the store
        writes only asynchronously (S3): the caller awaits ``put``."""
        ...

    async def create(self, key: str, data: bytes) -> bool:
        """Like ``put``, but only if nothing is stored under ``key`` yet; False if something
        was. Two racing writers cannot both succeed (one PUT per upload URL)."""
        ...

    async def delete_older_than(self, prefix: str, seconds: float) -> int:
        """Delete the files under ``prefix/`` written more than ``seconds`` ago; how many."""
        ...

    async def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """The bytes, or ``FileNotFound``; ``PayloadTooLarge`` (reading nothing) past ``max_bytes``.

        The limit matters for uploads that clients PUT straight into the store.
        """
        ...

    async def delete(self, key: str) -> None:
        """Remove the file; a missing one is no error, so retention may sweep twice."""
        ...

    async def download_url(self, key: str, ttl_seconds: int) -> str | None:
        """A URL a client can GET the file from for ``ttl_seconds``, without the gateway.

        ``None`` means the store is not reachable by clients: the gateway serves the file
        under its own signed URL (``UrlSigner``, ``/v1/files/...``).
        """
        ...

    async def upload_url(self, key: str, ttl_seconds: int) -> str | None:
        """A URL a client can PUT the file to for ``ttl_seconds``; ``None``: the gateway's."""
        ...

    async def read_signed(self, url: str, max_bytes: int) -> bytes | None:
        """The file behind one of this store's own presigned GET URLs, or ``None`` when
        ``url`` is not one: an edit that names a result is read, not fetched from outside.

        ``FileNotFound`` when the signature is wrong or has expired (the store judges it).
        """
        ...
