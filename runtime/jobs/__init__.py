"""Job stores, chosen by URL: ``sqlite:///path/jobs.db`` (embedded) or ``redis://...``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from tessera.runtime.jobs.base import JobStore, StorePolicy


def queue_url(url: str) -> str:
    """The URL, if ``open_store`` can open it; otherwise ``ValueError`` saying what it takes,
    so a command refuses a bad ``--queue`` at start, by name, rather than with a traceback."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite" and not url.removeprefix("sqlite://").startswith("/"):
        raise ValueError(
            f"a sqlite queue URL needs an absolute path: sqlite:///abs/path, not {url}"
        )
    if scheme not in ("sqlite", "redis", "rediss", "unix"):
        raise ValueError(
            f"unsupported queue URL {url!r}: expected sqlite:///path or redis://host:port/db"
        )
    return url


def open_store(url: str, policy: StorePolicy | None = None) -> JobStore:
    if urlsplit(queue_url(url)).scheme == "sqlite":
        from tessera.runtime.jobs.sqlite import SQLiteJobStore

        return SQLiteJobStore(Path(url.removeprefix("sqlite://")), policy)
    from tessera.runtime.jobs.redis import RedisJobStore

    return RedisJobStore(url, policy)
