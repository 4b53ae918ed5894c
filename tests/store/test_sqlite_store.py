"""What only the SQLite store must do: open a file written before jobs had a queue name,
and hand a job its own process changed to the long-polls it wakes."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from tessera.runtime.jobs.base import Job, JobStatus
from tessera.runtime.jobs.sqlite import SQLiteJobStore
from tests.store.conftest import RESULT
from tests.store.test_store_conformance import PARAMS

# The jobs table as it was, without the queue column.
_OLD_JOBS = """
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, key_id TEXT NOT NULL,
    params TEXT NOT NULL, status TEXT NOT NULL, progress INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, started_at REAL,
    finished_at REAL, error TEXT, result TEXT, worker_id TEXT, lease_until REAL
);
CREATE INDEX jobs_by_queue ON jobs (status, model, id);
"""


async def test_jobs_queued_before_queue_names_wait_under_their_public_name(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as connection:
        connection.executescript(_OLD_JOBS)
        connection.execute(
            "INSERT INTO jobs (model, key_id, params, status, created_at)"
            " VALUES ('tessera-demo', 'k', ?, 'queued', 1.0)",
            (PARAMS.model_dump_json(),),
        )
    connection.close()
    store = SQLiteJobStore(path)
    try:
        assert (await store.queue_depth("tessera-demo")).queued == 1
        job = await store.lease(["tessera-demo"], "w")
        assert job is not None and job.model == "tessera-demo"
        later = await store.submit("tessera-demo", "k", PARAMS)
        assert (await store.lease(["tessera-demo"], "w")).id == later.id  # type: ignore[union-attr]
    finally:
        await store.close()


class CountedReads:
    """The store's ``get``, counted: each call is a hand-off to its thread and a SELECT."""

    def __init__(self, store: SQLiteJobStore):
        self.count = 0
        self.asked = asyncio.Event()
        self._get = store.get
        store.get = self  # type: ignore[method-assign]

    async def __call__(self, job_id: int) -> Job:
        self.count += 1
        self.asked.set()
        return await self._get(job_id)


async def long_poll_through(
    store: SQLiteJobStore, writer: SQLiteJobStore, *, sweep_first: bool = False
) -> tuple[Job, int]:
    """A long-poll on a running job that ``writer`` completes (after sweeps that find
    nothing to do): what it answers, and how many reads it made after its first."""
    job = await store.submit("m", "k", PARAMS)
    assert await store.lease(["m"], "w") is not None
    reads = CountedReads(store)
    polling = asyncio.create_task(store.wait_for_change(job.id, JobStatus.IN_PROGRESS, 30))
    await reads.asked.wait()  # its first read, before anything changed
    if sweep_first:
        assert await writer.abort_late("m") == 0
        assert await writer.expire("m", 3600, "waited too long") == 0
        assert await writer.release("another-worker") == 0
    await writer.complete(job.id, "w", RESULT)
    answered = await polling
    return answered, reads.count - 1


async def test_a_completion_hands_its_job_to_the_long_poll_without_a_read(
    tmp_path: Path,
) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.db")
    try:
        answered, reads = await long_poll_through(store, store)
        assert (answered.status, answered.result, reads) == (JobStatus.COMPLETED, RESULT, 0)
    finally:
        await store.close()


async def test_sweeps_that_change_nothing_wake_no_long_poll(tmp_path: Path) -> None:
    # The gateway's sweep runs every second; each woken long-poll would read its job again.
    store = SQLiteJobStore(tmp_path / "jobs.db")
    try:
        answered, reads = await long_poll_through(store, store, sweep_first=True)
        assert (answered.status, reads) == (JobStatus.COMPLETED, 0)
    finally:
        await store.close()


async def test_a_completion_by_another_process_is_read_once(tmp_path: Path) -> None:
    # Another store on the same file stands for another process: its write is heard by
    # the shared probe, which names no job, so the long-poll reads the job once.
    store, other = SQLiteJobStore(tmp_path / "jobs.db"), SQLiteJobStore(tmp_path / "jobs.db")
    try:
        answered, reads = await long_poll_through(store, other)
        assert (answered.status, answered.result, reads) == (JobStatus.COMPLETED, RESULT, 1)
    finally:
        await store.close()
        await other.close()


async def test_a_completion_or_failure_reads_its_job_once_and_answers_it_as_stored(
    tmp_path: Path,
) -> None:
    # The job a finishing write answers is built from its one read, not read again: on
    # every job's path, under the store's write lock.
    store = SQLiteJobStore(tmp_path / "jobs.db")
    statements: list[str] = []
    try:
        for _ in range(2):
            await store.submit("m", "k", PARAMS)
        first, second = await store.lease_batch(["m"], "w", 2)
        await asyncio.get_running_loop().run_in_executor(
            store._executor,
            lambda: store._connect().set_trace_callback(statements.append),
        )
        completed = await store.complete(first.id, "w", RESULT, "team")
        failed = await store.fail(second.id, "w", "it broke")
        reads = [statement for statement in statements if statement.startswith("SELECT")]
        assert reads == [f"SELECT * FROM jobs WHERE id = {job.id}" for job in (first, second)]
        assert (completed, failed) == (await store.get(first.id), await store.get(second.id))
        assert (completed.status, completed.result, failed.status, failed.error) == (
            JobStatus.COMPLETED,
            RESULT,
            JobStatus.FAILED,
            "it broke",
        )
    finally:
        await store.close()
