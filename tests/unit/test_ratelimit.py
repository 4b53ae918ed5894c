"""The per-key limiter counts on the event loop without starting threads per request."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from limits.storage import MemoryStorage

from tessera.runtime.errors import RateLimited
from tessera.runtime.keys import ApiKey
from tessera.runtime.ratelimit import Action, KeyRateLimiter, RateLimits, SweptMemoryStorage
from tests.support.waiting import wait_until


def threads_started_by(storage: MemoryStorage, monkeypatch: pytest.MonkeyPatch) -> int:
    """Threads started by five entries, each more than the library's 10 ms sweep apart."""
    started = []
    real_start: Callable[[threading.Thread], None] = threading.Thread.start

    def counting_start(thread: threading.Thread) -> None:
        started.append(thread)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    for _ in range(5):
        assert storage.acquire_entry("key", limit=100, expiry=60)
        time.sleep(0.03)
    monkeypatch.undo()
    return len(started)


def test_entries_start_no_thread_where_the_librarys_storage_starts_one_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert threads_started_by(SweptMemoryStorage(), monkeypatch) == 0
    assert threads_started_by(MemoryStorage(), monkeypatch) >= 4  # what the probe catches


def test_expired_entries_are_swept() -> None:
    storage = SweptMemoryStorage()
    assert storage.acquire_entry("key", limit=10, expiry=0.05)  # type: ignore[arg-type]
    wait_until("the sweep", lambda: not storage.events.get("key"), timeout=10)


async def test_limits_still_hold() -> None:
    limiter = KeyRateLimiter(RateLimits(submit="2/minute"))
    key = ApiKey("key-a")
    await limiter.hit(Action.SUBMIT, key)
    await limiter.hit(Action.SUBMIT, key)
    with pytest.raises(RateLimited, match="limit 2 per 1 minute"):
        await limiter.hit(Action.SUBMIT, key)
    await limiter.hit(Action.SUBMIT, ApiKey("key-b"))  # another key counts on its own
