"""Wake-ups for code that waits on the store: a worker for a job, a client for a status.

A waiter names what it waits for: one job (a long-poll) or any change (a worker waiting for
work). A change to job N wakes the waiters of N and the waiters of anything, never the
long-polls of other jobs; a change the store cannot attribute (a bulk sweep, a subscription
that reconnected and may have missed messages) wakes everyone.

For writes a waiter cannot hear (another process on the same SQLite file) there are two
ways, chosen by the store:

- with a ``probe`` (a cheap token that changes whenever anything changed, such as SQLite's
  ``data_version``), one shared task reads it every ``poll_seconds`` while anyone waits and
  wakes them all when it moves, so two hundred waiters cost one read per poll, not two
  hundred;
- without one, each waiter re-checks the store every ``poll_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tessera.runtime.jobs.base import Job, JobStatus

T = TypeVar("T")


class ChangeSignal:
    def __init__(
        self, poll_seconds: float = 0.25, probe: Callable[[], Awaitable[object]] | None = None
    ):
        self.poll_seconds = poll_seconds
        self._probe = probe
        self._poller: asyncio.Task[None] | None = None
        # What each waiter waits for (a job id, or None for any change), to its wake-up.
        self._waiters: dict[asyncio.Event, int | None] = {}

    def notify(self, job_id: int | None = None) -> None:
        """Job ``job_id`` changed; ``None``: something did, or may have, that no id names."""
        for event, waiting_for in self._waiters.items():
            if job_id is None or waiting_for is None or waiting_for == job_id:
                event.set()

    async def _poll_probe(self) -> None:
        """While anyone waits: read the probe, and wake everyone when it moves."""
        assert self._probe is not None
        try:
            last = await self._probe()
            while self._waiters:
                await asyncio.sleep(self.poll_seconds)
                token = await self._probe()
                if token != last:
                    last = token
                    self.notify()
        finally:
            self._poller = None

    async def wait_until(
        self,
        check: Callable[[], Awaitable[T | None]],
        timeout: float,
        job_id: int | None = None,
        *,
        claims: bool = False,
    ) -> T | None:
        """``check()`` until it returns something, re-run when ``job_id`` (None: anything)
        changes; None at the timeout.

        The first check always runs; later ones are cut at the deadline, so a waiter answers
        on time even when the store is slow to answer checks (hundreds of waiters share it).
        A check that ``claims`` what it finds (a lease) is never cut: cut after the store
        took the jobs, it would drop them, leased to a worker that never runs them until
        the lease runs out. The waiter is registered before each check, so a change that
        lands between the check and the sleep still wakes it at once.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        woken = asyncio.Event()
        self._waiters[woken] = job_id
        # With a shared probe, a waiter sleeps until woken; without, it re-checks on a timer.
        nap = None if self._probe is not None else self.poll_seconds
        try:
            value = await check()
            if value is not None or timeout <= 0:
                return value
            if self._probe is not None and self._poller is None:
                self._poller = loop.create_task(self._poll_probe())
            while value is None:
                left = deadline - loop.time()
                if left <= 0:
                    return None
                # asyncio.timeout: wait_for (3.11) may lose a cancellation that lands as a
                # wake-up does.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left if nap is None else min(nap, left)):
                        await woken.wait()
                woken.clear()
                async with asyncio.timeout_at(None if claims else deadline):
                    value = await check()
        except TimeoutError:
            return None
        finally:
            del self._waiters[woken]
        return value

    async def wait_for_status(
        self,
        get: Callable[[int], Awaitable[Job]],
        job_id: int,
        status: JobStatus,
        timeout: float,
    ) -> Job:
        """The job once its status is no longer ``status``, or as last read at the timeout."""
        latest: Job | None = None

        async def changed() -> Job | None:
            nonlocal latest
            latest = await get(job_id)
            return latest if latest.status is not status else None

        found = await self.wait_until(changed, timeout, job_id)
        if found is not None:
            return found
        assert latest is not None  # the first check always completes
        return latest
