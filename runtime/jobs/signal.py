"""Wake-ups for code that waits on the store: a worker for a job, a client for a status.

Every local write bumps a version and wakes the waiters. For writes a waiter cannot hear
(another process on the same SQLite file, a Redis notification lost while reconnecting)
there are two ways, chosen by the store:

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
        self._version = 0
        self._condition: asyncio.Condition | None = None
        self._waiters = 0
        self._poller: asyncio.Task[None] | None = None

    def _cond(self) -> asyncio.Condition:
        # Created on first use, inside the running loop.
        if self._condition is None:
            self._condition = asyncio.Condition()
        return self._condition

    async def notify(self) -> None:
        condition = self._cond()
        async with condition:
            self._version += 1
            condition.notify_all()

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
                    await self.notify()
        finally:
            self._poller = None

    async def wait_until(
        self, check: Callable[[], Awaitable[T | None]], timeout: float
    ) -> T | None:
        """``check()`` until it returns something, re-run on each change; None at timeout.

        The first check always runs; later ones are cut at the deadline, so a waiter answers
        on time even when the store is slow to answer checks (hundreds of waiters share it).
        The version is read before each check, so a change that lands between the check and
        the sleep still wakes this waiter at once.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        condition = self._cond()
        seen = self._version
        value = await check()
        if value is not None or timeout <= 0:
            return value
        # With a shared probe, a waiter sleeps until woken; without, it re-checks on a timer.
        nap = None if self._probe is not None else self.poll_seconds
        self._waiters += 1
        if self._probe is not None and self._poller is None:
            self._poller = loop.create_task(self._poll_probe())
        try:
            async with asyncio.timeout_at(deadline):
                while value is None:
                    async with condition:
                        if self._version == seen:
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(condition.wait(), nap)
                    seen = self._version
                    value = await check()
        except TimeoutError:
            return None
        finally:
            self._waiters -= 1
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

        found = await self.wait_until(changed, timeout)
        if found is not None:
            return found
        assert latest is not None  # the first check always completes
        return latest
