"""The webhook outbox's rules (``WebhookOutbox`` in tessera.runtime.jobs.base), on every
backend: written with the job, due when the job changes, held while claimed, backed off
after a failure, forgotten when settled for good."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tessera.runtime.jobs.base import JobStore, WebhookDue
from tests.store.test_store_conformance import RESULT
from tests.support.params import job_params

WITH_WEBHOOK = job_params(
    prompt="p", webhook_url="https://hooks.example.com/", webhook_events=("started", "completed")
)
HOLD = 30.0


@pytest.fixture(params=["sqlite_store", "redis_store"])
def store(request: pytest.FixtureRequest) -> JobStore:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


async def claim_now(store: JobStore) -> list[int]:
    return [due.job_id for due in await store.claim_webhooks(10, HOLD)]


async def test_only_jobs_with_a_webhook_get_an_entry(store: JobStore) -> None:
    await store.submit("m", "k", job_params(prompt="p"))
    job = await store.submit("m", "k", WITH_WEBHOOK)
    (due,) = await store.claim_webhooks(10, HOLD)
    assert (due.job_id, due.done, due.attempts) == (job.id, (), 0)
    # Held: a second sender (or this one) does not get it again until the hold runs out.
    assert await claim_now(store) == []


async def test_a_claim_that_lapses_is_claimed_again(store: JobStore) -> None:
    """A sender that dies while holding an entry loses nothing."""
    job = await store.submit("m", "k", WITH_WEBHOOK)
    assert [d.job_id for d in await store.claim_webhooks(10, 0.2)] == [job.id]
    assert await claim_now(store) == []
    await asyncio.sleep(0.3)  # the hold runs out
    assert await claim_now(store) == [job.id]


async def test_a_change_of_the_job_makes_its_entry_due_and_wakes_a_waiting_claim(
    store: JobStore,
) -> None:
    job = await store.submit("m", "k", WITH_WEBHOOK)
    (due,) = await store.claim_webhooks(10, HOLD)
    await store.settle_webhook(due, 3600)  # nothing to send until the job moves
    assert await claim_now(store) == []
    waiting = asyncio.create_task(store.claim_webhooks(10, HOLD, wait=10))
    await asyncio.sleep(0.2)
    assert await store.lease(["m"], "w") is not None
    (woken,) = await asyncio.wait_for(waiting, 5)
    assert woken.job_id == job.id and woken.changes > due.changes


async def test_a_change_while_claimed_is_not_slept_through(store: JobStore) -> None:
    job = await store.submit("m", "k", WITH_WEBHOOK)
    (due,) = await store.claim_webhooks(10, HOLD)
    await store.lease(["m"], "w")  # the job moves while a sender holds its entry
    await store.settle_webhook(dataclasses.replace(due, done=("started",)), 3600)
    # Redis hears of the change through its subscription, which may come after the settle.
    (again,) = await store.claim_webhooks(10, HOLD, wait=5)
    assert again.job_id == job.id and again.done == ("started",)


async def test_a_failed_attempt_backs_off_even_if_the_job_changes(store: JobStore) -> None:
    job = await store.submit("m", "k", WITH_WEBHOOK)
    (due,) = await store.claim_webhooks(10, HOLD)
    await store.settle_webhook(dataclasses.replace(due, attempts=1), 3600, "HTTP 500")
    leased = await store.lease(["m"], "w")
    assert leased is not None
    await store.complete(job.id, "w", RESULT)
    assert await claim_now(store) == []


async def test_settling_for_good_forgets_the_entry(store: JobStore) -> None:
    job = await store.submit("m", "k", WITH_WEBHOOK)
    (due,) = await store.claim_webhooks(10, HOLD)
    await store.settle_webhook(WebhookDue(job.id, ("started",), 0, due.changes, due.model), None)
    await store.lease(["m"], "w")
    assert await store.claim_webhooks(10, HOLD, wait=0.5) == []


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda store: store.abort_late("m"), id="start-deadline-passed"),
        pytest.param(lambda store: store.expire("m", 0, "expired by the test"), id="expired"),
    ],
)
async def test_jobs_ended_in_bulk_make_their_entries_due(
    store: JobStore, change: Callable[[JobStore], Awaitable[int]]
) -> None:
    """A deadline or expiry that ends many jobs at once is a change for each one's webhook."""
    late = datetime.now(UTC)
    for params in (WITH_WEBHOOK, WITH_WEBHOOK, job_params(prompt="p")):
        await store.submit("m", "k", params, start_by=late)
    before = {due.job_id: due for due in await store.claim_webhooks(10, HOLD)}
    for due in before.values():
        await store.settle_webhook(due, 3600)  # nothing to send until the job moves
    assert len(before) == 2 and await claim_now(store) == []
    await asyncio.sleep(0.01)
    assert await change(store) == 3
    woken: dict[int, WebhookDue] = {}
    while woken.keys() != before.keys():  # Redis hears of each change through its subscription
        claimed = await asyncio.wait_for(store.claim_webhooks(10, HOLD, wait=5), 10)
        assert claimed, f"only {sorted(woken)} of {sorted(before)} became due"
        woken |= {due.job_id: due for due in claimed}
    assert all(woken[i].changes > before[i].changes for i in woken)


async def test_a_claim_that_outlasts_its_wait_returns_what_it_claimed(
    sqlite_store: JobStore, tmp_path: Path
) -> None:
    """A claim is a write (the entry is held): one that lands after its wait's deadline,
    because another process held the database, must be returned, not dropped for the hold."""
    store = sqlite_store
    job = await store.submit("m", "k", WITH_WEBHOOK)
    (due,) = await store.claim_webhooks(10, HOLD)
    await store.settle_webhook(dataclasses.replace(due, attempts=1), 0.2, "HTTP 500")
    other = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    claiming = asyncio.create_task(store.claim_webhooks(10, HOLD, wait=0.6))
    await asyncio.sleep(0.3)  # the first check found nothing due; the entry is due now
    # Another process writes (the store's probe wakes the claim) and keeps the write lock
    # past the wait's deadline, so the woken claim commits late.
    other.execute("BEGIN IMMEDIATE")
    other.execute("UPDATE meta SET value = value WHERE name = 'ledger_id'")
    await asyncio.sleep(0.9)
    other.execute("COMMIT")
    other.close()
    claimed = await asyncio.wait_for(claiming, 10)
    assert [d.job_id for d in claimed] == [job.id]
