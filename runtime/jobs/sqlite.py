"""The embedded job store: one SQLite file in WAL mode, for a laptop or a single node.

Every statement runs on one dedicated thread, which serialises writers the way SQLite wants
and keeps the event loop free. ``synchronous=FULL`` makes each commit survive a power cut,
which is what "durable before the id is returned" means. Waiters are woken at once by writes
from this process and, for writes from another process sharing the file (a separate
``tessera worker``), by one shared poll of ``PRAGMA data_version``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from tessera.runtime.errors import (
    IdempotencyMismatch,
    JobFinished,
    JobNotFound,
    QueueFull,
    StoreUnavailable,
)
from tessera.runtime.jobs.base import (
    BATCH_LOOKAHEAD,
    DEADLINE_REASON,
    IDEMPOTENCY_SECONDS,
    MAX_JOB_ID,
    QUEUE_FULL_RETRY_AFTER_SECONDS,
    Idempotency,
    InvalidCursor,
    Job,
    JobResult,
    JobStatus,
    LeaseLost,
    QueueDepth,
    StorePolicy,
    UsagePage,
    UsageRecord,
    WebhookDue,
    batch_key,
    check_transition,
    result_from_json,
    result_to_json,
    usage_event_id,
)
from tessera.runtime.jobs.signal import ChangeSignal
from tessera.runtime.params import JobParams

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    model       TEXT    NOT NULL,
    queue       TEXT    NOT NULL, -- ModelSpec.queue_name: where it waits
    key_id      TEXT    NOT NULL,
    params      TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    progress    INTEGER NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,
    created_at  REAL    NOT NULL,
    started_at  REAL,
    finished_at REAL,
    error       TEXT,
    result      TEXT,
    worker_id   TEXT,
    lease_until REAL,
    start_by    REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs (finished_at);
CREATE TABLE IF NOT EXISTS idempotency (
    key_id      TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    job_id      INTEGER NOT NULL,
    created_at  REAL    NOT NULL,
    PRIMARY KEY (key_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency (created_at);
-- The usage ledger. Writers are serialised (BEGIN IMMEDIATE), so ``sequence`` grows in
-- commit order: the cursor of an export. AUTOINCREMENT never reuses one that was trimmed.
CREATE TABLE IF NOT EXISTS ledger (
    sequence        INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id          INTEGER NOT NULL UNIQUE,
    model           TEXT    NOT NULL,
    namespace       TEXT    NOT NULL,
    key_id          TEXT    NOT NULL,
    image_sizes     TEXT    NOT NULL,
    patches         INTEGER NOT NULL,
    price_per_patch TEXT    NOT NULL,
    amount          TEXT    NOT NULL,
    submitted_at    REAL    NOT NULL,
    started_at      REAL    NOT NULL,
    finished_at     REAL    NOT NULL,
    attempts        INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_by_time ON ledger (finished_at);
CREATE TABLE IF NOT EXISTS usage_cursors (name TEXT PRIMARY KEY, cursor TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE IF NOT EXISTS webhook_outbox (
    job_id     INTEGER PRIMARY KEY,
    due_at     REAL    NOT NULL,
    done       TEXT    NOT NULL DEFAULT '', -- events sent or given up on, comma-separated
    attempts   INTEGER NOT NULL DEFAULT 0,  -- failed attempts at the next event
    changes    INTEGER NOT NULL DEFAULT 0,  -- status changes of the job seen here
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS webhook_outbox_by_due ON webhook_outbox (due_at);
"""

# Files made before jobs had a queue name queued them by public name, the default still.
_ADD_QUEUE = """
ALTER TABLE jobs ADD COLUMN queue TEXT NOT NULL DEFAULT '';
UPDATE jobs SET queue = model;
"""
_QUEUE_INDEX = """
DROP INDEX IF EXISTS jobs_by_queue;
CREATE INDEX IF NOT EXISTS jobs_by_queue_name ON jobs (status, queue, id);
"""

# How often a waiter re-reads the file for changes made by another process.
CROSS_PROCESS_POLL_SECONDS = 0.25


def _when(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)


