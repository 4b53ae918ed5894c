"""The usage ledger's rules (see tessera.runtime.jobs.base), run against every backend."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from tessera.runtime.jobs.base import InvalidCursor, JobStore, LeaseLost
from tests.store.conftest import PARAMS, RESULT, SHORT_LEASE, complete_one, read_all


async def test_a_record_carries_the_whole_bill(store: JobStore) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    job_id = await complete_one(store, key_id="key_a")
    (record,) = (await store.usage()).records
    job = await store.get(job_id)
    assert record.job_id == job_id and record.model == "m" and record.namespace == "team-a"
    assert record.key_id == "key_a" and record.image_sizes == ((64, 48),)
    assert record.images == 1 and record.patches == 12
    assert record.price_per_patch == RESULT.price_per_patch
    assert record.amount == record.patches * record.price_per_patch == RESULT.price
    assert record.attempts == 1
    assert before <= record.submitted_at <= record.started_at <= record.finished_at
    assert job.finished_at is not None
    assert abs((record.finished_at - job.finished_at).total_seconds()) < 0.001
    assert str(job_id) in record.event_id


async def test_the_event_id_is_the_jobs_and_stays_across_retries(store: JobStore) -> None:
    job = await store.submit("m", "k", PARAMS)
    await store.lease(["m"], "dead-worker")
    await asyncio.sleep(SHORT_LEASE.lease_seconds + 0.1)
    again = await store.lease(["m"], "w2")
    assert again is not None and again.attempts == 2
    with pytest.raises(LeaseLost):
        await store.complete(job.id, "dead-worker", RESULT)
    await store.complete(job.id, "w2", RESULT)
    await store.complete(job.id, "w2", RESULT)  # a retry whose first run landed: no new record
    (record,) = await read_all(store)
    assert record.attempts == 2
    other = await complete_one(store)
    ids = [r.event_id for r in await read_all(store)]
    assert len(set(ids)) == 2 and ids[0] == record.event_id and str(other) in ids[1]


async def test_the_cursor_follows_completion_not_job_ids(store: JobStore) -> None:
    """The old export resumed after the last job id and skipped a job that finished late."""
    early = await store.submit("m", "k", PARAMS)
    late = await store.submit("m", "k", PARAMS)
    await store.lease(["m"], "w1")
    await store.lease(["m"], "w2")
    await store.complete(late.id, "w2", RESULT)
    page = await store.usage()
    assert [r.job_id for r in page.records] == [late.id]
    await store.complete(early.id, "w1", RESULT)
    resumed = await store.usage(page.cursor)
    assert [r.job_id for r in resumed.records] == [early.id]
    assert (await store.usage(resumed.cursor)).records == []
    assert (await store.usage(resumed.cursor)).cursor == resumed.cursor


async def test_pages_across_models_resume_without_gaps_or_repeats(store: JobStore) -> None:
    finished = [await complete_one(store, model) for model in ["b", "a", "b", "c", "a", "a"]]
    for page in (1, 2, 4):
        assert [r.job_id for r in await read_all(store, page=page)] == finished
    # Records that arrive later are read from the cursor reached before them.
    reached = (await store.usage()).cursor
    more = [await complete_one(store, model) for model in ["c", "d"]]
    assert [r.job_id for r in await read_all(store, reached)] == more


async def test_the_same_range_reads_the_same_records(store: JobStore) -> None:
    for model in ["a", "b", "a"]:
        await complete_one(store, model)
    first = await store.usage(limit=1)
    end = (await store.usage()).cursor
    await complete_one(store, "b")
    ranged = await store.usage(first.cursor, end)
    assert [r.model for r in ranged.records] == ["b", "a"]
    assert ranged == await store.usage(first.cursor, end)
    assert ranged.cursor == end
    assert (await store.usage(end, end)).records == []


async def test_failed_and_expired_jobs_leave_no_record(store: JobStore) -> None:
    failed = await store.submit("m", "k", PARAMS)
    await store.lease(["m"], "w")
    await store.fail(failed.id, "w", "boom")
    await store.submit("m", "k", PARAMS)
    assert await store.expire("m", 0, "removed") == 1
    assert await read_all(store) == []


def _positions(positions: object) -> str:
    """A cursor shaped like the Redis store's (base64url JSON), with any content."""
    return base64.urlsafe_b64encode(json.dumps(positions).encode()).decode().rstrip("=")


