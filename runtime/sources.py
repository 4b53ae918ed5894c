"""Source images for edits: read once at submit time, checked, and stored beside the job.

Reading at submit time means a bad URL is a 4xx answer rather than a job that fails later,
and workers (on GPU nodes) never need to reach the internet. A reference may be:

- a ``filename`` from ``GET /images/signed-url`` (only the key that uploaded it may use it),
- one of this server's own signed URLs (read from storage directly, not fetched),
- a ``data:image/...;base64,`` URL,
- an ``http(s)`` URL, fetched with size and time limits through ``PinnedHttp`` (which
  webhooks share) on every redirect hop: a name that answers differently the second time
  (DNS rebinding) cannot reach what the check refused. Addresses in any special-purpose
  range are refused unless the server allows them.

Decoding runs in a worker thread, never on the event loop, and only PNG, JPEG, WebP and
GIF (first frame) are decoded: every other Pillow decoder is code an attacker could reach.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import ipaddress
import re
import secrets
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from tessera.runtime.errors import FileNotFound, InvalidParameter, PayloadTooLarge
from tessera.runtime.keys import ApiKey
from tessera.runtime.params import MAX_SOURCE_BYTES, MIN_SIDE
from tessera.runtime.storage import FileStore, UrlSigner

UPLOAD_NAME = re.compile(r"^upload-[A-Za-z0-9_-]{16,64}$")
_MAX_REDIRECTS = 3
# What the API documents; Pillow would otherwise try every decoder it has (PPM, TGA, ICO...).
SOURCE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")

# Decoding the largest source takes about 100 MB and most of a core for a moment: two at a
# time bound the memory and leave the event loop a core, however many clients upload at once.
_DECODERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tessera-decode")
T = TypeVar("T")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# A host name and port to the addresses it has now; a test may answer differently each call.
Resolve = Callable[[str, int], Awaitable[list[IPAddress]]]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Local-use NAT64 (RFC 8215) and Teredo: where they lead is not a public address.
_TUNNELS = (ipaddress.IPv6Network("64:ff9b:1::/48"), ipaddress.IPv6Network("2001::/32"))


@dataclass(frozen=True)
class SourceLimits:
    max_bytes: int = MAX_SOURCE_BYTES
    # Sources are scaled to the output size at submit, so a larger one buys nothing; this
    # also stays far below Pillow's own decompression-bomb limit (89 million pixels).
    max_pixels: int = 4096 * 4096
    fetch_timeout_seconds: float = 10.0
    allow_private_addresses: bool = False
    # Networks fetched from even though they are not public (an internal image host).
    allowed_networks: tuple[IPNetwork, ...] = ()


def upload_key(key: ApiKey, name: str) -> str:
    return f"uploads/{key.id}/{name}"


def new_upload_name() -> str:
    return "upload-" + secrets.token_urlsafe(18)


@contextlib.contextmanager
def _read_for(field: str, missing: str, rule: str) -> Iterator[None]:
    """A read from the store as the request field's: too large, or not there (``missing``,
    under ``rule``)."""
    try:
        yield
    except PayloadTooLarge as error:
        raise PayloadTooLarge(f"{field}: {error.message}", field=field, rule="max_bytes") from None
    except FileNotFound:
        raise InvalidParameter(f"{field}: {missing}", field=field, rule=rule) from None


def carried_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one leads to (IPv4-mapped, NAT64, 6to4), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def is_public(address: IPAddress) -> bool:
    """True only for a globally reachable unicast address, judged by where it leads."""
    carried = carried_ipv4(address)
    if carried is not None:
        return is_public(carried)
    if isinstance(address, ipaddress.IPv6Address) and (
        address.is_site_local or any(address in network for network in _TUNNELS)
    ):
        return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


async def system_resolve(host: str, port: int) -> list[IPAddress]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0]) for info in infos]


def parse_url(reference: str, field: str) -> httpx.URL:
    """An http(s) URL with a host and a valid port, or a 422 on ``field``."""
    rule = InvalidParameter(
        f"{field}: expected an http(s) URL with a host and a port in 1..65535, an uploaded "
        "filename or a data URL",
        field=field,
        rule="url",
    )
    try:
        url = httpx.URL(reference)
    except (httpx.InvalidURL, ValueError):
        raise rule from None
    if url.scheme not in ("http", "https") or not url.host:
        raise rule
    if url.port is not None and not 1 <= url.port <= 65535:
        raise rule
    return url


def _check_dimensions(width: int, height: int, limits: SourceLimits, field: str) -> None:
    if width * height > limits.max_pixels:
        raise InvalidParameter(
            f"{field}: the image is {width}x{height}; sources may have at most "
            f"{limits.max_pixels} pixels",
            field=field,
            rule="max_pixels",
        )
    if min(width, height) < MIN_SIDE:
        raise InvalidParameter(
            f"{field}: the image is {width}x{height}; both sides of a source must be at least "
            f"{MIN_SIDE} pixels",
            field=field,
            rule="min_side",
        )


def covering_size(width: int, height: int, target: tuple[int, int]) -> tuple[int, int]:
    """The smallest size with ``width:height``'s shape that still covers ``target``; never
    larger than the image itself. A pipeline cannot use more source pixels than that."""
    scale = max(target[0] / width, target[1] / height)
    if scale >= 1:
        return width, height
    return max(target[0], round(width * scale)), max(target[1], round(height * scale))


def check_image(
    data: bytes, limits: SourceLimits, field: str, target: tuple[int, int] | None = None
) -> Image.Image:
    """Decode ``data`` as a source image within the limits (RGB, scaled down to cover
    ``target`` if given), or raise a 4xx error. Blocking: call it in a worker thread."""
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(
            f"{field}: the image is {len(data)} bytes; the limit is {limits.max_bytes}",
            field=field,
            rule="max_bytes",
        )
    try:
        with Image.open(io.BytesIO(data), formats=SOURCE_FORMATS) as image:
            # The header alone gives the size: a bomb is refused before it is decoded.
            _check_dimensions(image.width, image.height, limits, field)
            size = covering_size(image.width, image.height, target) if target else image.size
            image.draft("RGB", size)  # JPEG decodes straight to a smaller scale
            image.load()
            rgb = image.convert("RGB")
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        struct.error,
    ):
        raise InvalidParameter(
            f"{field}: the data is not an image in a format this server reads "
            f"({', '.join(name.lower() for name in SOURCE_FORMATS)})",
            field=field,
            rule="image",
        ) from None
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    return rgb


async def off_the_loop(function: Callable[..., T], *args: Any) -> T:
    """Run a blocking decode in the decoder threads."""
    return await asyncio.get_running_loop().run_in_executor(_DECODERS, function, *args)


def prepare_source(data: bytes, limits: SourceLimits, field: str, target: tuple[int, int]) -> bytes:
    """The checked source as the PNG a worker reads; blocking, for a worker thread."""
    buffer = io.BytesIO()
    check_image(data, limits, field, target).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class PinnedHttp:
    """HTTP to checked addresses only, for anything that fetches or posts to a URL a client
    named (an edit's ``image_url``, a ``webhook_url``).

    The host is resolved once, every address is checked, and the connection goes to exactly
    the checked address (the Host header and TLS server name stay the URL's), so a name that
    answers differently the second time (DNS rebinding) cannot reach what the check refused.
    Redirects are never followed here: a caller that follows them checks each hop again.
    """

    def __init__(
        self,
        allow_private_addresses: bool = False,
        allowed_networks: tuple[IPNetwork, ...] = (),
        *,
        resolve: Resolve = system_resolve,
        tls: ssl.SSLContext | None = None,
    ):
        self.allow_private_addresses = allow_private_addresses
        self.allowed_networks = allowed_networks
        self.resolve = resolve
        # Certificates are checked against the URL's host name; None: the system's CAs.
        self.tls = tls

    def allows(self, address: IPAddress) -> bool:
        return (
            self.allow_private_addresses
            or is_public(address)
            or any(address in network for network in self.allowed_networks)
        )

    async def checked_address(self, url: httpx.URL, field: str) -> IPAddress:
        """The one address to connect to: resolved once, and every answer checked."""
        host = url.host
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                addresses = await self.resolve(
                    host, url.port or (443 if url.scheme == "https" else 80)
                )
            except (OSError, UnicodeError, ValueError):
                addresses = []
        if not addresses:
            raise InvalidParameter(
                f"{field}: cannot resolve host {host!r}", field=field, rule="url"
            )
        for address in addresses:
            if not self.allows(address):
                raise InvalidParameter(
                    f"{field}: {host} resolves to {address}, which is not a public address "
                    "(private, loopback, link-local, multicast, reserved, or leading to one); "
                    "this server does not connect to those",
                    field=field,
                    rule="public_address",
                )
        return addresses[0]

    @contextlib.asynccontextmanager
    async def send(
        self,
        method: str,
        url: httpx.URL,
        field: str,
        timeout: httpx.Timeout,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """One request to the checked address of ``url``; the response is streamed, so the
        caller reads (and caps) the body itself."""
        address = await self.checked_address(url, field)
        # One client per request: a pooled connection, made for one host name, must never
        # carry a request for another.
        async with httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            verify=True if self.tls is None else self.tls,
        ) as client:
            request = client.build_request(
                method,
                url.copy_with(host=str(address)),
                content=content,
                headers={**(headers or {}), "Host": url.netloc.decode("ascii")},
                extensions={"sni_hostname": url.raw_host.decode("ascii")},
            )
            response = await client.send(request, stream=True)
            try:
                yield response
            finally:
                await response.aclose()


class SourceResolver:
    def __init__(
        self,
        files: FileStore,
        signer: UrlSigner,
        limits: SourceLimits | None = None,
        *,
        resolve: Resolve = system_resolve,
        tls: ssl.SSLContext | None = None,
    ):
        self.files = files
        self.signer = signer
        self.limits = limits or SourceLimits()
        self.http = PinnedHttp(
            self.limits.allow_private_addresses,
            self.limits.allowed_networks,
            resolve=resolve,
            tls=tls,
        )

    async def store_inputs(
        self, key: ApiKey, references: tuple[str, ...], target: tuple[int, int]
    ) -> tuple[str, ...]:
        """Read, check and store each reference as a PNG no larger than needed to cover
        ``target`` (the output size); return the stored keys."""
        stored = []
        for index, reference in enumerate(references):
            field = "image_url" if index == 0 else f"image_urls[{index - 1}]"
            data = await self.read(key, reference, field)
            png = await off_the_loop(prepare_source, data, self.limits, field, target)
            name = f"inputs/{secrets.token_urlsafe(12)}.png"
            await self.files.put(name, png)
            stored.append(name)
        return tuple(stored)

    async def read(self, key: ApiKey, reference: str, field: str) -> bytes:
        if UPLOAD_NAME.match(reference):
            missing = (
                f"no uploaded image named {reference!r} for this API key "
                "(upload it to the URL from GET /images/signed-url first)"
            )
            with _read_for(field, missing, "upload_exists"):
                # Clients may PUT uploads straight into the store, which caps nothing.
                return await self.files.get(
                    upload_key(key, reference), max_bytes=self.limits.max_bytes
                )
        if reference.startswith("data:"):
            return await self._decode_data_url(reference, field)
        if reference.startswith(self.signer.public_url + "/"):
            return await self._own_file(reference, field)
        return await self._stored_file(reference, field) or await self._fetch(reference, field)

    async def _stored_file(self, reference: str, field: str) -> bytes | None:
        """One of the store's own presigned URLs (S3), read from it; None for any other."""
        missing = (
            "this URL of the result storage is not a signed result URL, or its signature is "
            "wrong or has expired"
        )
        with _read_for(field, missing, "signed_url"):
            return await self.files.read_signed(reference, self.limits.max_bytes)

    async def _own_file(self, reference: str, field: str) -> bytes:
        """One of this server's result URLs, read from storage once its signature checks."""
        parts = urlsplit(reference)
        query = parse_qs(parts.query)
        prefix = urlsplit(self.signer.public_url).path + "/v1/files/"
        try:
            if not parts.path.startswith(prefix):
                raise FileNotFound("not a result URL")
            self.signer.verify(
                parts.path.removeprefix(urlsplit(self.signer.public_url).path),
                query.get("expires", [None])[0],
                query.get("signature", [None])[0],
            )
            return await self.files.get(parts.path.removeprefix(prefix))
        except FileNotFound:
            raise InvalidParameter(
                f"{field}: this server's URL is not a signed result URL, or its signature is "
                "wrong or has expired",
                field=field,
                rule="signed_url",
            ) from None

    async def _decode_data_url(self, reference: str, field: str) -> bytes:
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
            return await asyncio.to_thread(base64.b64decode, payload, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidParameter(
                f"{field}: the data URL is not valid base64", field=field, rule="data_url"
            ) from None

    async def _fetch(self, reference: str, field: str) -> bytes:
        url = parse_url(reference, field)
        timeout = httpx.Timeout(self.limits.fetch_timeout_seconds)
        for _ in range(_MAX_REDIRECTS + 1):
            try:
                async with (
                    asyncio.timeout(self.limits.fetch_timeout_seconds),
                    self.http.send("GET", url, field, timeout) as response,
                ):
                    if response.is_redirect and "location" in response.headers:
                        url = parse_url(str(url.join(response.headers["location"])), field)
                        continue
                    return await self._read_body(response, field)
            except (httpx.HTTPError, httpx.InvalidURL, TimeoutError) as error:
                raise InvalidParameter(
                    f"{field}: could not fetch the image: {str(error) or type(error).__name__}",
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
