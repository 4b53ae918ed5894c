"""Reading the ledger out: a range to a file (``tessera usage export``) and batches to an
HTTP receiver (``tessera usage push``).

The push exporter advances its cursor, kept in the job store, only after the receiver
answered 2xx for the whole batch. A crash between the answer and the save sends that batch
again: delivery is at least once, and the event id, stable for a job, lets the receiver
(OpenMeter deduplicates on ``source`` + ``id``) count it exactly once. Retention follows the
saved cursor: the store trims only what was delivered, and only after the retention window.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import BinaryIO

import httpx

from tessera.runtime.errors import TesseraError
from tessera.runtime.jobs.base import JobStore
from tessera.runtime.usage.formats import (
    BATCH_CONTENT_TYPE,
    DEFAULT_SOURCE,
    Encoder,
    Format,
    encode,
)

log = logging.getLogger(__name__)

PAGE_SIZE = 1000


async def export_range(
    store: JobStore,
    out: BinaryIO,
    format: Format,
    since: str = "",
    until: str | None = None,
    source: str = DEFAULT_SOURCE,
) -> str:
    """Write the records after ``since`` and not after ``until``; return the cursor to
    resume from (the last record's). The same arguments write the same bytes."""
    encoder = Encoder(format, source)
    # The first page is read before anything is written: a foreign cursor writes nothing.
    page = await store.usage(since, until, PAGE_SIZE)
    out.write(encoder.start())
    cursor = since
    while page.records:
        out.write(encoder.page(page.records))
        cursor = page.cursor
        page = await store.usage(cursor, until, PAGE_SIZE)
    out.write(encoder.end())
    return cursor


async def trim_delivered(store: JobStore, retention_seconds: float) -> int:
    """Trim what every saved cursor has passed, once ``retention_seconds`` old."""
    return await store.trim_usage(await store.delivered_cursor(), retention_seconds)


class ReceiverUnavailable(Exception):
    """The receiver answered with a status worth retrying (5xx, 408, 429)."""


class PushRejected(TesseraError):
    """The receiver refused a batch for good (a 4xx other than 408 and 429): retrying the
    same bytes cannot help, and the cursor stays where it is until someone looks."""

    status_code = 502
    code = "usage.push_rejected"


_RETRYABLE = (408, 429)


@dataclass
class PushPolicy:
    batch_size: int = 100  # Lago takes at most 100 events per request
    cursor_name: str = "push"
    # Delivered records stay this long in the store (a week), then go.
    retention_seconds: float = 7 * 24 * 3600
    # Backoff between tries of one batch; it never gives up on a receiver that is down.
    retry_initial_seconds: float = 0.5
    retry_max_seconds: float = 60.0
    idle_seconds: float = 5.0


class Pusher:
    def __init__(
        self,
        store: JobStore,
        client: httpx.AsyncClient,
        url: str,
        source: str = DEFAULT_SOURCE,
        policy: PushPolicy | None = None,
    ):
        self.store = store
        self.client = client
        self.url = url
        self.source = source
        self.policy = policy or PushPolicy()

    async def push_batch(self) -> int:
        """Deliver the next batch after the saved cursor, then save the cursor past it;
        returns how many records it held (0: nothing new)."""
        cursor = await self.store.saved_cursor(self.policy.cursor_name)
        page = await self.store.usage(cursor, limit=self.policy.batch_size)
        if not page.records:
            return 0
        await self._post(encode(Format.CLOUDEVENTS, page.records, self.source))
        await self.store.save_cursor(self.policy.cursor_name, page.cursor)
        trimmed = await trim_delivered(self.store, self.policy.retention_seconds)
        log.info("pushed %d usage events (%d old ones trimmed)", len(page.records), trimmed)
        return len(page.records)

    async def _post(self, body: bytes) -> None:
        import stamina

        async for attempt in stamina.retry_context(
            on=(httpx.TransportError, ReceiverUnavailable),
            attempts=None,
            timeout=None,
            wait_initial=self.policy.retry_initial_seconds,
            wait_max=self.policy.retry_max_seconds,
        ):
            with attempt:
                response = await self.client.post(
                    self.url, content=body, headers={"content-type": BATCH_CONTENT_TYPE}
                )
                if response.status_code >= 500 or response.status_code in _RETRYABLE:
                    log.warning("usage receiver answered %d; retrying", response.status_code)
                    raise ReceiverUnavailable(response.status_code)
                if not response.is_success:
                    raise PushRejected(
                        f"the usage receiver {self.url} refused a batch with "
                        f"{response.status_code}: {response.text[:500]}"
                    )

    async def run(self) -> None:
        """Push until cancelled, resting ``idle_seconds`` whenever caught up. Cancelling
        mid-batch is safe: the cursor has not moved, and the batch goes again next time."""
        while True:
            if await self.push_batch() == 0:
                await asyncio.sleep(self.policy.idle_seconds)

    async def drain(self) -> None:
        """Push until nothing is left."""
        while await self.push_batch():
            pass