# Cursors nobody handed out: malformed, out of range for either backend (SQLite's 64-bit
# integers, Redis's 64-bit stream ids), in another script's digits, absurdly long.
FOREIGN_CURSORS = [
    "not a cursor",
    "-1",
    "e30x!",
    "W10",
    "9999999999999999999",
    str(2**63),
    "\u0661\u0662",
    "1" * 5000,
    _positions({"m": "99999999999999999999-1"}),
    _positions({"m": f"{2**64 - 1}-{2**64 - 1}"}),
    _positions({"m": "\u0661-1"}),
    _positions({"m": 5}),
    _positions(["1-1"]),
]


async def test_a_foreign_cursor_is_refused(store: JobStore) -> None:
    await complete_one(store)
    for cursor in FOREIGN_CURSORS:
        with pytest.raises(InvalidCursor):
            await store.usage(cursor)
        with pytest.raises(InvalidCursor):
            await store.usage("", cursor)
        with pytest.raises(InvalidCursor):
            await store.trim_usage(cursor, keep_seconds=0)
        with pytest.raises(InvalidCursor):
            await store.save_cursor("push", cursor)
    assert len(await read_all(store)) == 1, "nothing was trimmed"
    assert await store.saved_cursor("push") == ""


async def test_a_saved_cursor_survives_the_store(store: JobStore) -> None:
    assert await store.saved_cursor("push") == ""
    await complete_one(store)
    cursor = (await store.usage()).cursor
    await store.save_cursor("push", cursor)
    assert await store.saved_cursor("push") == cursor
    assert await store.saved_cursor("other") == ""


async def test_retention_waits_for_every_saved_cursor(store: JobStore) -> None:
    """Two exporters (the push one, an invoicing job's export): what is delivered is what
    the slower one has read, model by model."""
    assert await store.delivered_cursor() == "", "nothing saved: nothing delivered"
    first = [await complete_one(store, model) for model in ["a", "b"]]
    invoiced = (await store.usage()).cursor
    later = [await complete_one(store, model) for model in ["b", "c"]]
    await store.save_cursor("push", (await store.usage()).cursor)
    await store.save_cursor("invoices", invoiced)
    delivered = await store.delivered_cursor()
    assert [r.job_id for r in await read_all(store, delivered)] == later
    await asyncio.sleep(0.01)
    assert await store.trim_usage(delivered, keep_seconds=0) == len(first)
    assert [r.job_id for r in await read_all(store)] == later
    await store.save_cursor("invoices", await store.saved_cursor("push"))
    assert await store.trim_usage(await store.delivered_cursor(), keep_seconds=0) == len(later)


async def test_a_forgotten_cursor_no_longer_holds_retention(store: JobStore) -> None:
    """An invoicing export nobody runs any more kept every record after it; forgotten, it
    lets retention trim what the push exporter delivered."""
    assert await store.saved_cursors() == {}
    stale = (await store.usage()).cursor
    await complete_one(store)
    await store.save_cursor("invoices-2025", stale)
    await store.save_cursor("push", (await store.usage()).cursor)
    assert await store.saved_cursors() == {
        "invoices-2025": stale,
        "push": await store.saved_cursor("push"),
    }
    await asyncio.sleep(0.01)
    assert await store.trim_usage(await store.delivered_cursor(), keep_seconds=0) == 0
    assert await store.forget_cursor("invoices-2025") is True
    assert await store.forget_cursor("invoices-2025") is False, "gone already"
    assert await store.forget_cursor("never-saved") is False
    assert list(await store.saved_cursors()) == ["push"]
    assert await store.saved_cursor("invoices-2025") == ""
    assert await store.trim_usage(await store.delivered_cursor(), keep_seconds=0) == 1


async def test_trim_removes_only_delivered_records_past_the_window(store: JobStore) -> None:
    await complete_one(store)
    delivered = (await store.usage()).cursor
    await complete_one(store)
    assert await store.trim_usage(delivered, keep_seconds=3600) == 0, "inside the window"
    assert len(await read_all(store)) == 2
    await asyncio.sleep(0.01)  # both backends count whole milliseconds at least
    assert await store.trim_usage(delivered, keep_seconds=0) == 1
    (left,) = await read_all(store)
    assert left.job_id == (await store.usage(delivered)).records[0].job_id
    # Nothing before the start was delivered: nothing goes.
    assert await store.trim_usage("", keep_seconds=0) == 0


async def test_a_cursor_at_a_moment_starts_a_time_range(store: JobStore) -> None:
    await complete_one(store, "a")
    await asyncio.sleep(0.02)
    middle = datetime.now(UTC)
    await asyncio.sleep(0.02)
    later = [await complete_one(store, model) for model in ["b", "a"]]
    since = await store.usage_cursor_at(middle)
    assert [r.job_id for r in await read_all(store, since)] == later
    assert await read_all(store, await store.usage_cursor_at(datetime.now(UTC))) == []
