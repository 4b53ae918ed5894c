"""The gateway's own signed URLs, for files that clients cannot fetch from the store.

A URL is signed with HMAC-SHA256 over its path and expiry, so it can be fetched with a plain
GET by anyone who holds it, until it expires, and by no one who guessed a path.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode

from tessera.runtime.errors import FileNotFound


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
