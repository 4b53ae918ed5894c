"""Wake-ups for code that waits on the store: a worker for a job, a client for a status.

A waiter names what it waits for: one job (a long-poll) or any change (a worker waiting for
work). A change to job N wakes the waiters of N and the waiters of anything, never the
long-polls of other jobs; a change the store cannot attribute (a bulk sweep, a subscription
that reconnected and may have missed messages) wakes everyone. A waiter also re-checks the
store after ``poll_seconds``, for writes it cannot hear (another process on the same SQLite
file).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tessera.runtime.jobs.base import Job, JobStatus

T = TypeVar("T")


class ChangeSignal:
    def __init__(self, poll_seconds: float = 0.25):
        self.poll_seconds = poll_seconds
        # What each waiter waits for (a job id, or None for any change), to its wake-up.
        self._waiters: dict[asyncio.Event, int | None] = {}

    def notify(self, job_id: int | None = None) -> None:
        """Job ``job_id`` changed; ``None``: something did, or may have, that no id names."""
        for event, waiting_for in self._waiters.items():
            if job_id is None or waiting_for is None or waiting_for == job_id:
                event.set()

    async def wait_until(
        self,
        check: Callable[[], Awaitable[T | None]],
        timeout: float,
        job_id: int | None = None,
    ) -> T | None:
        """``check()`` until it returns something, re-run when ``job_id`` (None: anything)
        changes; None at the timeout.

        The waiter is registered before each check, so a change that lands between the
        check and the sleep still wakes it at once.
        """
        deadline = time.monotonic() + timeout
        woken = asyncio.Event()
        self._waiters[woken] = job_id
        try:
            while True:
                woken.clear()
                value = await check()
                remaining = deadline - time.monotonic()
                if value is not None or remaining <= 0:
                    return value
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), timeout=min(remaining, self.poll_seconds))
        finally:
            del self._waiters[woken]

    async def wait_for_status(
        self,
        get: Callable[[int], Awaitable[Job]],
        job_id: int,
        status: JobStatus,
        timeout: float,
    ) -> Job:
        """The job once its status is no longer ``status``, or as it is at the timeout."""

        async def changed() -> Job | None:
            job = await get(job_id)
            return job if job.status is not status else None

        return await self.wait_until(changed, timeout, job_id) or await get(job_id)
