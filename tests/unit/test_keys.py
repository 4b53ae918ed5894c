"""Key ids: never derivable from the key, and stable for key files written before."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tessera.runtime.config import serve_config
from tessera.runtime.errors import Unauthorized
from tessera.runtime.keys import KeyRing, write_key_file
from tessera.runtime.settings import ServeSettings

SECRET = b"s" * 32


def derivable(key: str) -> str:
    """How ids were made before: anyone holding a guess could check it against an id."""
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:10]


def test_a_written_key_file_stores_a_random_id_beside_the_hash(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    write_key_file(path, ["tsk_one", "tsk_two"])
    entries = json.loads(path.read_text())["keys"]
    ids = {KeyRing.from_file(path, SECRET).authenticate(k).id for k in ("tsk_one", "tsk_two")}
    assert ids == {entry["id"] for entry in entries}
    assert not ids & {derivable("tsk_one"), derivable("tsk_two")}
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    write_key_file(tmp_path / "again.json", ["tsk_one"])
    again = KeyRing.from_file(tmp_path / "again.json", SECRET).authenticate("tsk_one").id
    assert again not in ids  # random, not a function of the key


def test_a_key_file_written_before_keeps_its_ids(tmp_path: Path) -> None:
    """Jobs and bills are stored under the old id, so it must not change."""
    path = tmp_path / "keys.json"
    digest = hashlib.sha256(b"tsk_old").hexdigest()
    path.write_text(json.dumps({"keys": [{"id": derivable("tsk_old"), "sha256": digest}]}))
    assert KeyRing.from_file(path, SECRET).authenticate("tsk_old").id == derivable("tsk_old")


def test_plain_keys_get_ids_keyed_by_the_server_secret(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("tsk_plain  # a comment\n\n")
    from_file = KeyRing.from_file(path, SECRET).authenticate("tsk_plain").id
    assert from_file == KeyRing.from_keys(["tsk_plain"], SECRET).authenticate("tsk_plain").id
    other = KeyRing.from_keys(["tsk_plain"], b"t" * 32).authenticate("tsk_plain").id
    assert from_file != other != derivable("tsk_plain")
    with pytest.raises(Unauthorized):
        KeyRing.from_keys(["tsk_plain"], SECRET).authenticate("tsk_other")


def test_a_hash_without_an_id_is_named_from_the_key_it_is_presented_with(
    tmp_path: Path,
) -> None:
    """The chart's key file holds hashes only (from values anyone with the release can
    read): each key is named as it would be in plain text, never from its hash."""
    path = tmp_path / "keys.json"
    entries = [
        {"sha256": hashlib.sha256(b"tsk_user").hexdigest(), "admin": False},
        {"sha256": hashlib.sha256(b"tsk_root").hexdigest(), "admin": True},
        {"id": "key_stored", "sha256": hashlib.sha256(b"tsk_kept").hexdigest()},
    ]
    path.write_text(json.dumps({"keys": entries}))
    ring = KeyRing.from_file(path, SECRET)
    assert len(ring) == 3
    plain = KeyRing.from_keys(["tsk_user", "tsk_root"], SECRET)
    user, root = ring.authenticate("tsk_user"), ring.authenticate(" tsk_root\n")
    assert user.id == plain.authenticate("tsk_user").id and not user.admin
    assert root.id == plain.authenticate("tsk_root").id and root.admin
    assert entries[0]["sha256"][:10] not in user.id
    assert ring.authenticate("tsk_kept").id == "key_stored"
    assert KeyRing.from_file(path, b"t" * 32).authenticate("tsk_user").id != user.id
    with pytest.raises(Unauthorized):
        ring.authenticate("tsk_other")


def test_a_key_is_admin_only_when_its_file_says_so(tmp_path: Path) -> None:
    plain = tmp_path / "keys.txt"
    plain.write_text("tsk_root admin  # may read usage\ntsk_user\n\ntsk_tab\tadmin\n")
    ring = KeyRing.from_file(plain, SECRET)
    assert ring.authenticate("tsk_root").admin and not ring.authenticate("tsk_user").admin
    assert ring.authenticate("tsk_tab").admin and len(ring) == 3
    assert (
        ring.authenticate("tsk_root").id
        == KeyRing.from_keys(["tsk_root"], SECRET).authenticate("tsk_root").id
    ), "the role does not change the key's id"
    stored = tmp_path / "keys.json"
    write_key_file(stored, ["tsk_old"])  # a file from before admin keys: no "admin" field
    assert not KeyRing.from_file(stored, SECRET).authenticate("tsk_old").admin
    entries = json.loads(stored.read_text())
    entries["keys"][0]["admin"] = True
    stored.write_text(json.dumps(entries))
    assert KeyRing.from_file(stored, SECRET).authenticate("tsk_old").admin
    ring = KeyRing.from_keys(["tsk_user"], SECRET, admin_keys=["tsk_root"])
    assert ring.authenticate("tsk_root").admin and len(ring) == 2


def test_the_key_serve_makes_for_itself_is_an_admin_key(tmp_path: Path) -> None:
    """A server given no keys makes one, its owner's: it reads usage too (GET /v1/usage),
    as the chart's generated key does. Restarted, the same key stays admin."""
    settings = ServeSettings(demo=True, data_dir=tmp_path / "data")
    first = serve_config(settings)
    assert first.created_key is not None
    assert first.config.keys.authenticate(first.created_key).admin
    again = serve_config(settings)
    assert again.created_key is None and again.config.keys.authenticate(first.created_key).admin
