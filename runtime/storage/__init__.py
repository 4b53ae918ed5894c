"""Where images live (results, uploads, edit inputs), chosen by one storage URL.

    file:///abs/path      a folder: one disk, or a ReadWriteMany volume every pod mounts
                          (LocalFileStore; the gateway serves every download)
    s3://bucket[/prefix]  any S3-compatible store, configured as AWS tools are:
                          AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), AWS_ACCESS_KEY_ID,
                          AWS_SECRET_ACCESS_KEY, AWS_REGION (S3FileStore, needs tessera[s3])

With S3, clients download results and PUT uploads through presigned URLs of the store
itself (``public_downloads="presigned"``), so no image passes through the gateway; when
clients cannot reach the store, ``"gateway"`` makes the stores answer ``None`` and the
gateway serves the file under its own signed URL (``UrlSigner``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tessera.runtime.storage.base import (
    FileStore,
    InvalidStorageUrl,
    PublicDownloads,
    check_key,
    content_type_for,
    is_safe_key,
)
from tessera.runtime.storage.local import LocalFileStore
from tessera.runtime.storage.signing import UrlSigner

__all__ = [
    "FileStore",
    "InvalidStorageUrl",
    "LocalFileStore",
    "PublicDownloads",
    "UrlSigner",
    "check_key",
    "content_type_for",
    "open_storage",
]

# S3's rule for new bucket names: 3-63 lowercase letters, digits, dots and hyphens.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def open_storage(
    url: str,
    *,
    public_downloads: PublicDownloads = "presigned",
    environ: Mapping[str, str] | None = None,
    read_back_writes: bool = True,
) -> FileStore:
    """The store a URL names; ``InvalidStorageUrl`` names the rule a bad one breaks.

    ``environ`` (default: the process environment) holds the AWS_* settings of s3:// URLs.
    ``read_back_writes``: a file:// store keeps what this process wrote in the last seconds
    in memory, for the downloads it serves; a process that serves none turns it off.
    """
    parts = urlsplit(url)
    shown = _without_credentials(url)
    if parts.query or parts.fragment:
        raise InvalidStorageUrl(shown, "no_query", "settings go in the environment, not a query")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise InvalidStorageUrl(
                shown, "absolute_path", "a file URL takes an absolute path: three slashes"
            )
        return LocalFileStore(Path(unquote(parts.path)), read_back_writes=read_back_writes)
    if parts.scheme == "s3":
        if "@" in parts.netloc:
            raise InvalidStorageUrl(
                shown,
                "no_credentials",
                "credentials go in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, not the URL",
            )
        if not _BUCKET.match(parts.netloc):
            raise InvalidStorageUrl(
                shown,
                "bucket",
                "a bucket name is 3-63 lowercase letters, digits, dots or hyphens, with no port",
            )
        prefix = parts.path.strip("/")
        if prefix and not is_safe_key(prefix):
            raise InvalidStorageUrl(
                shown, "prefix", "a prefix is path segments of letters, digits, '_', '-' and '.'"
            )
        try:
            from tessera.runtime.storage.s3 import S3FileStore
        except ModuleNotFoundError as error:
            raise InvalidStorageUrl(
                shown, "s3_installed", "s3:// storage needs the s3 extra: pip install 'tessera[s3]'"
            ) from error
        return S3FileStore(parts.netloc, prefix, public_downloads=public_downloads, environ=environ)
    raise InvalidStorageUrl(shown, "scheme", f"unsupported scheme {parts.scheme!r}")


def _without_credentials(url: str) -> str:
    """The URL for messages and logs: a secret someone pasted into it is never repeated."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()
