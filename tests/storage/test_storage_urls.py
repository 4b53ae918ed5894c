"""open_storage: which store a URL names, and the rule a bad URL breaks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.runtime.storage import InvalidStorageUrl, LocalFileStore, open_storage
from tessera.runtime.storage.s3 import S3FileStore

ENVIRON = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_ACCESS_KEY_ID": "id",
    "AWS_SECRET_ACCESS_KEY": "secret",
}


@pytest.mark.parametrize(
    ("url", "root"),
    [
        ("file:///srv/tessera/files", "/srv/tessera/files"),
        ("file://localhost/srv/files", "/srv/files"),
        ("file:///srv/with%20space", "/srv/with space"),
    ],
)
def test_a_file_url_is_a_local_folder(url: str, root: str) -> None:
    store = open_storage(url)
    assert isinstance(store, LocalFileStore) and store.root == Path(root)


@pytest.mark.parametrize(
    ("url", "prefix"),
    [("s3://results", ""), ("s3://results/", ""), ("s3://my.results-1/a/b/", "a/b")],
)
def test_an_s3_url_is_a_bucket_and_prefix(url: str, prefix: str) -> None:
    store = open_storage(url, environ=ENVIRON)
    assert isinstance(store, S3FileStore)
    assert store.bucket == url.removeprefix("s3://").split("/")[0]
    assert store.prefix == prefix


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("/srv/files", "scheme"),
        ("https://s3.example.com/bucket", "scheme"),
        ("redis://127.0.0.1/0", "scheme"),
        ("file://srv/files", "absolute_path"),
        ("file:srv/files", "absolute_path"),
        ("file:///srv/files?mode=0600", "no_query"),
        ("s3://bucket/prefix#part", "no_query"),
        ("s3://Results", "bucket"),
        ("s3://ab", "bucket"),
        ("s3://bucket_name", "bucket"),
        ("s3://bucket:9000/prefix", "bucket"),
        ("s3://", "bucket"),
        ("s3://bucket/../other", "prefix"),
        ("s3://bucket/a//b", "prefix"),
        ("s3://bucket/a b", "prefix"),
    ],
)
def test_a_bad_url_names_its_rule(url: str, rule: str) -> None:
    with pytest.raises(InvalidStorageUrl) as caught:
        open_storage(url, environ=ENVIRON)
    assert caught.value.rule == rule
    assert caught.value.url == url and repr(url) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_credentials_in_the_url_are_refused_and_never_repeated() -> None:
    with pytest.raises(InvalidStorageUrl) as caught:
        open_storage("s3://AKIDEXAMPLE:wJalrXUtnFEMI@bucket/prefix")
    assert caught.value.rule == "no_credentials"
    assert "wJalrXUtnFEMI" not in str(caught.value) and "AKIDEXAMPLE" not in str(caught.value)
    assert "AWS_SECRET_ACCESS_KEY" in str(caught.value)