def _job_from_row(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        model=row["model"],
        key_id=row["key_id"],
        params=JobParams.model_validate_json(row["params"]),
        status=JobStatus(row["status"]),
        created_at=datetime.fromtimestamp(row["created_at"], UTC),
        progress=row["progress"],
        attempts=row["attempts"],
        started_at=_when(row["started_at"]),
        finished_at=_when(row["finished_at"]),
        error=row["error"],
        result=result_from_json(row["result"]),
        worker_id=row["worker_id"],
        lease_until=_when(row["lease_until"]),
        start_by=_when(row["start_by"]),
    )


def _batch_key_of(row: sqlite3.Row) -> str | None:
    return batch_key(JobParams.model_validate_json(row["params"]))


def _sequence(cursor: str) -> int:
    if cursor == "":
        return 0
    # ASCII digits only (``isdecimal`` takes any script's), within SQLite's 64-bit integers.
    digits = cursor.isascii() and cursor.isdigit() and len(cursor) <= 19
    if not digits or int(cursor) > MAX_JOB_ID:
        raise InvalidCursor(cursor)
    return int(cursor)


def _record_from_row(ledger_id: str, row: sqlite3.Row) -> UsageRecord:
    return UsageRecord(
        event_id=usage_event_id(ledger_id, row["job_id"]),
        job_id=row["job_id"],
        model=row["model"],
        namespace=row["namespace"],
        key_id=row["key_id"],
        image_sizes=tuple((w, h) for w, h in json.loads(row["image_sizes"])),
        patches=row["patches"],
        price_per_patch=Decimal(row["price_per_patch"]),
        amount=Decimal(row["amount"]),
        submitted_at=datetime.fromtimestamp(row["submitted_at"], UTC),
        started_at=datetime.fromtimestamp(row["started_at"], UTC),
        finished_at=datetime.fromtimestamp(row["finished_at"], UTC),
        attempts=row["attempts"],
    )


