"""The job store: the one durable record of every job, its lease and its usage.

A backend implements ``JobStore``. Its rules, which the conformance tests check for every
backend:

- ``submit`` returns only after the job is durable.
- ``lease`` hands a queued job to one worker until ``lease_until``; a lease that runs out
  puts the job back in the queue, and after ``max_attempts`` leases it fails with the reason.
- ``lease_batch`` takes the oldest queued job and, in the same atomic step, up to
  ``max_jobs - 1`` more queued jobs with its ``batch_key``; each carries its own lease, so
  each completes, fails or returns to the queue on its own.
- ``complete`` writes the result, the status and the usage record in one atomic step, and
  only for the worker that holds the lease, so a job is billed exactly once whatever
  crashes. ``fail`` bills nothing.
- The usage ledger is read in completion order through an opaque cursor that the
  completion step itself advances: a record is never behind a cursor that was handed out
  before it was written, so an export resumed from its last cursor misses nothing and
  repeats nothing; the same range reads the same records.
- ``submit`` with ``max_queued`` refuses (``QueueFull``) when that many jobs of the model
  already wait, in the same atomic step that would have queued it.
- ``expire`` fails queued jobs that waited too long, unbilled and with the reason, and
  reclaims the model's lapsed leases, so nothing waits forever for a worker that never
  comes (gateways call it on a timer, whether or not any worker is leasing).
- ``finished_before`` and ``delete`` keep the store bounded: jobs finished longer ago than
  the retention are listed (so their files can go first), then deleted; usage records stay.
- Backends translate their driver's exceptions into ``StoreUnavailable``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from tessera.runtime.errors import InvalidParameter, TesseraError
from tessera.runtime.params import JobParams

# Job ids are positive signed 64-bit integers in every backend (SQLite's INTEGER PRIMARY KEY,
# Redis's INCR); a number outside that range names no job.
MAX_JOB_ID = 2**63 - 1


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    # Stopped by its client (or by its Cancel-After deadline) and never billed. A client that
    # knows only the four statuses above reads it as "not completed".
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


# An in-progress job goes back to QUEUED when its lease runs out.
ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.IN_PROGRESS, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.IN_PROGRESS: frozenset(
        {JobStatus.QUEUED, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class LeaseLost(TesseraError):
    """The worker no longer holds the job: its lease ran out and the job moved on."""

    status_code = 409
    code = "job.lease_lost"


def check_transition(current: JobStatus, new: JobStatus) -> None:
    if new not in ALLOWED_TRANSITIONS[current]:
        raise LeaseLost(f"a job cannot go from {current.value} to {new.value}")


# How far past the oldest queued job a batch lease looks for jobs that can join it: a
# bound on the work one atomic lease does, whatever the queue's length.
BATCH_LOOKAHEAD = 256


def batch_key(params: JobParams) -> str | None:
    """What jobs must share to run as one pipeline call; ``None``: the job runs alone.

    Size, steps, guidance and format are one call's arguments. Whether a negative prompt
    is given changes how some pipelines guide (Flux's true CFG), so it splits batches too.
    A job with several source images hands the pipeline a list of its own, which cannot
    also be a batch.
    """
    if len(params.source_images) > 1:
        return None
    return json.dumps(
        [
            params.width,
            params.height,
            params.num_inference_steps,
            params.guidance_scale,
            params.output_format.value,
            bool(params.negative_prompt),
            len(params.source_images),
        ]
    )


@dataclass(frozen=True)
class ImageFile:
    key: str
    width: int
    height: int
    content_type: str


@dataclass(frozen=True)
class JobResult:
    images: tuple[ImageFile, ...]
    patches: int
    price: Decimal
    price_per_patch: Decimal


def result_to_json(result: JobResult) -> str:
    return json.dumps(
        {
            "images": [vars(image) for image in result.images],
            "patches": result.patches,
            "price": str(result.price),
            "price_per_patch": str(result.price_per_patch),
        }
    )


def result_from_json(text: str | None) -> JobResult | None:
    if not text:
        return None
    data = json.loads(text)
    return JobResult(
        images=tuple(ImageFile(**image) for image in data["images"]),
        patches=data["patches"],
        price=Decimal(data["price"]),
        # Results written before the rate was kept carry only the total.
        price_per_patch=Decimal(data.get("price_per_patch") or "0"),
    )


@dataclass(frozen=True)
class UsageRecord:
    """One completed job's bill, as the ledger keeps it.

    ``event_id`` comes from the job id and the store (a store rebuilt empty counts job ids
    from 1 again, so the id alone would collide downstream), never from the attempt, so a
    retried job has one id and a receiver that deduplicates by it counts the job once.
    ``amount`` is ``patches * price_per_patch`` exactly.
    """

    event_id: str
    job_id: int
    model: str
    namespace: str
    key_id: str
    image_sizes: tuple[tuple[int, int], ...]
    patches: int
    price_per_patch: Decimal
    amount: Decimal
    submitted_at: datetime
    started_at: datetime
    finished_at: datetime
    attempts: int

    @property
    def images(self) -> int:
        return len(self.image_sizes)


@dataclass(frozen=True)
class UsagePage:
    """Records in completion order, and the cursor to read on from after the last one."""

    records: list[UsageRecord]
    cursor: str


def usage_event_id(ledger_id: str, job_id: int) -> str:
    return f"{ledger_id}-{job_id}"


class InvalidCursor(InvalidParameter):
    """A usage cursor this store did not hand out."""

    def __init__(self, cursor: str):
        super().__init__(
            f"{cursor!r} is not a usage cursor of this store: pass one that an export "
            "printed, or an empty one to start at the beginning",
            field="cursor",
            rule="cursor",
        )


@dataclass(frozen=True)
class Job:
    id: int
    model: str
    key_id: str
    params: JobParams
    status: JobStatus
    created_at: datetime
    progress: int = 0
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    result: JobResult | None = None
    worker_id: str | None = None
    lease_until: datetime | None = None
    # Cancel-After: a job still queued at this moment is cancelled, unbilled.
    start_by: datetime | None = None
    # Never stored: set on the job a submission answers with when its Idempotency-Key named
    # an earlier submission's job (nothing new was queued, counted or billed).
    replayed: bool = False


@dataclass(frozen=True)
class QueueDepth:
    """What the autoscaler reads: queued and in-progress jobs both need a replica."""

    queued: int = 0
    in_progress: int = 0

    @property
    def total(self) -> int:
        return self.queued + self.in_progress


# As long as the anchors (Hyperstack, RunPod) keep a finished job and its images.
DEFAULT_RETENTION_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class StorePolicy:
    lease_seconds: float = 60.0
    max_attempts: int = 3
    # How long a finished job, its images and its inputs are kept.
    retention_seconds: float = DEFAULT_RETENTION_SECONDS


# How long an Idempotency-Key names its job (Stripe's and the IETF draft's window).
IDEMPOTENCY_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Idempotency:
    """A submission's Idempotency-Key (unique per API key) and a digest of its body: the same
    key with the same body answers the first job; with another body, ``IdempotencyMismatch``."""

    key: str
    fingerprint: str


DEADLINE_REASON = (
    "the job had not started by its Cancel-After deadline; it did not run and is not billed"
)

# A full queue drains at the pace of its workers; a client that waits this long before it
# retries gives them time without leaving the caller idle for long.
QUEUE_FULL_RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True)
class WebhookDue:
    """A job whose webhooks may have something to send: the events already sent (or given
    up on), the failed attempts at the next one, and how many times the job has changed
    (so a change while a sender holds the entry is not slept through)."""

    job_id: int
    done: tuple[str, ...] = ()
    attempts: int = 0
    changes: int = 0
    # Where a store that shards by model keeps the entry; a job deleted since has no other.
    model: str = ""


class WebhookOutbox(Protocol):
    """The durable record of webhooks still to send, one entry per job that asked for them.

    ``submit`` writes a job's entry in the same atomic step as the job; a status change of
    the job makes its entry due at once (unless a failed attempt is waiting out its
    backoff). A sender claims due entries for ``hold_seconds``, so a sender that dies
    mid-delivery leaves its entries to be claimed again, and never loses one.
    """

    async def claim_webhooks(
        self, limit: int, hold_seconds: float, wait: float = 0.0
    ) -> list[WebhookDue]:
        """Up to ``limit`` due entries, held for this caller; waits up to ``wait`` s for a
        change to make one due."""
        ...

    async def settle_webhook(
        self, due: WebhookDue, retry_in: float | None, error: str | None = None
    ) -> None:
        """Record ``due`` (its ``done`` and ``attempts`` as they are now) and look at it
        again in ``retry_in`` s, or, with None, forget it: nothing more will be sent. With
        no failed attempt to back off from, a job that changed since the claim is due at
        once."""
        ...


class JobStore(WebhookOutbox, Protocol):
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
        """The job, durable and queued in ``queue_name`` (``ModelSpec.queue_name``; by
        default ``model``); ``QueueFull`` if ``max_queued`` jobs already wait.

        ``model`` is the public name the job records; every other method that names a model
        (``lease``, ``expire``, ``queue_depth``, ``abort_late``) takes its queue name.

        With ``idempotency``, a key this API key used in the last 24 h answers its first job
        (however many submissions race) or raises ``IdempotencyMismatch`` for another body.
        """
        ...

    async def replay(self, key_id: str, idempotency: Idempotency) -> Job | None:
        """The job (``replayed``) an earlier submission with this Idempotency-Key made in the
        last 24 h, ``IdempotencyMismatch`` if its body differed, or None: a retry is
        answered before its inputs are fetched again. ``submit`` still decides races."""
        ...

    async def cancel(self, job_id: int, reason: str) -> Job:
        """Cancel a queued or running job, unbilled; a running job's worker then loses its
        lease at its next heartbeat. Against a completion racing it exactly one wins, in one
        atomic step; a finished job raises ``JobFinished`` (an already cancelled one is
        returned as it is)."""
        ...

    async def abort_late(self, queue_name: str) -> int:
        """Cancel the queued jobs of ``queue_name`` whose Cancel-After deadline passed,
        unbilled; how many. Leasing does it too; gateways call this on a timer for queues no
        worker takes."""
        ...

    async def queue_position(self, job: Job) -> int:
        """How many of its queue's queued jobs go before ``job`` (0: next), without a scan."""
        ...

    async def get(self, job_id: int) -> Job:
        """The job, or ``JobNotFound``."""
        ...

    async def lease(self, models: list[str], worker_id: str, wait: float = 0.0) -> Job | None:
        """The oldest queued job of ``models`` (queue names), now in progress for ``worker_id``.

        Waits up to ``wait`` seconds for one to arrive; ``None`` if none did.
        """
        ...

    async def lease_batch(
        self,
        models: list[str],
        worker_id: str,
        max_jobs: int,
        wait: float = 0.0,
        key: str | None = None,
    ) -> list[Job]:
        """Up to ``max_jobs`` queued jobs of one of ``models`` that share a ``batch_key``,
        oldest first, each now in progress for ``worker_id``; ``[]`` if none arrived within
        ``wait`` seconds.

        Without ``key`` the oldest queued job leads and the rest share its key (a job whose
        key is ``None`` comes alone); with ``key`` only jobs of that key are taken, to grow
        a batch already leased. Looks at most ``BATCH_LOOKAHEAD`` jobs past the first.
        """
        ...

    async def heartbeat(self, job_id: int, worker_id: str, progress: int) -> None:
        """Renew the lease and record progress, or raise ``LeaseLost``."""
        ...

    async def complete(
        self, job_id: int, worker_id: str, result: JobResult, namespace: str = ""
    ) -> Job:
        """Complete and bill the job; ``namespace`` is its model's (the ImageModel's), for
        the usage record."""
        ...

    async def fail(self, job_id: int, worker_id: str, error: str) -> Job: ...

    async def wait_for_change(self, job_id: int, status: JobStatus, timeout: float) -> Job:
        """The job once its status is no longer ``status``, or as it is after ``timeout``."""
        ...

    async def release(self, worker_id: str) -> int:
        """Requeue every job ``worker_id`` holds, for a worker that restarts under the same id
        and knows its old leases are dead; returns how many."""
        ...

    async def queue_depth(self, model: str) -> QueueDepth: ...

    async def expire(self, model: str, queued_for: float, reason: str) -> int:
        """Reclaim ``model``'s lapsed leases, then fail every job of it that has been queued
        at least ``queued_for`` seconds (since it was submitted) with ``reason``, unbilled;
        returns how many failed. ``queued_for=0`` fails every queued job of the model."""
        ...

    async def finished_before(self, seconds_ago: float, limit: int = 100) -> list[Job]:
        """Up to ``limit`` jobs that finished at least ``seconds_ago`` seconds ago, oldest
        first: what a retention sweep deletes, once it has deleted their files."""
        ...

    async def delete(self, jobs: Sequence[Job]) -> None:
        """Forget these jobs (a later ``get`` raises ``JobNotFound``); their usage records
        stay, for billing. Deleting a job twice is no error, so sweeps may overlap."""
        ...

    async def usage(
        self, since: str = "", until: str | None = None, limit: int = 1000
    ) -> UsagePage:
        """Up to ``limit`` usage records after cursor ``since`` (``""``: the first) and not
        after cursor ``until``, in completion order; ``InvalidCursor`` for a foreign one."""
        ...

    async def usage_cursor_at(self, moment: datetime) -> str:
        """A cursor behind every record that finished at or after ``moment``: reading from
        it and filtering by ``finished_at`` selects a time range."""
        ...

    async def saved_cursor(self, name: str) -> str:
        """The cursor last saved under ``name`` (an exporter's progress), or ``""``."""
        ...

    async def save_cursor(self, name: str, cursor: str) -> None: ...

    async def saved_cursors(self) -> dict[str, str]:
        """Every saved cursor, by name: the exporters retention waits for."""
        ...

    async def forget_cursor(self, name: str) -> bool:
        """Drop the cursor saved as ``name`` (an exporter nobody runs any more), so retention
        stops waiting for it; False when none was saved under that name."""
        ...

    async def delivered_cursor(self) -> str:
        """The position every saved cursor has passed (the oldest of them, model by model),
        or ``""`` when none is saved: what retention may trim through, so no exporter loses
        a record that another has not read yet."""
        ...

    async def trim_usage(self, delivered: str, keep_seconds: float) -> int:
        """Delete the records at or before cursor ``delivered`` that finished more than
        ``keep_seconds`` ago; never a record after it. Returns how many went."""
        ...

    async def close(self) -> None: ...
