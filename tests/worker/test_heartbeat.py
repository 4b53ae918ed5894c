"""A job's heartbeat stops when its job is done, even when progress arrives at that moment.

Python 3.11's ``asyncio.wait_for`` returns the result of an awaitable that finished in the
same loop pass as a cancellation, and the cancellation is lost: a heartbeat cancelled as its
batch's last step reported progress then renewed its lease for ever, and the worker, waiting
for it to stop, held its whole batch (found by the 500-client load test).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tessera.runtime.jobs.base import StorePolicy
from tessera.runtime.jobs.sqlite import SQLiteJobStore
from tessera.runtime.models import ModelSpec
from tessera.runtime.storage import open_storage
from tessera.runtime.worker.runner import Worker, _Progress, _stop
from tests.support.params import job_params

MODEL = "demo"


async def test_a_heartbeat_cancelled_as_progress_arrives_stops(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.db", StorePolicy(lease_seconds=60))
    try:
        await store.submit(MODEL, "key", job_params())
        job = await store.lease([MODEL], "worker")
        assert job is not None
        worker = Worker(
            store,
            open_storage(f"file://{tmp_path}/files"),
            {MODEL: ModelSpec(name=MODEL)},
            {},
            "worker",
        )
        progress = _Progress()
        beating = asyncio.create_task(worker._heartbeat(job, progress))
        for _ in range(3):
            await asyncio.sleep(0)  # it now waits for progress
        progress.changed.set()
        beating.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(beating, 5)
    finally:
        await store.close()


async def test_a_task_that_loses_a_cancellation_is_still_stopped() -> None:
    ignored = 0

    async def swallows_one_cancellation() -> None:
        nonlocal ignored
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if ignored:
                    raise
                ignored += 1  # as a library's wait_for may

    task = asyncio.create_task(swallows_one_cancellation())
    await asyncio.sleep(0)
    await asyncio.wait_for(_stop(task), 5)
    assert task.cancelled() and ignored == 1