class SQLiteJobStore:
    """``JobStore`` over one SQLite file."""

    def __init__(self, path: Path, policy: StorePolicy | None = None):
        self.path = Path(path)
        self.policy = policy or StorePolicy()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tessera-sqlite")
        self._connection: sqlite3.Connection | None = None
        self._changes = ChangeSignal(CROSS_PROCESS_POLL_SECONDS, probe=self._data_version)
        # Made once per database, so event ids differ from a rebuilt store's.
        self._ledger_id = ""

    # -- plumbing ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # SQLite gives the -wal and -shm files the database file's mode, so creating it
            # owner-only (and narrowing one made before) keeps all three private.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            self.path.chmod(0o600)
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.executescript(_SCHEMA)
            columns = {row["name"] for row in connection.execute("PRAGMA table_info(jobs)")}
            if "start_by" not in columns:  # a file written before Cancel-After existed
                connection.execute("ALTER TABLE jobs ADD COLUMN start_by REAL")
            if "queue" not in columns:
                connection.executescript(_ADD_QUEUE)
            connection.executescript(_QUEUE_INDEX)
            connection.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('ledger_id', ?)",
                (secrets.token_hex(8),),
            )
            (self._ledger_id,) = connection.execute(
                "SELECT value FROM meta WHERE name = 'ledger_id'"
            ).fetchone()
            self._connection = connection
        return self._connection

    async def _run(
        self,
        operation: Callable[[sqlite3.Connection], T],
        *,
        notify: bool,
        durable: bool = True,
        write: bool = True,
    ) -> T:
        """Run ``operation`` in one transaction on the store's thread.

        ``durable=False`` skips the fsync for writes whose loss a crash makes harmless
        (a lease taken or renewed, progress): the job simply runs again. ``write=False``
        is for one SELECT, atomic by itself: no write lock, no transaction.
        """

        def in_thread() -> T:
            connection = self._connect()
            if not write:
                return operation(connection)
            connection.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            connection.execute("BEGIN IMMEDIATE")
            try:
                value = operation(connection)
                # The jobs it returns (one, or a batch leased together) are the jobs it changed.
                self._webhooks_due_now(
                    connection,
                    (
                        job.id
                        for job in (value if isinstance(value, list) else [value])
                        if isinstance(job, Job) and job.params.webhook_url
                    ),
                )
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return value

        loop = asyncio.get_running_loop()
        try:
            value = await loop.run_in_executor(self._executor, in_thread)
        except sqlite3.Error as error:
            raise StoreUnavailable(f"the job store at {self.path} failed: {error}") from error
        if notify:
            # A write that returns a job changed that job, and hands it to its long-polls;
            # one that counts what it changed and found nothing (a sweep, every second)
            # wakes no one; any other may have changed many.
            if isinstance(value, Job):
                self._changes.notify(job=value)
            elif value != 0:
                self._changes.notify()
        return value

    @staticmethod
    def _webhooks_due_now(connection: sqlite3.Connection, job_ids: Iterable[int]) -> None:
        """The jobs changed, in this transaction: their webhooks may have something to send
        (an entry waiting out a failed attempt's backoff keeps waiting; a job without a
        webhook has no entry to touch)."""
        now = time.time()
        connection.executemany(
            "UPDATE webhook_outbox SET changes = changes + 1,"
            " due_at = CASE WHEN attempts = 0 THEN MIN(due_at, ?) ELSE due_at END"
            " WHERE job_id = ?",
            [(now, job_id) for job_id in job_ids],
        )

    @staticmethod
    def _fetch(connection: sqlite3.Connection, job_id: int) -> Job:
        if not 1 <= job_id <= MAX_JOB_ID:
            raise JobNotFound(job_id)
        row = connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return _job_from_row(row)

    @staticmethod
    def _held(job: Job, worker_id: str) -> Job:
        if job.status is not JobStatus.IN_PROGRESS or job.worker_id != worker_id:
            raise LeaseLost(f"worker {worker_id} no longer holds job {job.id}")
        return job

    def _finishing(
        self, connection: sqlite3.Connection, job_id: int, worker_id: str, status: JobStatus
    ) -> tuple[Job, bool]:
        """The job this worker finishes with ``status``, and whether it already did (a
        retried write then changes nothing); read once."""
        job = self._fetch(connection, job_id)
        if job.status is status and job.worker_id == worker_id:
            return job, True
        check_transition(self._held(job, worker_id).status, status)
        return job, False

    def _reclaim_expired(self, connection: sqlite3.Connection, now: float) -> None:
        expired = connection.execute(
            "SELECT id, attempts FROM jobs WHERE status = ? AND lease_until < ?",
            (JobStatus.IN_PROGRESS.value, now),
        ).fetchall()
        given_up: list[int] = []
        for row in expired:
            if row["attempts"] >= self.policy.max_attempts:
                given_up.append(row["id"])
                connection.execute(
                    "UPDATE jobs SET status = ?, finished_at = ?, error = ?, worker_id = NULL,"
                    " lease_until = NULL WHERE id = ?",
                    (
                        JobStatus.FAILED.value,
                        now,
                        f"the worker running this job stopped responding {row['attempts']} "
                        f"times (lease of {self.policy.lease_seconds:g} s ran out); giving up",
                        row["id"],
                    ),
                )
            else:
                connection.execute(
                    "UPDATE jobs SET status = ?, progress = 0, worker_id = NULL,"
                    " lease_until = NULL WHERE id = ?",
                    (JobStatus.QUEUED.value, row["id"]),
                )
        self._webhooks_due_now(connection, given_up)

    @classmethod
    def _end_queued(
        cls,
        connection: sqlite3.Connection,
        status: JobStatus,
        reason: str,
        now: float,
        where: str,
        arguments: Sequence[object],
    ) -> int:
        """End the queued jobs that also match ``where`` with ``status``, in this
        transaction, and make their webhooks due; how many ended."""
        ended = [
            row["id"]
            for row in connection.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, error = ?"  # noqa: S608
                f" WHERE status = ? AND {where} RETURNING id",
                (status.value, now, reason, JobStatus.QUEUED.value, *arguments),
            )
        ]
        cls._webhooks_due_now(connection, ended)
        return len(ended)

    def _abort_late(self, connection: sqlite3.Connection, now: float, queues: Sequence[str]) -> int:
        """Cancel the queued jobs whose Cancel-After deadline passed before they started."""
        placeholders = ",".join("?" * len(queues))
        return self._end_queued(
            connection,
            JobStatus.CANCELLED,
            DEADLINE_REASON,
            now,
            f"queue IN ({placeholders}) AND start_by <= ?",
            (*queues, now),
        )

    def _replay(
        self, connection: sqlite3.Connection, key_id: str, idempotency: Idempotency
    ) -> Job | None:
        """The job this key's Idempotency-Key already names, if it is recent and still kept."""
        row = connection.execute(
            "SELECT fingerprint, job_id FROM idempotency"
            " WHERE key_id = ? AND key = ? AND created_at > ?",
            (key_id, idempotency.key, time.time() - IDEMPOTENCY_SECONDS),
        ).fetchone()
        if row is None:
            return None
        if row["fingerprint"] != idempotency.fingerprint:
            raise IdempotencyMismatch(row["job_id"])
        try:
            return replace(self._fetch(connection, row["job_id"]), replayed=True)
        except JobNotFound:  # retention took it: the key names nothing any more
            return None

    # -- JobStore ---------------------------------------------------------------------------

    async def replay(self, key_id: str, idempotency: Idempotency) -> Job | None:
        return await self._run(
            lambda connection: self._replay(connection, key_id, idempotency),
            notify=False,
            write=False,
        )

    async def submit(
        self,
        model: str,
        key_id: str,
        params: JobParams,
        max_queued: int | None = None,
        queue_name: str | None = None,
        *,
        idempotency: Idempotency | None = None,
        start_by: datetime | None = None,
    ) -> Job:
        queue = queue_name or model

        def insert(connection: sqlite3.Connection) -> Job:
            # One transaction holds the write lock: concurrent submits with one key queue
            # behind each other here, and all but the first find its job.
            if idempotency is not None and (job := self._replay(connection, key_id, idempotency)):
                return job
            if max_queued is not None:
                (waiting,) = connection.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status = ? AND queue = ?",
                    (JobStatus.QUEUED.value, queue),
                ).fetchone()
                if waiting >= max_queued:
                    raise QueueFull(model, max_queued, QUEUE_FULL_RETRY_AFTER_SECONDS)
            now = time.time()
            cursor = connection.execute(
                "INSERT INTO jobs (model, queue, key_id, params, status, created_at, start_by)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    model,
                    queue,
                    key_id,
                    params.model_dump_json(),
                    JobStatus.QUEUED.value,
                    now,
                    None if start_by is None else start_by.timestamp(),
                ),
            )
            assert cursor.lastrowid is not None
            if idempotency is not None:
                connection.execute(
                    "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?, ?)",
                    (key_id, idempotency.key, idempotency.fingerprint, cursor.lastrowid, now),
                )
            if params.webhook_url:
                connection.execute(
                    "INSERT INTO webhook_outbox (job_id, due_at) VALUES (?, ?)",
                    (cursor.lastrowid, now),
                )
            return self._fetch(connection, cursor.lastrowid)

        return await self._run(insert, notify=True)

    async def get(self, job_id: int) -> Job:
        return await self._run(
            lambda connection: self._fetch(connection, job_id), notify=False, write=False
        )

    async def _data_version(self) -> int:
        """Moves whenever another connection (another process) commits to the file."""

        def read(connection: sqlite3.Connection) -> int:
            return int(connection.execute("PRAGMA data_version").fetchone()[0])

        return await self._run(read, notify=False, write=False)

    async def lease(self, models: list[str], worker_id: str, wait: float = 0.0) -> Job | None:
        placeholders = ",".join("?" * len(models))

        def take(connection: sqlite3.Connection) -> Job | None:
            now = time.time()
            self._reclaim_expired(connection, now)
            self._abort_late(connection, now, models)
            row = connection.execute(
                f"SELECT id FROM jobs WHERE status = ? AND queue IN ({placeholders})"  # noqa: S608
                " ORDER BY id LIMIT 1",
                (JobStatus.QUEUED.value, *models),
            ).fetchone()
            if row is None:
                return None
            return self._take(connection, row["id"], worker_id, now)

        job = await self._changes.wait_until(
            lambda: self._run(take, notify=False, durable=False), wait, claims=True
        )
        if job is not None:
            self._changes.notify(job=job)
        return job

    def _take(self, connection: sqlite3.Connection, job_id: int, worker_id: str, now: float) -> Job:
        """Put one queued job in progress for ``worker_id``, under a lease of its own."""
        connection.execute(
            "UPDATE jobs SET status = ?, attempts = attempts + 1, started_at = ?,"
            " worker_id = ?, lease_until = ?, progress = 0 WHERE id = ?",
            (JobStatus.IN_PROGRESS.value, now, worker_id, now + self.policy.lease_seconds, job_id),
        )
        return self._fetch(connection, job_id)

    async def lease_batch(
        self,
        models: list[str],
        worker_id: str,
        max_jobs: int,
        wait: float = 0.0,
        key: str | None = None,
    ) -> list[Job]:
        def take_compatible(connection: sqlite3.Connection) -> list[Job] | None:
            def queued(among: list[str], after: int, limit: int) -> list[sqlite3.Row]:
                placeholders = ",".join("?" * len(among))
                return connection.execute(
                    "SELECT id, queue, params FROM jobs WHERE status = ? AND id > ?"  # noqa: S608
                    f" AND queue IN ({placeholders}) ORDER BY id LIMIT ?",
                    (JobStatus.QUEUED.value, after, *among, limit),
                ).fetchall()

            now = time.time()
            self._reclaim_expired(connection, now)
            self._abort_late(connection, now, models)
            chosen: list[int] = []
            wanted, among, after = key, models, 0
            if key is None:
                # The oldest job of any of the models leads, even one that can only run alone.
                lead = queued(models, 0, 1)
                if not lead:
                    return None
                chosen.append(lead[0]["id"])
                wanted, among, after = _batch_key_of(lead[0]), [lead[0]["queue"]], lead[0]["id"]
            if wanted is not None and len(chosen) < max_jobs:
                for row in queued(among, after, BATCH_LOOKAHEAD):
                    if _batch_key_of(row) == wanted:
                        chosen.append(row["id"])
                        if len(chosen) == max_jobs:
                            break
            return [self._take(connection, job_id, worker_id, now) for job_id in chosen] or None

        jobs = await self._changes.wait_until(
            lambda: self._run(take_compatible, notify=False, durable=False), wait, claims=True
        )
        if jobs is None:
            return []
        for job in jobs:
            self._changes.notify(job=job)
        return jobs

    async def heartbeat(self, job_id: int, worker_id: str, progress: int) -> None:
        def renew(connection: sqlite3.Connection) -> None:
            self._held(self._fetch(connection, job_id), worker_id)
            connection.execute(
                "UPDATE jobs SET progress = ?, lease_until = ? WHERE id = ?",
                (max(0, min(progress, 100)), time.time() + self.policy.lease_seconds, job_id),
            )

        await self._run(renew, notify=False, durable=False)

    async def complete(
        self, job_id: int, worker_id: str, result: JobResult, namespace: str = ""
    ) -> Job:
        def finish(connection: sqlite3.Connection) -> Job:
            job, done = self._finishing(connection, job_id, worker_id, JobStatus.COMPLETED)
            if done:
                return job
            now = time.time()
            connection.execute(
                "UPDATE jobs SET status = ?, progress = 100, finished_at = ?, result = ?,"
                " lease_until = NULL WHERE id = ?",
                (JobStatus.COMPLETED.value, now, result_to_json(result), job_id),
            )
            assert job.started_at is not None
            connection.execute(
                "INSERT INTO ledger (job_id, model, namespace, key_id, image_sizes, patches,"
                " price_per_patch, amount, submitted_at, started_at, finished_at, attempts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    job.model,
                    namespace,
                    job.key_id,
                    json.dumps([[image.width, image.height] for image in result.images]),
                    result.patches,
                    str(result.price_per_patch),
                    str(result.price),
                    job.created_at.timestamp(),
                    job.started_at.timestamp(),
                    now,
                    job.attempts,
                ),
            )
            # The job as written, from the one read: no SELECT and parse of it again.
            return replace(
                job,
                status=JobStatus.COMPLETED,
                progress=100,
                finished_at=_when(now),
                result=result,
                lease_until=None,
            )

        return await self._run(finish, notify=True)

    async def fail(self, job_id: int, worker_id: str, error: str) -> Job:
        def mark_failed(connection: sqlite3.Connection) -> Job:
            job, done = self._finishing(connection, job_id, worker_id, JobStatus.FAILED)
            if done:
                return job
            now = time.time()
            connection.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, error = ?, lease_until = NULL"
                " WHERE id = ?",
                (JobStatus.FAILED.value, now, error, job_id),
            )
            return replace(
                job, status=JobStatus.FAILED, finished_at=_when(now), error=error, lease_until=None
            )

        return await self._run(mark_failed, notify=True)

    async def release(self, worker_id: str) -> int:
        def requeue(connection: sqlite3.Connection) -> int:
            # Expire the leases, then let the usual rule decide: requeue, or fail after the
            # last attempt.
            cursor = connection.execute(
                "UPDATE jobs SET lease_until = 0 WHERE status = ? AND worker_id = ?",
                (JobStatus.IN_PROGRESS.value, worker_id),
            )
            self._reclaim_expired(connection, time.time())
            return cursor.rowcount

        return await self._run(requeue, notify=True)

    async def cancel(self, job_id: int, reason: str) -> Job:
        def stop(connection: sqlite3.Connection) -> Job:
            job = self._fetch(connection, job_id)
            if job.status is JobStatus.CANCELLED:
                return job
            if job.status.finished:
                raise JobFinished(job_id, job.status.value)
            # The worker keeps its id on the job, so its next heartbeat sees it lost the job.
            connection.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, error = ?, lease_until = NULL"
                " WHERE id = ?",
                (JobStatus.CANCELLED.value, time.time(), reason, job_id),
            )
            return self._fetch(connection, job_id)

        return await self._run(stop, notify=True)

    async def abort_late(self, queue_name: str) -> int:
        return await self._run(
            lambda connection: self._abort_late(connection, time.time(), [queue_name]),
            notify=True,
        )

    async def queue_position(self, job: Job) -> int:
        # Counts index entries (status, queue, id) ahead of the job, never table rows: O(k)
        # for k jobs ahead, which max_queued bounds. SQLite has no order-statistic index.
        def count(connection: sqlite3.Connection) -> int:
            (ahead,) = connection.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = ? AND id < ?"
                " AND queue = (SELECT queue FROM jobs WHERE id = ?)",
                (JobStatus.QUEUED.value, job.id, job.id),
            ).fetchone()
            return int(ahead)

        return await self._run(count, notify=False, write=False)

    async def wait_for_change(self, job_id: int, status: JobStatus, timeout: float) -> Job:
        return await self._changes.wait_for_status(self.get, job_id, status, timeout)

    async def queue_depth(self, model: str) -> QueueDepth:
        def count(connection: sqlite3.Connection) -> QueueDepth:
            rows = connection.execute(
                "SELECT status, COUNT(*) AS n FROM jobs WHERE queue = ? AND status IN (?, ?)"
                " GROUP BY status",
                (model, JobStatus.QUEUED.value, JobStatus.IN_PROGRESS.value),
            ).fetchall()
            counts: dict[str, Any] = {row["status"]: row["n"] for row in rows}
            return QueueDepth(
                queued=counts.get(JobStatus.QUEUED.value, 0),
                in_progress=counts.get(JobStatus.IN_PROGRESS.value, 0),
            )

        return await self._run(count, notify=False, write=False)

    async def expire(self, model: str, queued_for: float, reason: str) -> int:
        def fail_waiting(connection: sqlite3.Connection) -> int:
            now = time.time()
            self._reclaim_expired(connection, now)
            return self._end_queued(
                connection,
                JobStatus.FAILED,
                reason,
                now,
                "queue = ? AND created_at <= ?",
                (model, now - queued_for),
            )

        return await self._run(fail_waiting, notify=True)

    async def finished_before(self, seconds_ago: float, limit: int = 100) -> list[Job]:
        def read(connection: sqlite3.Connection) -> list[Job]:
            rows = connection.execute(
                "SELECT * FROM jobs WHERE finished_at <= ? ORDER BY finished_at LIMIT ?",
                (time.time() - seconds_ago, limit),
            )
            return [_job_from_row(row) for row in rows]

        return await self._run(read, notify=False, write=False)

    async def delete(self, jobs: Sequence[Job]) -> None:
        def forget(connection: sqlite3.Connection) -> None:
            connection.executemany("DELETE FROM jobs WHERE id = ?", [(job.id,) for job in jobs])
            # Idempotency keys outlive no window: the retention sweep takes them as well.
            connection.execute(
                "DELETE FROM idempotency WHERE created_at <= ?",
                (time.time() - IDEMPOTENCY_SECONDS,),
            )

        await self._run(forget, notify=False)

    async def usage(
        self, since: str = "", until: str | None = None, limit: int = 1000
    ) -> UsagePage:
        after = _sequence(since)
        last = MAX_JOB_ID if until is None else _sequence(until)

        def read(connection: sqlite3.Connection) -> UsagePage:
            rows = connection.execute(
                "SELECT * FROM ledger WHERE sequence > ? AND sequence <= ?"
                " ORDER BY sequence LIMIT ?",
                (after, last, limit),
            ).fetchall()
            cursor = str(rows[-1]["sequence"] if rows else after)
            return UsagePage([_record_from_row(self._ledger_id, row) for row in rows], cursor)

        return await self._run(read, notify=False, write=False)

    async def usage_cursor_at(self, moment: datetime) -> str:
        def find(connection: sqlite3.Connection) -> str:
            (first,) = connection.execute(
                "SELECT MIN(sequence) FROM ledger WHERE finished_at >= ?", (moment.timestamp(),)
            ).fetchone()
            if first is not None:
                return str(first - 1)
            (last,) = connection.execute("SELECT MAX(sequence) FROM ledger").fetchone()
            return str(last or 0)

        return await self._run(find, notify=False)

    async def saved_cursor(self, name: str) -> str:
        def read(connection: sqlite3.Connection) -> str:
            row = connection.execute(
                "SELECT cursor FROM usage_cursors WHERE name = ?", (name,)
            ).fetchone()
            return "" if row is None else str(row["cursor"])

        return await self._run(read, notify=False, write=False)

    async def save_cursor(self, name: str, cursor: str) -> None:
        _sequence(cursor)

        def write(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT INTO usage_cursors (name, cursor) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor",
                (name, cursor),
            )

        await self._run(write, notify=False)

    async def saved_cursors(self) -> dict[str, str]:
        def read(connection: sqlite3.Connection) -> dict[str, str]:
            rows = connection.execute("SELECT name, cursor FROM usage_cursors ORDER BY name")
            return {str(row["name"]): str(row["cursor"]) for row in rows}

        return await self._run(read, notify=False, write=False)

    async def forget_cursor(self, name: str) -> bool:
        def delete(connection: sqlite3.Connection) -> bool:
            deleted = connection.execute("DELETE FROM usage_cursors WHERE name = ?", (name,))
            return deleted.rowcount > 0

        return await self._run(delete, notify=False)

    async def delivered_cursor(self) -> str:
        def read(connection: sqlite3.Connection) -> str:
            (oldest,) = connection.execute(
                "SELECT MIN(CAST(cursor AS INTEGER)) FROM usage_cursors"
            ).fetchone()
            return "" if oldest is None else str(oldest)

        return await self._run(read, notify=False, write=False)

    async def trim_usage(self, delivered: str, keep_seconds: float) -> int:
        through = _sequence(delivered)

        def delete(connection: sqlite3.Connection) -> int:
            return connection.execute(
                "DELETE FROM ledger WHERE sequence <= ? AND finished_at < ?",
                (through, time.time() - keep_seconds),
            ).rowcount

        return await self._run(delete, notify=False)

    # -- WebhookOutbox -----------------------------------------------------------------------

    async def claim_webhooks(
        self, limit: int, hold_seconds: float, wait: float = 0.0
    ) -> list[WebhookDue]:
        def claim(connection: sqlite3.Connection) -> list[WebhookDue] | None:
            now = time.time()
            rows = connection.execute(
                "UPDATE webhook_outbox SET due_at = ? WHERE job_id IN (SELECT job_id FROM"
                " webhook_outbox WHERE due_at <= ? ORDER BY due_at LIMIT ?)"
                " RETURNING job_id, done, attempts, changes",
                (now + hold_seconds, now, limit),
            ).fetchall()
            return [
                WebhookDue(
                    row["job_id"],
                    tuple(filter(None, row["done"].split(","))),
                    row["attempts"],
                    row["changes"],
                )
                for row in rows
            ] or None

        found = await self._changes.wait_until(
            lambda: self._run(claim, notify=False, durable=False), wait, claims=True
        )
        return found or []

    async def settle_webhook(
        self, due: WebhookDue, retry_in: float | None, error: str | None = None
    ) -> None:
        def record(connection: sqlite3.Connection) -> None:
            if retry_in is None:
                connection.execute("DELETE FROM webhook_outbox WHERE job_id = ?", (due.job_id,))
                return
            now = time.time()
            connection.execute(
                "UPDATE webhook_outbox SET done = ?, attempts = ?, last_error = ?,"
                " due_at = CASE WHEN ? = 0 AND changes != ? THEN ? ELSE ? END WHERE job_id = ?",
                (
                    ",".join(due.done),
                    due.attempts,
                    error,
                    due.attempts,
                    due.changes,
                    now,
                    now + retry_in,
                    due.job_id,
                ),
            )

        await self._run(record, notify=False)

    async def close(self) -> None:
        def shut() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)
