"""The job store's rules (see tessera.runtime.jobs.base), run against every backend."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tessera.runtime.errors import IdempotencyMismatch, JobFinished, JobNotFound, QueueFull
from tessera.runtime.jobs.base import (
    DEADLINE_REASON,
    Idempotency,
    Job,
    JobStatus,
    JobStore,
    LeaseLost,
    QueueDepth,
    batch_key,
)
from tests.store.conftest import PARAMS, RESULT, SHORT_LEASE, read_all
from tests.support.params import job_params


async def test_submit_then_get(store: JobStore) -> None:
    job = await store.submit("m", "key_a", PARAMS)
    assert job.id > 0 and job.status is JobStatus.QUEUED
    again = await store.get(job.id)
    assert again.params == PARAMS and again.key_id == "key_a"
    # Ids past any backend's 64-bit range, zero and negatives name no job; none may crash.
    for missing in (job.id + 1000, 0, -1, 2**64):
        with pytest.raises(JobNotFound):
            await store.get(missing)


async def test_ids_are_increasing_integers(store: JobStore) -> None:
    ids = [(await store.submit("m", "k", PARAMS)).id for _ in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5


async def test_lease_is_fifo_per_model_and_exclusive(store: JobStore) -> None:
    first = await store.submit("m", "k", PARAMS)
    await store.submit("other", "k", PARAMS)
    second = await store.submit("m", "k", PARAMS)
    a = await store.lease(["m"], "w1")
    b = await store.lease(["m"], "w2")
    assert (a and a.id, b and b.id) == (first.id, second.id)
    assert await store.lease(["m"], "w3") is None
    assert a is not None and a.status is JobStatus.IN_PROGRESS and a.attempts == 1


async def test_lease_waits_for_a_submission(store: JobStore) -> None:
    async def submit_later() -> None:
        await asyncio.sleep(0.1)
        await store.submit("m", "k", PARAMS)

    task = asyncio.create_task(submit_later())
    started = time.monotonic()
    job = await store.lease(["m"], "w", wait=5)
    await task
    assert job is not None
    assert time.monotonic() - started < 1


async def test_complete_is_atomic_and_bills_once(store: JobStore) -> None:
    job = await store.submit("m", "key_a", PARAMS)
    leased = await store.lease(["m"], "w")
    assert leased is not None
    await store.heartbeat(job.id, "w", 50)
    assert (await store.get(job.id)).progress == 50
    done = await store.complete(job.id, "w", RESULT)
    assert done.status is JobStatus.COMPLETED and done.result == RESULT
    # A retried completion (its reply lost to a dropped connection) changes nothing.
    assert await store.complete(job.id, "w", RESULT) == done
    with pytest.raises(LeaseLost):
        await store.complete(job.id, "another worker", RESULT)
    records = (await store.usage()).records
    assert [(r.job_id, r.key_id, r.patches, r.amount) for r in records] == [
        (job.id, "key_a", 12, Decimal("0.006"))
    ]


async def test_failed_jobs_are_not_billed(store: JobStore) -> None:
    job = await store.submit("m", "k", PARAMS)
    await store.lease(["m"], "w")
    failed = await store.fail(job.id, "w", "boom")
    assert failed.status is JobStatus.FAILED and failed.error == "boom"
    assert (await store.usage()).records == []


async def test_expired_lease_requeues_then_fails_after_max_attempts(store: JobStore) -> None:
    job = await store.submit("m", "k", PARAMS)
    assert await store.lease(["m"], "dead-worker") is not None
    await asyncio.sleep(0.4)
    again = await store.lease(["m"], "w2")
    assert again is not None and again.id == job.id and again.attempts == 2
    # The first worker comes back: it no longer owns the job and cannot bill it.
    with pytest.raises(LeaseLost):
        await store.complete(job.id, "dead-worker", RESULT)
    await asyncio.sleep(0.4)
    assert await store.lease(["m"], "w3") is None
    final = await store.get(job.id)
    assert final.status is JobStatus.FAILED
    assert final.error is not None and "2 times" in final.error
    assert (await store.usage()).records == []


async def test_heartbeat_keeps_the_lease(store: JobStore) -> None:
    job = await store.submit("m", "k", PARAMS)
    await store.lease(["m"], "w")
    for _ in range(4):
        await asyncio.sleep(0.15)
        await store.heartbeat(job.id, "w", 10)
    assert await store.lease(["m"], "thief") is None
    await store.complete(job.id, "w", RESULT)


async def test_release_requeues_a_restarted_workers_jobs(store: JobStore) -> None:
    job = await store.submit("m", "k", PARAMS)
    await store.lease(["m"], "embedded")
    assert await store.release("embedded") == 1
    assert (await store.get(job.id)).status is JobStatus.QUEUED


async def test_wait_for_change_returns_on_the_change(store: JobStore) -> None:
    job = await store.submit("m", "k", PARAMS)

    async def lease_later() -> None:
        await asyncio.sleep(0.1)
        await store.lease(["m"], "w")

    task = asyncio.create_task(lease_later())
    started = time.monotonic()
    changed = await store.wait_for_change(job.id, JobStatus.QUEUED, 5)
    await task
    assert changed.status is JobStatus.IN_PROGRESS
    assert time.monotonic() - started < 1
    unchanged = await store.wait_for_change(job.id, JobStatus.IN_PROGRESS, 0.2)
    assert unchanged.status is JobStatus.IN_PROGRESS


async def test_queue_depth_counts_queued_and_running(store: JobStore) -> None:
    for _ in range(3):
        await store.submit("m", "k", PARAMS)
    await store.lease(["m"], "w")
    depth = await store.queue_depth("m")
    assert (depth.queued, depth.in_progress, depth.total) == (2, 1, 3)
    assert (await store.queue_depth("other")).total == 0


async def test_a_full_queue_refuses_and_queues_nothing(store: JobStore) -> None:
    kept = [await store.submit("m", "k", PARAMS, max_queued=2) for _ in range(2)]
    with pytest.raises(QueueFull) as refused:
        await store.submit("m", "k", PARAMS, max_queued=2)
    assert refused.value.headers() == {"Retry-After": "5"}
    assert (await store.queue_depth("m")).queued == 2
    await store.submit("other", "k", PARAMS, max_queued=2)  # the limit is per model
    # A leased job no longer waits, so it makes room.
    leased = await store.lease(["m"], "w1")
    assert leased is not None and leased.id == kept[0].id
    await store.submit("m", "k", PARAMS, max_queued=2)


async def test_expire_fails_only_jobs_that_waited_long_enough(store: JobStore) -> None:
    old = await store.submit("m", "k", PARAMS)
    await asyncio.sleep(0.3)
    young = await store.submit("m", "k", PARAMS)
    other = await store.submit("other", "k", PARAMS)
    assert await store.expire("m", 0.2, "no worker became ready") == 1
    failed = await store.get(old.id)
    assert failed.status is JobStatus.FAILED and failed.error == "no worker became ready"
    assert (await store.get(young.id)).status is JobStatus.QUEUED
    assert (await store.get(other.id)).status is JobStatus.QUEUED
    assert (await store.usage()).records == [], "an expired job is never billed"
    # Zero fails everything still waiting, as when the model is removed.
    assert await store.expire("m", 0, "model m was removed") == 1
    assert (await store.lease(["m"], "w1")) is None


async def test_expire_reclaims_lapsed_leases_with_no_worker_leasing(store: JobStore) -> None:
    job = await store.submit("m", "k", PARAMS)
    assert await store.lease(["m"], "w1") is not None
    await asyncio.sleep(SHORT_LEASE.lease_seconds + 0.1)
    assert await store.expire("m", 3600, "unused") == 0
    back = await store.get(job.id)
    assert back.status is JobStatus.QUEUED and back.worker_id is None


async def test_finished_jobs_are_listed_after_the_retention_then_deleted(
    store: JobStore,
) -> None:
    completed = await store.submit("m", "key_a", PARAMS)
    failed = await store.submit("other", "k", PARAMS)
    queued = await store.submit("m", "k", PARAMS)
    await store.lease(["m"], "w")
    await store.complete(completed.id, "w", RESULT)
    await store.lease(["other"], "w")
    await store.fail(failed.id, "w", "boom")
    assert await store.finished_before(3600) == []
    due = await store.finished_before(0)
    assert [job.id for job in due] == [completed.id, failed.id]
    assert due[0].result == RESULT
    assert [job.id for job in await store.finished_before(0, limit=1)] == [completed.id]
    await store.delete(due)
    await store.delete(due)  # an overlapping sweep
    for job in due:
        with pytest.raises(JobNotFound):
            await store.get(job.id)
    assert await store.finished_before(0) == []
    assert (await store.get(queued.id)).status is JobStatus.QUEUED
    assert [record.job_id for record in (await store.usage()).records] == [
        completed.id
    ]  # ledger stays


async def test_retention_deletes_a_job_queued_under_another_name(store: JobStore) -> None:
    job = await store.submit("flux", "k", PARAMS, queue_name="team-a/flux")
    await store.lease(["team-a/flux"], "w")
    await store.complete(job.id, "w", RESULT)
    due = await store.finished_before(0)
    assert [found.id for found in due] == [job.id]
    await store.delete(due)
    with pytest.raises(JobNotFound):
        await store.get(job.id)
    assert await store.finished_before(0) == []


async def test_a_long_poll_wakes_for_its_own_job_not_for_every_change(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    watched = await store.submit("m", "k", PARAMS)
    reads = 0
    get = store.get

    async def counting_get(job_id: int) -> Job:
        nonlocal reads
        reads += job_id == watched.id
        return await get(job_id)

    monkeypatch.setattr(store, "get", counting_get)
    started = time.monotonic()
    waiter = asyncio.create_task(store.wait_for_change(watched.id, JobStatus.QUEUED, 30))
    await asyncio.sleep(0.05)
    others = 0
    for _ in range(10):
        other = await store.submit("other", "k", PARAMS)
        await store.lease(["other"], "w")
        await store.complete(other.id, "w", RESULT)
        others += 3
    assert not waiter.done()
    await store.lease(["m"], "w")
    changed = await asyncio.wait_for(waiter, 5)
    assert changed.status is JobStatus.IN_PROGRESS
    # The first read, perhaps one for a subscription that came up meanwhile, one for its own
    # change, and the store's timer re-reads (SQLite's, for other processes): never one per
    # change of another job.
    timer_reads = (time.monotonic() - started) / store._changes.poll_seconds  # type: ignore[attr-defined]
    assert reads <= 3 + int(timer_reads), (reads, others, timer_reads)
    assert reads < others / 3


async def test_a_cancelled_queued_job_is_never_leased_nor_billed(store: JobStore) -> None:
    job = await store.submit("m", "k", PARAMS)
    cancelled = await store.cancel(job.id, "by its client")
    assert cancelled.status is JobStatus.CANCELLED and cancelled.error == "by its client"
    assert await store.cancel(job.id, "again") == cancelled, "a second cancel changes nothing"
    assert await store.lease(["m"], "w") is None
    assert await store.queue_depth("m") == QueueDepth(0, 0)
    assert (await store.usage()).records == []


async def test_a_cancelled_running_job_loses_its_lease_and_bills_nothing(store: JobStore) -> None:
    job = await store.submit("m", "k", PARAMS)
    await store.lease(["m"], "w")
    await store.cancel(job.id, "by its client")
    with pytest.raises(LeaseLost):
        await store.heartbeat(job.id, "w", 50)
    with pytest.raises(LeaseLost):
        await store.complete(job.id, "w", RESULT)
    assert (await store.get(job.id)).status is JobStatus.CANCELLED
    assert await store.queue_depth("m") == QueueDepth(0, 0)
    assert (await store.usage()).records == []


async def test_a_cancel_racing_a_completion_has_one_winner(store: JobStore) -> None:
    for _ in range(20):
        job = await store.submit("m", "k", PARAMS)
        await store.lease(["m"], "w")
        cancel, complete = await asyncio.gather(
            store.cancel(job.id, "raced"),
            store.complete(job.id, "w", RESULT),
            return_exceptions=True,
        )
        final = await store.get(job.id)
        billed = [r.job_id for r in (await store.usage()).records].count(job.id)
        if final.status is JobStatus.COMPLETED:
            assert isinstance(cancel, JobFinished) and billed == 1
        else:
            assert final.status is JobStatus.CANCELLED
            assert isinstance(complete, LeaseLost) and billed == 0
    # A cancel after the completion is a conflict, and the bill stands.
    job = await store.submit("m", "k", PARAMS)
    await store.lease(["m"], "w")
    await store.complete(job.id, "w", RESULT)
    with pytest.raises(JobFinished):
        await store.cancel(job.id, "late")
    assert (await store.get(job.id)).status is JobStatus.COMPLETED


async def test_queue_position_counts_the_jobs_ahead(store: JobStore) -> None:
    jobs = [await store.submit("m", "k", PARAMS) for _ in range(4)]
    await store.submit("other", "k", PARAMS)
    assert [await store.queue_position(job) for job in jobs] == [0, 1, 2, 3]
    await store.lease(["m"], "w")
    await store.cancel(jobs[2].id, "gone")
    assert [await store.queue_position(job) for job in (jobs[1], jobs[3])] == [0, 1]


async def test_a_job_past_its_start_deadline_is_cancelled_not_leased(store: JobStore) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=0.2)
    late = await store.submit("m", "k", PARAMS, start_by=soon)
    patient = await store.submit("m", "k", PARAMS, start_by=soon + timedelta(hours=1))
    assert (await store.get(late.id)).start_by is not None
    await asyncio.sleep(0.3)
    leased = await store.lease(["m"], "w")
    assert leased is not None and leased.id == patient.id
    aborted = await store.get(late.id)
    assert aborted.status is JobStatus.CANCELLED and aborted.error == DEADLINE_REASON
    assert aborted.attempts == 0
    # With no worker leasing, the gateways' sweep aborts it.
    unwatched = await store.submit("m", "k", PARAMS, start_by=datetime.now(UTC))
    await store.submit("other", "k", PARAMS, start_by=datetime.now(UTC))
    await asyncio.sleep(0.05)
    assert await store.abort_late("m") == 1
    assert (await store.get(unwatched.id)).status is JobStatus.CANCELLED
    assert await store.queue_depth("other") == QueueDepth(queued=1), "only the model named"


async def test_fifty_concurrent_idempotent_submits_make_one_job(store: JobStore) -> None:
    once = Idempotency(key="k-1", fingerprint="body-a")
    jobs = await asyncio.gather(
        *(store.submit("m", "key_a", PARAMS, idempotency=once) for _ in range(50))
    )
    assert len({job.id for job in jobs}) == 1
    assert await store.queue_depth("m") == QueueDepth(queued=1)
    with pytest.raises(IdempotencyMismatch) as mismatch:
        await store.submit("m", "key_a", PARAMS, idempotency=Idempotency("k-1", "body-b"))
    assert mismatch.value.job_id == jobs[0].id
    # Another API key's same Idempotency-Key is its own.
    theirs = await store.submit("m", "key_b", PARAMS, idempotency=once)
    assert theirs.id != jobs[0].id


async def test_an_idempotency_key_whose_job_was_deleted_makes_a_new_job(store: JobStore) -> None:
    once = Idempotency(key="k-2", fingerprint="body-a")
    first = await store.submit("m", "k", PARAMS, idempotency=once)
    await store.lease(["m"], "w")
    await store.complete(first.id, "w", RESULT)
    await store.delete([first])  # retention shorter than the key's 24 h
    again = await store.submit("m", "k", PARAMS, idempotency=once)
    assert again.id != first.id and (await store.get(again.id)).status is JobStatus.QUEUED
    assert (await store.submit("m", "k", PARAMS, idempotency=once)).id == again.id


async def test_one_public_name_in_two_queues_shares_nothing(store: JobStore) -> None:
    """Two ImageModels in two namespaces may claim one public name: their jobs wait in
    their own queues, named by resource, and nothing of one reaches the other."""
    ours = await store.submit("flux", "k", PARAMS, queue_name="team-a/flux")
    theirs = await store.submit("flux", "k", PARAMS, queue_name="team-b/flux")
    assert (await store.queue_depth("team-a/flux")).queued == 1
    assert (await store.queue_depth("team-b/flux")).queued == 1
    assert (await store.queue_depth("flux")).total == 0  # nothing under the public name

    leased = await store.lease(["team-b/flux"], "w")
    assert leased is not None and (leased.id, leased.model) == (theirs.id, "flux")
    assert await store.lease(["team-b/flux"], "w") is None
    await store.complete(leased.id, "w", RESULT)

    assert await store.expire("team-b/flux", 0, "gone") == 0
    assert await store.expire("team-a/flux", 0, "team-a's model was removed") == 1
    failed = await store.get(ours.id)
    assert (failed.status, failed.model) == (JobStatus.FAILED, "flux")
    assert [(r.job_id, r.model) for r in (await store.usage()).records] == [(theirs.id, "flux")]


async def test_the_queue_name_defaults_to_the_public_name(store: JobStore) -> None:
    job = await store.submit("m", "k", PARAMS)
    assert (await store.queue_depth("m")).queued == 1
    leased = await store.lease(["m"], "w")
    assert leased is not None and leased.id == job.id


async def test_cancel_deadlines_and_positions_follow_the_queue(store: JobStore) -> None:
    """Two queues of one public name: each job's position, deadline and cancel are its own
    queue's, however the jobs interleave."""
    late = datetime.now(UTC)
    ours = [
        await store.submit("flux", "k", PARAMS, queue_name="team-a/flux", start_by=late),
        await store.submit("flux", "k", PARAMS, queue_name="team-b/flux"),
        await store.submit("flux", "k", PARAMS, queue_name="team-a/flux"),
        await store.submit("flux", "k", PARAMS, queue_name="team-b/flux"),
    ]
    assert [await store.queue_position(job) for job in ours] == [0, 0, 1, 1]
    await asyncio.sleep(0.05)
    assert await store.abort_late("team-b/flux") == 0
    assert await store.abort_late("team-a/flux") == 1
    assert await store.queue_position(ours[2]) == 0
    await store.cancel(ours[1].id, "by its client")
    assert await store.queue_position(ours[3]) == 0
    assert await store.queue_depth("team-a/flux") == QueueDepth(queued=1)
    assert await store.queue_depth("team-b/flux") == QueueDepth(queued=1)
    leased = await store.lease(["team-b/flux"], "w")
    assert leased is not None and (leased.id, leased.model) == (ours[3].id, "flux")
    # An Idempotency-Key replays its job whichever queue the second submission names.
    once = Idempotency(key="k-q", fingerprint="body-a")
    first = await store.submit("flux", "k", PARAMS, queue_name="team-a/flux", idempotency=once)
    again = await store.submit("flux", "k", PARAMS, queue_name="team-a/flux", idempotency=once)
    assert again.id == first.id and await store.queue_position(again) == 1


