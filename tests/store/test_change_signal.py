"""The stores' wake-ups: a check that claims what it finds (a worker's lease) is never cut
at the wait's deadline, or the jobs it took would be lost until their leases ran out; the
shared probe is read before the first check; a job a write hands over is taken as it is."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

from tessera.runtime.jobs.base import Job, JobStatus
from tessera.runtime.jobs.signal import ChangeSignal
from tests.store.conftest import PARAMS


async def slow_second_check(signal: ChangeSignal, *, claims: bool) -> tuple[list[str], int]:
    """A wait of 0.1 s whose first check finds nothing and whose second, woken at 0.05 s,
    takes 0.2 s to take a job: what the wait returns, and how many jobs were taken."""
    taken: list[str] = []
    checks = 0

    async def take() -> list[str] | None:
        nonlocal checks
        checks += 1
        if checks == 1:
            return None
        await asyncio.sleep(0.2)  # the store answering slowly, after it took the job
        taken.append("job")
        return list(taken)

    waiting = asyncio.create_task(signal.wait_until(take, 0.1, claims=claims))
    await asyncio.sleep(0.05)
    signal.notify()
    return await waiting or [], len(taken)


async def test_a_claiming_check_that_overruns_the_deadline_keeps_what_it_took() -> None:
    found, taken = await slow_second_check(ChangeSignal(poll_seconds=10), claims=True)
    assert (found, taken) == (["job"], 1)


async def test_a_read_only_check_is_cut_at_the_deadline() -> None:
    # A long-poll answers on time; what its cut check read is simply read again next time.
    found, taken = await slow_second_check(ChangeSignal(poll_seconds=10), claims=False)
    assert (found, taken) == ([], 0)


async def test_the_shared_probe_is_asked_before_the_first_check() -> None:
    # Asked after, a write by another process that lands between the check and the probe's
    # first read would be in both, and the waiter would sleep through it to its timeout.
    asked: list[str] = []

    async def probe() -> int:
        asked.append("probe")
        return 0

    async def check() -> None:
        asked.append("check")

    signal = ChangeSignal(poll_seconds=10, probe=probe)
    assert await signal.wait_until(check, 0.05) is None
    assert asked[:2] == ["probe", "check"]


async def test_a_handed_job_answers_the_long_poll_and_a_change_no_id_names_takes_it_back() -> None:
    signal = ChangeSignal(poll_seconds=10)
    queued = Job(
        id=1,
        model="m",
        key_id="k",
        params=PARAMS,
        status=JobStatus.QUEUED,
        created_at=datetime.now(UTC),
    )
    stored = [queued]  # what a read finds
    reads: list[int] = []
    read = asyncio.Event()

    async def get(job_id: int) -> Job:
        reads.append(job_id)
        read.set()
        return stored[0]

    async def long_poll(now: Job, *changes: Job | None) -> Job:
        """A long-poll on the queued job; after its first read the store holds ``now`` and
        ``changes`` are notified."""
        stored[0] = queued
        reads.clear()
        read.clear()
        waiting = asyncio.create_task(signal.wait_for_status(get, 1, JobStatus.QUEUED, 5))
        await read.wait()
        stored[0] = now
        for change in changes:
            signal.notify(job=change) if change else signal.notify()
        return await waiting

    running = replace(queued, status=JobStatus.IN_PROGRESS)
    cancelled = replace(queued, status=JobStatus.CANCELLED)
    # What a read would find differs from what was handed over: the answer says which.
    assert (await long_poll(cancelled, running), len(reads)) == (running, 1)
    # Handed over, then a change no id names (another process's): the job is read again.
    assert (await long_poll(cancelled, running, None), len(reads)) == (cancelled, 2)
