"""Per-key rate limits: a short burst and a longer sustained rate for each kind of request.

The limits library keeps moving windows in memory, one per key and kind; with several
gateway replicas each counts on its own (the library's Redis storage would share them).
The defaults are far above what a client polling every second for a few hundred jobs sends,
so only a runaway loop or an abuser meets them.

The library's synchronous memory storage, called on the event loop: each call is a few
dictionary operations under a lock nobody else holds for long. Its asyncio twin sweeps
expired entries with one ``asyncio.to_thread`` per key, scheduled anew after almost every
request: a thread hand-off per request, a gateway's largest cost after HTTP itself. The
synchronous one sweeps on a one-shot 10 ms timer and starts a new thread for the first
request after each sweep, which on a busy machine held a submit for milliseconds
(bench/serving_overhead.py); here one long-lived thread sweeps instead.
"""

from __future__ import annotations

import math
import threading
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


# How often expired entries are dropped: only memory waits on it, never a limit's count.
SWEEP_SECONDS = 1.0


class _Sweeper(threading.Timer):
    """A timer that fires every ``interval`` until cancelled, on one daemon thread."""

    def run(self) -> None:
        while not self.finished.wait(self.interval):
            self.function(*self.args, **self.kwargs)


class SweptMemoryStorage(MemoryStorage):
    """limits' memory storage with its sweep on one thread that lives as long as it does.

    The storage starts a new sweep timer whenever its ``timer`` is not alive; this one
    always is, so no request waits on a thread being started.
    """

    def __init__(self) -> None:
        super().__init__()
        self.timer.cancel()
        self.timer = _Sweeper(SWEEP_SECONDS, self.timer.function)
        self.timer.daemon = True
        self.timer.name = "tessera-ratelimit-sweep"
        self.timer.start()


class KeyRateLimiter:
    def __init__(self, limits: RateLimits):
        self._limiter = MovingWindowRateLimiter(SweptMemoryStorage())
        self._rules: dict[Action, list[RateLimitItem]] = {
            action: parse_many(getattr(limits, action.value)) for action in Action
        }

    async def hit(self, action: Action, key: ApiKey, cost: int = 1) -> None:
        """Count ``cost`` against every window of ``action``, or raise ``RateLimited``.

        A cost above a window's whole amount counts as that amount, so one request always
        fits an empty window.
        """
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
