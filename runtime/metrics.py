"""Prometheus metrics, named as Prometheus' conventions say (base units, ``_total`` for
counters). They are for dashboards and alerts; the bill itself is the usage ledger in the
job store, which the usage counters mirror (``increase(tessera_patches_total[...])`` over a
period equals the ledger's patches for it, give or take a process that died between
completing a job and counting it).

Nothing here is labelled by key: who used what is the ledger's business (``GET /v1/usage``),
not a scraper's, and a per-key label would also grow the series without bound. Labels are
the model and a small fixed set of outcomes, states or phases.

Who exports what: gateways count submissions and sample queue depth; workers (and
``tessera serve``, which is both) count outcomes, usage, time and busy seconds.
"""

from __future__ import annotations

import enum

from prometheus_client import Counter, Gauge, Histogram


class Outcome(enum.StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    # Still queued at the model's queue timeout: failed unbilled by a gateway.
    EXPIRED = "expired"
    # The worker lost its lease before it could complete; the job runs again elsewhere.
    LEASE_LOST = "lease_lost"
    # Cancelled by its client through the API (counted by the gateway that cancelled it).
    CANCELLED = "cancelled"


JOBS_SUBMITTED = Counter("tessera_jobs_submitted_total", "Jobs accepted by the API.", ["model"])
JOBS_FINISHED = Counter(
    "tessera_jobs_finished_total",
    "Jobs that ended on this process, by outcome"
    " (completed, failed, expired, lease_lost, cancelled).",
    ["model", "outcome"],
)
IMAGES = Counter("tessera_images_total", "Images delivered and billed.", ["model"])
PATCHES = Counter("tessera_patches_total", "16x16-pixel patches billed.", ["model"])
BILLED = Counter(
    "tessera_billed_usd_total",
    "Amount billed, in US dollars (a float mirror; the ledger holds the exact decimals).",
    ["model"],
)
QUEUE_JOBS = Gauge(
    "tessera_queue_jobs",
    "Jobs of a model waiting (queued) or running (in_progress), as a gateway last saw them.",
    ["model", "state"],
)
JOB_SECONDS = Histogram(
    "tessera_job_seconds",
    "Seconds a job spent waiting in the queue (phase=queue) and running (phase=run).",
    ["model", "phase"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
PIPELINE_SECONDS = Histogram(
    "tessera_pipeline_seconds",
    "Seconds the worker's pipeline thread spent in one pipeline call (step=call, once per"
    " call however many jobs it batched) and encoding one image (step=encode); a job's run"
    " time beyond them is hand-offs and store writes.",
    ["model", "step"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
WORKER_BUSY_SECONDS = Counter(
    "tessera_worker_busy_seconds_total",
    "Seconds a worker spent running jobs; its rate is the worker's utilisation.",
    ["model"],
)
BATCH_JOBS = Histogram(
    "tessera_batch_jobs",
    "Jobs run together in one pipeline call.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
WEBHOOK_DELIVERIES = Counter(
    "tessera_webhook_deliveries_total",
    "Webhook attempts by outcome: delivered, failed (to be retried), abandoned (given up).",
    ["outcome"],
)
