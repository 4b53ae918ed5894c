"""Per-key rate limits: a short burst and a longer sustained rate for each kind of request.

The limits library keeps moving windows in memory, one per key and kind; with several
gateway replicas each counts on its own (the library's Redis storage would share them).
The defaults are far above what a client polling every second for a few hundred jobs sends,
so only a runaway loop or an abuser meets them.

The library's synchronous memory storage, called on the event loop: each call is a few
dictionary operations under a lock nobody else holds for long. Its asyncio twin sweeps
expired entries with one ``asyncio.to_thread`` per key, scheduled anew after almost every
request: a thread hand-off per request, a gateway's largest cost after HTTP itself. The
synchronous one starts a ``threading.Timer`` for its sweep whenever the last one has run,
which under load is a new thread every 10 ms (a fifth of a busy gateway's samples), so
here the sweep runs on the loop instead, at most once a second; the sweep only trims
memory, the windows' counts do not depend on it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import StrEnum

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from tessera.runtime.errors import RateLimited
from tessera.runtime.keys import ApiKey


class Action(StrEnum):
    SUBMIT = "submit"
    POLL = "poll"
    # Base64 results, counted in MiB: a poll of a large completed task can send tens of MB.
    B64_MIB = "b64_mib"


@dataclass(frozen=True)
class RateLimits:
    """Each a ``limits`` string: ``N/second``, ``N/minute``..., several joined by ``;``."""

    submit: str = "100/10seconds;1200/minute"
    poll: str = "300/second;6000/minute"
    b64_mib: str = "256/10seconds;2048/minute"


# How often the limiter trims expired entries from its windows.
SWEEP_SECONDS = 1.0


class _LoopSweptStorage(MemoryStorage):
    """``MemoryStorage`` without its per-hit timer thread: ``sweep`` trims it instead."""

    def _MemoryStorage__schedule_expiry(self) -> None:
        """The library's hook that would start a timer thread; deliberately nothing."""

    def sweep(self) -> None:
        self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


class KeyRateLimiter:
    def __init__(self, limits: RateLimits):
        self._storage = _LoopSweptStorage()
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._swept_at = time.monotonic()
        self._rules: dict[Action, list[RateLimitItem]] = {
            action: parse_many(getattr(limits, action.value)) for action in Action
        }

    async def hit(self, action: Action, key: ApiKey, cost: int = 1) -> None:
        """Count ``cost`` against every window of ``action``, or raise ``RateLimited``.

        A cost above a window's whole amount counts as that amount, so one request always
        fits an empty window.
        """
        now = time.monotonic()
        if now - self._swept_at >= SWEEP_SECONDS:
            self._swept_at = now
            self._storage.sweep()
        rules = self._rules[action]
        for rule in rules:
            if not self._limiter.test(rule, action.value, key.id, cost=min(cost, rule.amount)):
                stats = self._limiter.get_window_stats(rule, action.value, key.id)
                retry_after = max(1, math.ceil(stats.reset_time - time.time()))
                raise RateLimited(
                    f"too many {action.value} requests for this key (limit {rule}); "
                    f"retry in {retry_after} s",
                    retry_after=retry_after,
                )
        for rule in rules:
            self._limiter.hit(rule, action.value, key.id, cost=min(cost, rule.amount))
