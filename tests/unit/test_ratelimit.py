"""The per-key limiter counts on the event loop and starts no threads while it does."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tessera.runtime import ratelimit
from tessera.runtime.errors import RateLimited
from tessera.runtime.keys import ApiKey
from tessera.runtime.ratelimit import Action, KeyRateLimiter, RateLimits

KEY = ApiKey("key_test")


async def test_hits_start_no_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    limiter = KeyRateLimiter(RateLimits(submit="100000/second"))
    started = 0
    start = threading.Thread.start

    def counting_start(thread: threading.Thread) -> None:
        nonlocal started
        started += 1
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    for _ in range(2000):
        await limiter.hit(Action.SUBMIT, KEY)
    assert started == 0


async def test_the_window_still_refuses_and_the_sweep_trims_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limiter = KeyRateLimiter(RateLimits(submit="3/second"))
    for _ in range(3):
        await limiter.hit(Action.SUBMIT, KEY)
    with pytest.raises(RateLimited):
        await limiter.hit(Action.SUBMIT, KEY)
    await asyncio.sleep(1.05)  # the window's second passes
    monkeypatch.setattr(ratelimit, "SWEEP_SECONDS", 0.0)
    await limiter.hit(Action.SUBMIT, KEY)  # sweeps the three expired entries, then counts
    assert [len(events) for events in limiter._storage.events.values()] == [1]
