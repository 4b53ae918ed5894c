"""Files in a bucket of any S3-compatible store, through obstore (Rust's object_store).

obstore was chosen for its import cost and its async story: about 45 ms to import and
build a client, against 0.5-0.8 s for boto3 and 0.7-1.6 s for aiobotocore (2 shared cores),
no torch, botocore or aiohttp in the process, and calls that are awaitable without a
thread per request. Its client retries what is worth retrying (connection errors, 5xx
answers, timeouts) with exponential backoff and jitter, so an S3 server that restarts
costs a request some seconds, not a failed job. Only once the retry budget is spent does
``StorageUnavailable`` reach the caller; a refusal (bad credentials, 403) comes at once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

import httpx
import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, PreconditionError
from obstore.store import S3Store

from tessera.runtime.errors import FileNotFound, StorageUnavailable
from tessera.runtime.storage.base import (
    PublicDownloads,
    check_key,
    check_size,
    content_type_for,
)

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config

# The AWS variables Tessera documents, in order of precedence (the S3-specific endpoint
# beats the general one). obstore also reads the rest of the AWS_* family from the process
# environment itself (web identity tokens, container credentials, AWS_ALLOW_HTTP).
_Setting = Literal["endpoint", "access_key_id", "secret_access_key", "session_token", "region"]
_AWS_ENVIRONMENT: tuple[tuple[str, _Setting], ...] = (
    ("AWS_ENDPOINT_URL_S3", "endpoint"),
    ("AWS_ENDPOINT_URL", "endpoint"),
    ("AWS_ACCESS_KEY_ID", "access_key_id"),
    ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
    ("AWS_SESSION_TOKEN", "session_token"),
    ("AWS_REGION", "region"),
    ("AWS_DEFAULT_REGION", "region"),
)

RETRY: RetryConfig = {
    # Bounded by time, not by count: the backoff is jittered, so a count says little
    # about how long an S3 restart the retries would outlast.
    "max_retries": 10_000,
    "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=5)},
    "retry_timeout": timedelta(minutes=2),
}
"""Two minutes of retries: an S3 server that restarts within them goes unnoticed."""


class S3FileStore:
    """One bucket, with every key under an optional prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        public_downloads: PublicDownloads = "presigned",
        environ: Mapping[str, str] | None = None,
        retry: RetryConfig = RETRY,
    ):
        environ = os.environ if environ is None else environ
        config: S3Config = {}
        for variable, setting in _AWS_ENVIRONMENT:
            if environ.get(variable) and setting not in config:
                config[setting] = environ[variable]
        # An http:// endpoint is a choice the operator made (an in-cluster SeaweedFS, say);
        # obstore refuses plain HTTP unless told.
        client: ClientConfig = {"allow_http": config.get("endpoint", "").startswith("http://")}
        self._store = S3Store(
            bucket, prefix=prefix or None, config=config, client_options=client, retry_config=retry
        )
        self.bucket = bucket
        self.prefix = prefix
        self.presigned = public_downloads == "presigned"
        self._signed_base: str | None = None

    def blocking_put(self) -> None:
        return None  # obstore's calls are awaited on the event loop

    async def put(self, key: str, data: bytes) -> None:
        await self._put(key, data, "overwrite")

    async def create(self, key: str, data: bytes) -> bool:
        # A conditional PUT (If-None-Match: *): the store, not this process, decides a race.
        try:
            await self._put(key, data, "create")
        except StorageUnavailable as error:
            if isinstance(error.__cause__, AlreadyExistsError | PreconditionError):
                return False
            raise
        return True

    async def _put(self, key: str, data: bytes, mode: Literal["overwrite", "create"]) -> None:
        with _translated(key):
            await obstore.put_async(
                self._store,
                check_key(key),
                data,
                attributes={"Content-Type": content_type_for(key)},
                mode=mode,
            )

    async def delete_older_than(self, prefix: str, seconds: float) -> int:
        cutoff = datetime.now(UTC) - timedelta(seconds=seconds)
        with _translated(prefix):
            stale = [
                meta["path"]
                async for batch in obstore.list(self._store, check_key(prefix) + "/")
                for meta in batch
                if meta["last_modified"] < cutoff
            ]
            if stale:
                await obstore.delete_async(self._store, stale)
        return len(stale)

    async def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        with _translated(key):
            result = await obstore.get_async(self._store, check_key(key))
            check_size(result.meta["size"], max_bytes)
            return bytes(await result.bytes_async())

    async def delete(self, key: str) -> None:
        with _translated(key):
            await obstore.delete_async(self._store, check_key(key))

    async def download_url(self, key: str, ttl_seconds: int) -> str | None:
        return await self._sign("GET", key, ttl_seconds)

    async def upload_url(self, key: str, ttl_seconds: int) -> str | None:
        return await self._sign("PUT", key, ttl_seconds)

    async def _sign(self, method: Literal["GET", "PUT"], key: str, ttl: int) -> str | None:
        check_key(key)
        if not self.presigned:
            return None
        with _translated(key):
            return await obstore.sign_async(self._store, method, key, timedelta(seconds=ttl))

    async def read_signed(self, url: str, max_bytes: int) -> bytes | None:
        if not url.startswith(await self._url_base()):
            return None
        # Read through the URL itself, so the store checks its signature and expiry: its
        # credentials would read any key, and the URL must grant this one. The host is the
        # store's own (the prefix fixes it), so this is no fetch from elsewhere.
        try:
            async with (
                httpx.AsyncClient(timeout=_SIGNED_READ_TIMEOUT) as client,
                client.stream("GET", url) as response,
            ):
                if response.status_code in (400, 403, 404):
                    raise FileNotFound("this link is invalid or has expired")
                response.raise_for_status()
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body.extend(chunk)
                    check_size(len(body), max_bytes)
                return bytes(body)
        except httpx.HTTPError as error:
            raise StorageUnavailable(
                "result storage cannot be reached; nothing was lost, try again shortly"
            ) from error

    async def _url_base(self) -> str:
        """What every presigned URL of this bucket and prefix starts with (path or virtual
        host style, as the store is configured), learnt from signing a probe key once."""
        if self._signed_base is None:
            probe = "tessera-probe"
            with _translated(probe):
                signed = await obstore.sign_async(self._store, "GET", probe, timedelta(minutes=1))
            self._signed_base = signed.partition("?")[0].removesuffix(probe)
        return self._signed_base


_SIGNED_READ_TIMEOUT = httpx.Timeout(30.0)


@contextlib.contextmanager
def _translated(key: str) -> Iterator[None]:
    """Turns obstore's errors into Tessera's where they enter, keeping the cause chained."""
    try:
        yield
    except FileNotFoundError as error:  # what obstore raises for a missing object
        raise FileNotFound(f"no file named {key!r}") from error
    except BaseError as error:
        raise StorageUnavailable(
            "result storage cannot be reached; nothing was lost, try again shortly"
        ) from error
