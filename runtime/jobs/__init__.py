"""Job stores, chosen by URL: ``sqlite:///path/jobs.db`` (embedded) or ``redis://...``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from tessera.runtime.jobs.base import JobStore, StorePolicy


def open_store(url: str, policy: StorePolicy | None = None) -> JobStore:
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from tessera.runtime.jobs.sqlite import SQLiteJobStore

        path = url.removeprefix("sqlite://")
        if not path.startswith("/"):
            raise ValueError(
                f"a sqlite queue URL needs an absolute path: sqlite:///abs/path, not {url}"
            )
        return SQLiteJobStore(Path(path), policy)
    if scheme in ("redis", "rediss", "unix"):
        from tessera.runtime.jobs.redis import RedisJobStore

        return RedisJobStore(url, policy)
    raise ValueError(
        f"unsupported queue URL {url!r}: expected sqlite:///path or redis://host:port/db"
    )
