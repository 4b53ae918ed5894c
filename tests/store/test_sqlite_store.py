"""What only the SQLite store must do: open a file written before jobs had a queue name."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tessera.runtime.jobs.sqlite import SQLiteJobStore
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
