"""API keys: kept only as SHA-256 hashes, each with a short public id for logs and bills.

A key file is either JSON written by ``tessera serve`` (``{"keys": [{"id", "sha256"}]}``) or
plain text with one key per line (``#`` starts a comment), for keys handed out elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tessera.runtime.errors import Unauthorized

KEY_PREFIX = "tsk_"


@dataclass(frozen=True)
class ApiKey:
    """The identity a request acts as: the public id only, never the key."""

    id: str


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_for_digest(digest: str) -> str:
    return "key_" + digest[:10]


class KeyRing:
    def __init__(self, digests: Iterable[str] = ()):
        self._ids = {digest: key_id_for_digest(digest) for digest in digests}

    @classmethod
    def from_keys(cls, keys: Iterable[str]) -> KeyRing:
        return cls(_digest(key) for key in keys if key)

    @classmethod
    def from_file(cls, path: Path) -> KeyRing:
        text = Path(path).read_text()
        try:
            data = json.loads(text)
        except ValueError:
            lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
            return cls.from_keys(line for line in lines if line)
        return cls(entry["sha256"] for entry in data["keys"])

    def authenticate(self, presented: str | None) -> ApiKey:
        if not presented:
            raise Unauthorized("missing API key: send it in the 'api_key' header")
        key_id = self._ids.get(_digest(presented.strip()))
        if key_id is None:
            raise Unauthorized("invalid API key")
        return ApiKey(id=key_id)

    def __len__(self) -> int:
        return len(self._ids)


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)


def write_key_file(path: Path, keys: Iterable[str]) -> None:
    """Store keys hashed, readable by the owner only."""
    entries = [{"id": key_id_for_digest(_digest(k)), "sha256": _digest(k)} for k in keys]
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump({"keys": entries}, file, indent=2)