# -- batch leases -----------------------------------------------------------------------------

SMALL = job_params(prompt="p", width=64, height=48)
WIDE = job_params(prompt="p", width=96, height=48)


async def test_a_batch_is_the_oldest_job_and_the_next_compatible_ones(store: JobStore) -> None:
    first = await store.submit("m", "k", SMALL)
    wide = await store.submit("m", "k", WIDE)
    await store.submit("other", "k", SMALL)
    same = [await store.submit("m", "k", SMALL.model_copy(update={"seed": s})) for s in (2, 3)]
    batch = await store.lease_batch(["m"], "w", max_jobs=2)
    assert [job.id for job in batch] == [first.id, same[0].id]
    assert all(job.status is JobStatus.IN_PROGRESS and job.worker_id == "w" for job in batch)
    # The job skipped over leads the next batch, alone: nothing queued matches it.
    assert [job.id for job in await store.lease_batch(["m"], "w", max_jobs=8)] == [wide.id]
    assert [job.id for job in await store.lease_batch(["m"], "w", max_jobs=8)] == [same[1].id]
    assert await store.lease_batch(["m"], "w", max_jobs=8) == []
    assert (await store.queue_depth("m")).in_progress == 4


async def test_a_batch_grows_only_with_its_own_key(store: JobStore) -> None:
    wide = await store.submit("m", "k", WIDE)
    small = await store.submit("m", "k", SMALL)
    key = batch_key(SMALL)
    assert key is not None and key != batch_key(WIDE)
    grown = await store.lease_batch(["m"], "w", max_jobs=4, key=key)
    assert [job.id for job in grown] == [small.id]
    assert (await store.get(wide.id)).status is JobStatus.QUEUED


