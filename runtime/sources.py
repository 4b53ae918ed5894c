"""Source images for edits: read once at submit time, checked, and stored beside the job.

Reading at submit time means a bad URL is a 4xx answer rather than a job that fails later,
and workers (on GPU nodes) never need to reach the internet. A reference may be:

- a ``filename`` from ``GET /images/signed-url`` (only the key that uploaded it may use it),
- one of this server's own signed URLs (read from storage directly, not fetched),
- a ``data:image/...;base64,`` URL,
- an ``http(s)`` URL, fetched with size and time limits; addresses in private, loopback,
  link-local and other non-public ranges are refused unless the server allows them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import re
import secrets
import socket
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from tessera.runtime.errors import FileNotFound, InvalidParameter, PayloadTooLarge
from tessera.runtime.keys import ApiKey
from tessera.runtime.storage import FileStore, UrlSigner

UPLOAD_NAME = re.compile(r"^upload-[A-Za-z0-9_-]{16,64}$")
_MAX_REDIRECTS = 3


@dataclass(frozen=True)
class SourceLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 14142 * 14142
    fetch_timeout_seconds: float = 10.0
    allow_private_addresses: bool = False


def upload_key(key: ApiKey, name: str) -> str:
    return f"uploads/{key.id}/{name}"


def new_upload_name() -> str:
    return "upload-" + secrets.token_urlsafe(18)


def check_image(data: bytes, limits: SourceLimits, field: str) -> Image.Image:
    """Decode ``data`` as a real image within the limits, or raise a 4xx error."""
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(
            f"{field}: the image is {len(data)} bytes; the limit is {limits.max_bytes}",
            field=field,
            rule="max_bytes",
        )
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > limits.max_pixels:
                raise InvalidParameter(
                    f"{field}: the image is {width}x{height}; at most {limits.max_pixels} "
                    "pixels are accepted",
                    field=field,
                    rule="max_pixels",
                )
            probe.verify()
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise InvalidParameter(
            f"{field}: the data is not an image in a format this server reads "
            "(png, jpeg, webp, gif, bmp, tiff)",
            field=field,
            rule="image",
        ) from None
    return image.convert("RGB")


class SourceResolver:
    def __init__(self, files: FileStore, signer: UrlSigner, limits: SourceLimits | None = None):
        self.files = files
        self.signer = signer
        self.limits = limits or SourceLimits()

    async def store_inputs(self, key: ApiKey, references: tuple[str, ...]) -> tuple[str, ...]:
        """Read, check and store each reference as a PNG; return the stored keys."""
        stored = []
        for index, reference in enumerate(references):
            field = "image_url" if index == 0 else f"image_urls[{index - 1}]"
            data = await self.read(key, reference, field)
            image = check_image(data, self.limits, field)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            name = f"inputs/{secrets.token_urlsafe(12)}.png"
            await self.files.put(name, buffer.getvalue())
            stored.append(name)
        return tuple(stored)

    async def read(self, key: ApiKey, reference: str, field: str) -> bytes:
        if UPLOAD_NAME.match(reference):
            try:
                return await self.files.get(upload_key(key, reference))
            except FileNotFound:
                raise InvalidParameter(
                    f"{field}: no uploaded image named {reference!r} for this API key "
                    "(upload it to the URL from GET /images/signed-url first)",
                    field=field,
                    rule="upload_exists",
                ) from None
        if reference.startswith("data:"):
            return self._decode_data_url(reference, field)
        own = self._own_file(reference)
        if own is not None:
            return await self.files.get(own)
        return await self._fetch(reference, field)

    def _own_file(self, reference: str) -> str | None:
        """The storage key behind one of this server's signed URLs, checked; else None."""
        base = self.signer.public_url
        if not reference.startswith(base + "/"):
            return None
        parts = urlsplit(reference)
        query = parse_qs(parts.query)
        self.signer.verify(
            parts.path, query.get("expires", [None])[0], query.get("signature", [None])[0]
        )
        for prefix in ("/v1/files/",):
            if parts.path.startswith(prefix):
                return parts.path.removeprefix(prefix)
        return None

    def _decode_data_url(self, reference: str, field: str) -> bytes:
        header, _, payload = reference.partition(",")
        if not header.startswith("data:image/") or not header.endswith(";base64"):
            raise InvalidParameter(
                f"{field}: a data URL must look like data:image/png;base64,...",
                field=field,
                rule="data_url",
            )
        if len(payload) > self.limits.max_bytes * 4 // 3 + 4:
            raise PayloadTooLarge(
                f"{field}: the image is larger than {self.limits.max_bytes} bytes",
                field=field,
                rule="max_bytes",
            )
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidParameter(
                f"{field}: the data URL is not valid base64", field=field, rule="data_url"
            ) from None

    async def _check_address(self, url: str, field: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidParameter(
                f"{field}: expected an http(s) URL, an uploaded filename or a data URL",
                field=field,
                rule="url",
            )
        if self.limits.allow_private_addresses:
            return
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                parts.hostname,
                parts.port or (443 if parts.scheme == "https" else 80),
                type=socket.SOCK_STREAM,
            )
        except OSError:
            raise InvalidParameter(
                f"{field}: cannot resolve host {parts.hostname!r}", field=field, rule="url"
            ) from None
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if not address.is_global or address.is_multicast:
                raise InvalidParameter(
                    f"{field}: {parts.hostname} resolves to {address}, a private, loopback or "
                    "link-local address; this server does not fetch from those",
                    field=field,
                    rule="public_address",
                )

    async def _fetch(self, url: str, field: str) -> bytes:
        timeout = httpx.Timeout(self.limits.fetch_timeout_seconds)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            for _ in range(_MAX_REDIRECTS + 1):
                await self._check_address(url, field)
                try:
                    async with asyncio.timeout(self.limits.fetch_timeout_seconds):
                        async with client.stream("GET", url) as response:
                            if response.is_redirect and "location" in response.headers:
                                url = str(response.url.join(response.headers["location"]))
                                continue
                            return await self._read_body(response, field)
                except (httpx.HTTPError, TimeoutError) as error:
                    raise InvalidParameter(
                        f"{field}: could not fetch the image: {error or type(error).__name__}",
                        field=field,
                        rule="fetch",
                    ) from None
        raise InvalidParameter(
            f"{field}: more than {_MAX_REDIRECTS} redirects", field=field, rule="fetch"
        )

    async def _read_body(self, response: httpx.Response, field: str) -> bytes:
        if response.status_code != 200:
            raise InvalidParameter(
                f"{field}: fetching the image answered HTTP {response.status_code}",
                field=field,
                rule="fetch",
            )
        content_type = response.headers.get("content-type", "")
        if content_type and not content_type.startswith(("image/", "application/octet-stream")):
            raise InvalidParameter(
                f"{field}: the URL serves {content_type}, not an image",
                field=field,
                rule="image",
            )
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body.extend(chunk)
            if len(body) > self.limits.max_bytes:
                raise PayloadTooLarge(
                    f"{field}: the image is larger than {self.limits.max_bytes} bytes",
                    field=field,
                    rule="max_bytes",
                )
        return bytes(body)
