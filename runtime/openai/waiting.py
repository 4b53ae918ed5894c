"""Holding a request until its job finishes: OpenAI's image calls are synchronous.

The job is queued and run like any other, so billing happens once, in the worker's atomic
completion, whatever the request does. A client that leaves stops only the waiting; one that
announces its read timeout is answered before it, so the SDK never retries a job that is
still running (a retry would be a second job, billed again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator

from fastapi import Request

from tessera.runtime.jobs.base import Job, JobStore
from tessera.runtime.openai.errors import JobStillRunning, TooManyWaiting
from tessera.runtime.openai.settings import OpenAISettings

log = logging.getLogger(__name__)

CLIENT_TIMEOUT_HEADER = "x-stainless-read-timeout"


class WaitingRequests:
    """How many requests each key holds open in this process, within a cap."""

    def __init__(self, per_key: int):
        self.per_key = per_key
        self._held: Counter[str] = Counter()

    @contextlib.contextmanager
    def hold(self, key_id: str) -> Iterator[None]:
        if self._held[key_id] >= self.per_key:
            raise TooManyWaiting(
                f"this API key already has {self.per_key} image requests waiting for their "
                "jobs; retry when one has answered"
            )
        self._held[key_id] += 1
        try:
            yield
        finally:
            self._held[key_id] -= 1
            if not self._held[key_id]:
                del self._held[key_id]


def wait_budget(request: Request, settings: OpenAISettings) -> float:
    """Seconds to hold ``request``: the setting, or less when the client will give up sooner."""
    budget = settings.wait_seconds
    announced = request.headers.get(CLIENT_TIMEOUT_HEADER)
    if announced:
        try:
            client_timeout = float(announced)
        except ValueError:
            return budget
        if math.isfinite(client_timeout):
            budget = min(budget, client_timeout - settings.deadline_margin_seconds)
    return max(0.0, budget)


async def _finished(store: JobStore, job: Job, seconds: float) -> Job:
    deadline = time.monotonic() + seconds
    while not job.status.finished:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        job = await store.wait_for_change(job.id, job.status, remaining)
    return job


async def _disconnected(request: Request) -> None:
    # The body has been read, so the next message the server sends is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def wait_for_job(store: JobStore, job: Job, request: Request, seconds: float) -> Job | None:
    """The finished job; ``None`` if the client left first. ``JobStillRunning`` at the end
    of ``seconds``."""
    waiting = asyncio.create_task(_finished(store, job, seconds))
    leaving = asyncio.create_task(_disconnected(request))
    try:
        done, _ = await asyncio.wait({waiting, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
        leaving.cancel()
    if waiting not in done:
        log.info("the client left while job %s was %s; it runs on", job.id, job.status.value)
        return None
    finished = waiting.result()
    if not finished.status.finished:
        raise JobStillRunning(finished.id, finished.status.value, seconds)
    return finished
