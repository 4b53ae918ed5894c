"""The stores' wake-ups: a check that claims what it finds (a worker's lease) is never cut
at the wait's deadline, or the jobs it took would be lost until their leases ran out."""

from __future__ import annotations

import asyncio

from tessera.runtime.jobs.signal import ChangeSignal


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
