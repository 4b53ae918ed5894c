"""Wake-ups for code that waits on the store: a worker for a job, a client for a status.

A waiter names what it waits for: one job (a long-poll) or any change (a worker waiting for
work). A change to job N wakes the waiters of N and the waiters of anything, never the
long-polls of other jobs; a change the store cannot attribute (a bulk sweep, a subscription
that reconnected and may have missed messages) wakes everyone.

A write of this process that knows the job it left (``notify(job=...)``) hands that job to
the long-polls it wakes, so they answer without reading the store again: on the path from a
completion to the client that read is a hand-off to the store's thread and back.

For writes a waiter cannot hear (another process on the same SQLite file) there are two
ways, chosen by the store:

- with a ``probe`` (a cheap token that changes whenever anything changed, such as SQLite's
  ``data_version``), one shared task reads it every ``poll_seconds`` while anyone waits and
  wakes them all when it moves, so two hundred waiters cost one read per poll, not two
  hundred (probe and checks must be answered in the order asked, as by SQLite's one
  thread, so that the poller's first read comes before the check of the waiter that
  started it);
- without one, each waiter re-checks the store every ``poll_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from tessera.runtime.jobs.base import Job, JobStatus

T = TypeVar("T")


@dataclass(eq=False)
class _Waiter:
    job_id: int | None  # None: any change
    woken: asyncio.Event = field(default_factory=asyncio.Event)
    # The job as the write that woke this waiter left it; None: read it again.
    handed: Job | None = None


class ChangeSignal:
    def __init__(
        self, poll_seconds: float = 0.25, probe: Callable[[], Awaitable[object]] | None = None
    ):
        self.poll_seconds = poll_seconds
        self._probe = probe
        self._poller: asyncio.Task[None] | None = None
        self._waiters: set[_Waiter] = set()

    def notify(self, job_id: int | None = None, *, job: Job | None = None) -> None:
        """Job ``job_id`` changed; ``None``: something did, or may have, that no id names.

        ``job``: the job as this process's write left it (its id is ``job_id``); the waiters
        of that job take it instead of reading it again. Writes are notified in commit order,
        so the last job handed is the newest; any other change takes it back.
        """
        if job is not None:
            job_id = job.id
        for waiter in self._waiters:
            if job_id is None or waiter.job_id is None or waiter.job_id == job_id:
                waiter.handed = job if waiter.job_id == job_id else None
                waiter.woken.set()

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
        """``check()`` until it returns something (see ``_wait``); None at the timeout."""
        return await self._wait(lambda _: check(), timeout, job_id, claims=claims)

    async def _wait(
        self,
        check: Callable[[_Waiter], Awaitable[T | None]],
        timeout: float,
        job_id: int | None,
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
        waiter = _Waiter(job_id)
        self._waiters.add(waiter)
        # With a shared probe, a waiter sleeps until woken; without, it re-checks on a timer.
        nap = None if self._probe is not None else self.poll_seconds
        try:
            if timeout > 0 and self._probe is not None and self._poller is None:
                self._poller = loop.create_task(self._poll_probe())
                # Its first read of the probe goes to the store's one thread before this
                # check's: a change that lands after the check moves the probe it compares.
                await asyncio.sleep(0)
            value = await check(waiter)
            if value is not None or timeout <= 0:
                return value
            while value is None:
                left = deadline - loop.time()
                if left <= 0:
                    return None
                # asyncio.timeout: wait_for (3.11) may lose a cancellation that lands as a
                # wake-up does.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left if nap is None else min(nap, left)):
                        await waiter.woken.wait()
                waiter.woken.clear()
                async with asyncio.timeout_at(None if claims else deadline):
                    value = await check(waiter)
        except TimeoutError:
            return None
        finally:
            self._waiters.discard(waiter)
        return value

    async def wait_for_status(
        self,
        get: Callable[[int], Awaitable[Job]],
        job_id: int,
        status: JobStatus,
        timeout: float,
    ) -> Job:
        """The job once its status is no longer ``status``, or as last read at the timeout;
        read with ``get`` unless a write handed it over."""
        latest: Job | None = None

        async def changed(waiter: _Waiter) -> Job | None:
            nonlocal latest
            handed, waiter.handed = waiter.handed, None  # one handed over during get stays
            latest = handed or await get(job_id)
            return latest if latest.status is not status else None

        found = await self._wait(changed, timeout, job_id)
        if found is not None:
            return found
        assert latest is not None  # the first check always completes
        return latest
