"""API keys: kept only as SHA-256 hashes, each with a short public id for logs and bills.

A key's id must not reveal the key: anyone who sees an id (in a log, a usage export, an
upload URL) could otherwise test guesses offline. So an id is never derived from the key
alone:

- a key file written by ``tessera serve`` (JSON, ``{"keys": [{"id", "sha256"}]}``) stores a
  random id beside each hash;
- a key given in plain text (a file with one key per line, ``#`` starts a comment, or
  ``TESSERA_API_KEYS``) gets ``HMAC-SHA256(server secret, key)``, stable for as long as the
  server keeps its secret;
- a JSON entry with a hash and no id (what the Helm chart writes from the hashes it is
  given) gets that same HMAC, computed from the key when it is presented: the hash alone
  holds too little to make an id that reveals nothing, and the key then has the one id it
  would have in plain text.

A key may be an admin key, allowed to read everyone's usage (``GET /v1/usage``): in JSON,
``"admin": true`` on its entry; in plain text, the word ``admin`` after the key on its line
(``tsk_... admin``). Files without either keep working: their keys are ordinary ones.

JSON files written before this (ids were ``sha256(key)[:10]``) keep their stored ids, so
their jobs and bills stay theirs; those ids no longer appear anywhere public, and a new key
(delete the file, or ``write_key_file``) gets a random one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tessera.runtime.errors import Unauthorized

KEY_PREFIX = "tsk_"
_ID_PREFIX = "key_"


@dataclass(frozen=True)
class ApiKey:
    """The identity a request acts as: the public id only, never the key."""

    id: str
    admin: bool = False


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _keyed_id(key: str, secret: bytes) -> str:
    return _ID_PREFIX + hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()[:10]


class KeyRing:
    def __init__(
        self,
        keys_by_digest: dict[str, ApiKey] | None = None,
        *,
        unnamed: dict[str, bool] | None = None,
        id_secret: bytes = b"",
    ):
        """``unnamed``: the hashes of keys with no stored id, each with its admin flag; they
        are named from the key and ``id_secret`` when presented."""
        self._keys = dict(keys_by_digest or {})
        self._unnamed = dict(unnamed or {})
        self._id_secret = id_secret

    @classmethod
    def from_keys(
        cls, keys: Iterable[str], id_secret: bytes, admin_keys: Iterable[str] = ()
    ) -> KeyRing:
        admins = set(admin_keys)
        return cls(
            {
                _digest(key): ApiKey(_keyed_id(key, id_secret), admin=key in admins)
                for key in [*keys, *admins]
                if key
            }
        )

    @classmethod
    def from_file(cls, path: Path, id_secret: bytes) -> KeyRing:
        text = Path(path).read_text()
        try:
            data = json.loads(text)
        except ValueError:
            plain: list[str] = []
            admins: list[str] = []
            for line in text.splitlines():
                # Any whitespace between a key and its role: a tab too.
                key, *role = line.split("#", 1)[0].split() or [""]
                (admins if role == ["admin"] else plain).append(key)
            return cls.from_keys(plain, id_secret, admins)
        entries = data["keys"]
        return cls(
            {
                entry["sha256"]: ApiKey(entry["id"], admin=bool(entry.get("admin", False)))
                for entry in entries
                if "id" in entry
            },
            unnamed={
                entry["sha256"]: bool(entry.get("admin", False))
                for entry in entries
                if "id" not in entry
            },
            id_secret=id_secret,
        )

    def authenticate(self, presented: str | None) -> ApiKey:
        if not presented:
            raise Unauthorized("missing API key: send it in the 'api_key' header")
        presented = presented.strip()
        digest = _digest(presented)
        if (key := self._keys.get(digest)) is not None:
            return key
        if (admin := self._unnamed.get(digest)) is not None:
            return ApiKey(_keyed_id(presented, self._id_secret), admin=admin)
        raise Unauthorized("invalid API key")

    def __len__(self) -> int:
        return len(self._keys) + len(self._unnamed)


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)


def write_key_file(path: Path, keys: Iterable[str], *, admin: bool = False) -> None:
    """Store keys hashed, each with a random id, readable by the owner only; ``admin``
    marks every one of them an admin key."""
    entries: list[dict[str, str | bool]] = [
        {"id": _ID_PREFIX + secrets.token_hex(5), "sha256": _digest(k)} for k in keys
    ]
    if admin:
        for entry in entries:
            entry["admin"] = True
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump({"keys": entries}, file, indent=2)