async def test_a_job_that_cannot_batch_comes_alone(store: JobStore) -> None:
    two_sources = job_params(prompt="p", source_images=("a.png", "b.png"))
    assert batch_key(two_sources) is None
    lone = await store.submit("m", "k", two_sources)
    await store.submit("m", "k", two_sources)
    await store.submit("m", "k", SMALL)
    assert [job.id for job in await store.lease_batch(["m"], "w", max_jobs=4)] == [lone.id]


async def test_a_batch_lease_waits_for_a_submission(store: JobStore) -> None:
    async def submit_later() -> None:
        await asyncio.sleep(0.1)
        await store.submit("m", "k", SMALL)

    task = asyncio.create_task(submit_later())
    batch = await store.lease_batch(["m"], "w", max_jobs=4, wait=5)
    await task
    assert len(batch) == 1


async def test_a_crashed_batch_returns_every_job_and_bills_each_once(store: JobStore) -> None:
    ids = [(await store.submit("m", "k", SMALL)).id for _ in range(3)]
    assert [job.id for job in await store.lease_batch(["m"], "dead", max_jobs=8)] == ids
    await asyncio.sleep(SHORT_LEASE.lease_seconds + 0.1)
    again = await store.lease_batch(["m"], "w2", max_jobs=8)
    assert [(job.id, job.attempts) for job in again] == [(i, 2) for i in ids]
    for job_id in ids:
        with pytest.raises(LeaseLost):
            await store.complete(job_id, "dead", RESULT)
        await store.complete(job_id, "w2", RESULT)
        await store.complete(job_id, "w2", RESULT)  # a retried completion bills nothing more
    assert sorted(record.job_id for record in await read_all(store)) == ids


async def test_concurrent_batch_leases_never_share_a_job(store: JobStore) -> None:
    ids = {(await store.submit("m", "k", SMALL)).id for _ in range(20)}
    batches = await asyncio.gather(
        *(store.lease_batch(["m"], f"w{n}", max_jobs=3) for n in range(10))
    )
    leased = [job.id for batch in batches for job in batch]
    assert len(leased) == len(set(leased)) == 20 and set(leased) == ids
    assert all(len(batch) <= 3 for batch in batches)


async def test_a_batch_never_spans_two_queues_of_one_public_name(store: JobStore) -> None:
    ours = [await store.submit("flux", "k", SMALL, queue_name="team-a/flux") for _ in "ab"]
    await store.submit("flux", "k", SMALL, queue_name="team-b/flux")
    batch = await store.lease_batch(["team-a/flux"], "w", max_jobs=4)
    assert [job.id for job in batch] == [job.id for job in ours]
    assert (await store.queue_depth("team-b/flux")).queued == 1
