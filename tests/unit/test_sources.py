"""Source fetching: which addresses are public, and that a fetch connects to exactly the
address it checked, over real loopback sockets with a resolver the test controls."""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tessera.runtime.errors import InvalidParameter
from tessera.runtime.keys import ApiKey
from tessera.runtime.sources import (
    IPAddress,
    SourceLimits,
    SourceResolver,
    covering_size,
    is_public,
    parse_url,
)
from tessera.runtime.storage import LocalFileStore, UrlSigner
from tests.support.image_host import ImageHost, served_png


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "192.0.2.1",  # documentation
        "198.18.0.1",  # benchmarking
        "224.0.0.1",  # multicast, which ipaddress calls global
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "fe80::1",
        "fec0::1",  # site-local, deprecated but still not public
        "fc00::1",
        "ff02::1",
        "ff0e::1",  # global-scope multicast
        "100::1",  # discard-only
        "2001:db8::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.0.0.1",
        "::127.0.0.1",  # IPv4-compatible, deprecated
        "64:ff9b::7f00:1",  # NAT64 to 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 to 169.254.169.254
        "64:ff9b:1::808:808",  # local-use NAT64 (RFC 8215)
        "2002:7f00:1::",  # 6to4 from 127.0.0.1
        "2002:c0a8:101::1",  # 6to4 from 192.168.1.1
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    ],
)
def test_special_purpose_addresses_are_refused(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "93.184.215.14",
        "2606:4700:4700::1111",
        "2a00:1450:4001:80b::200e",
        "64:ff9b::808:808",  # NAT64 to 8.8.8.8: how an IPv6-only cluster reaches the web
        "2002:808:808::1",  # 6to4 from 8.8.8.8
        "::ffff:8.8.8.8",
    ],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com:99999/a.png",
        "http://example.com:-1/a.png",
        "http://example.com:abc/a.png",
        "http://example.com:0/a.png",
        "http://[::1",
        "http://[::1]x/",
        "http:///a.png",
        "ftp://example.com/a.png",
        "file:///etc/passwd",
        "//example.com/a.png",
    ],
)
def test_malformed_urls_are_a_parameter_error(url: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        parse_url(url, "image_url")
    assert (caught.value.field, caught.value.rule) == ("image_url", "url")


@pytest.mark.parametrize(
    ("size", "target", "expected"),
    [
        ((4096, 4096), (512, 512), (512, 512)),
        ((4096, 1024), (512, 512), (2048, 512)),  # covers the output, keeps its shape
        ((300, 200), (512, 512), (300, 200)),  # never scaled up
        ((1000, 1000), (1024, 768), (1000, 1000)),
    ],
)
def test_a_source_is_scaled_to_just_cover_the_output(
    size: tuple[int, int], target: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert covering_size(*size, target) == expected


@pytest.fixture
def hosts() -> Iterator[tuple[ImageHost, ImageHost]]:
    """One port on two loopback addresses: 127.0.0.2, which the tests allow, and 127.0.0.1,
    where the system resolves ``localhost`` and which stays refused."""
    for _ in range(20):
        allowed = ImageHost("127.0.0.2")
        try:
            refused = ImageHost("127.0.0.1", allowed.port)
        except OSError:  # that port is taken on 127.0.0.1; try another
            allowed.close()
            continue
        yield allowed, refused
        allowed.close()
        refused.close()
        return
    raise RuntimeError("no port free on both 127.0.0.1 and 127.0.0.2")


class Rebinding:
    """A resolver that answers 127.0.0.2 the first time and 127.0.0.1 ever after, as a name
    with a zero TTL can."""

    def __init__(self) -> None:
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.lookups.append(host)
        return [ipaddress.ip_address("127.0.0.2" if len(self.lookups) == 1 else "127.0.0.1")]


def _resolver(
    tmp_path: Path, resolve: Rebinding, tls: ssl.SSLContext | None = None
) -> SourceResolver:
    limits = SourceLimits(
        allowed_networks=(ipaddress.ip_network("127.0.0.2/32"),), fetch_timeout_seconds=5
    )
    signer = UrlSigner(b"s" * 32, "http://127.0.0.1:1")
    return SourceResolver(LocalFileStore(tmp_path), signer, limits, resolve=resolve, tls=tls)


async def test_a_fetch_connects_to_the_address_it_checked(
    tmp_path: Path, hosts: tuple[ImageHost, ImageHost]
) -> None:
    allowed, refused = hosts
    resolve = Rebinding()
    # `localhost` is 127.0.0.1 to the system too: a second lookup of any kind would land there.
    url = f"http://localhost:{allowed.port}/photo.png"
    data = await _resolver(tmp_path, resolve).read(ApiKey("k"), url, "image_url")
    assert data == served_png()
    assert resolve.lookups == ["localhost"]
    assert allowed.hosts_seen == [f"localhost:{allowed.port}"]  # the URL's Host, kept
    assert refused.hosts_seen == []


async def test_every_redirect_hop_is_resolved_and_checked(
    tmp_path: Path, hosts: tuple[ImageHost, ImageHost]
) -> None:
    allowed, refused = hosts
    allowed.redirect_to = f"http://images.test:{allowed.port}/photo.png"
    resolve = Rebinding()
    with pytest.raises(InvalidParameter) as caught:
        await _resolver(tmp_path, resolve).read(
            ApiKey("k"), f"http://localhost:{allowed.port}/start", "image_url"
        )
    assert (caught.value.field, caught.value.rule) == ("image_url", "public_address")
    assert resolve.lookups == ["localhost", "images.test"]
    assert len(allowed.hosts_seen) == 1
    assert refused.hosts_seen == []


async def test_a_literal_address_is_checked_without_a_lookup(
    tmp_path: Path, hosts: tuple[ImageHost, ImageHost]
) -> None:
    allowed, refused = hosts
    resolve = Rebinding()
    resolver = _resolver(tmp_path, resolve)
    with pytest.raises(InvalidParameter) as caught:
        await resolver.read(ApiKey("k"), f"http://127.0.0.1:{refused.port}/a.png", "image_url")
    assert caught.value.rule == "public_address"
    data = await resolver.read(ApiKey("k"), f"http://127.0.0.2:{allowed.port}/a.png", "image_url")
    assert data == served_png()
    assert resolve.lookups == []
    assert refused.hosts_seen == []


@pytest.mark.parametrize(("certified", "works"), [("images.test", True), ("other.test", False)])
async def test_tls_is_verified_against_the_host_name_not_the_address(
    tmp_path: Path, certified: str, works: bool
) -> None:
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(certified).configure_cert(server_tls)
    server_names: list[str | None] = []
    server_tls.sni_callback = lambda _socket, name, _context: server_names.append(name)
    client_tls = ssl.create_default_context()
    authority.configure_trust(client_tls)
    host = ImageHost("127.0.0.2", tls=server_tls)
    try:
        read = _resolver(tmp_path, Rebinding(), client_tls).read(
            ApiKey("k"), f"https://images.test:{host.port}/photo.png", "image_url"
        )
        if works:
            assert await read == served_png()
            assert host.hosts_seen == [f"images.test:{host.port}"]
        else:
            with pytest.raises(InvalidParameter, match="CERTIFICATE_VERIFY_FAILED"):
                await read
            assert host.hosts_seen == []
    finally:
        host.close()
    assert server_names == ["images.test"]


def test_localhost_is_loopback_to_the_system() -> None:
    """The rebinding test relies on the system resolving localhost to loopback."""
    addresses = {info[4][0] for info in socket.getaddrinfo("localhost", 80)}
    assert "127.0.0.1" in addresses or "::1" in addresses
