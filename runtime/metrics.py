"""Prometheus metrics. Usage counters here are for dashboards and alerts; the bill itself
is the durable usage ledger in the job store, which these numbers mirror.

Nothing here is labelled by key: who used what is the ledger's business, not a scraper's,
and a per-key label would also grow the series without bound."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

JOBS_SUBMITTED = Counter("tessera_jobs_submitted_total", "Jobs accepted by the API.", ["model"])
JOBS_FINISHED = Counter(
    "tessera_jobs_finished_total", "Jobs that reached a final status.", ["model", "status"]
)
PATCHES = Counter("tessera_patches_total", "16x16-pixel patches billed.", ["model"])
IMAGES = Counter("tessera_images_total", "Images delivered.", ["model"])
BILLED = Counter(
    "tessera_billed_usd_total",
    "Amount billed, in US dollars (approximate; see the ledger).",
    ["model"],
)
JOB_SECONDS = Histogram(
    "tessera_job_seconds",
    "Seconds a job spent waiting in the queue and running on a worker.",
    ["model", "phase"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
WEBHOOK_DELIVERIES = Counter(
    "tessera_webhook_deliveries_total",
    "Webhook attempts by outcome: delivered, failed (to be retried), abandoned (given up).",
    ["outcome"],
)
