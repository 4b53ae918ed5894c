"""A real Prometheus scrapes a gateway and two workers: what PromQL sums is what the ledger
holds, model by model."""

from __future__ import annotations

import asyncio
import base64
import subprocess
from collections import Counter
from decimal import Decimal
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tessera.runtime.jobs.base import UsageRecord
from tessera.runtime.jobs.redis import RedisJobStore
from tests.api.helpers import FAST, png_bytes, submit, wait
from tests.store.conftest import read_all
from tests.support.gateway import GatewayDeployment
from tests.support.prometheus import PrometheusServer, promtool
from tests.support.waiting import wait_until

SOURCE = "data:image/png;base64," + base64.b64encode(png_bytes(96, 64)).decode()


def ledger(deployment: GatewayDeployment) -> list[UsageRecord]:
    async def read() -> list[UsageRecord]:
        store = RedisJobStore(deployment.redis.url)
        try:
            return await read_all(store)
        finally:
            await store.close()

    return asyncio.run(read())


def test_promql_sums_equal_the_ledger(usage_deployment: GatewayDeployment, tmp_path: Path) -> None:
    deployment = usage_deployment
    prometheus = PrometheusServer(tmp_path / "prometheus", deployment.metrics_urls).start()
    try:
        alpha = deployment.client(deployment.keys[0])
        bravo = deployment.client(deployment.keys[1])
        with alpha, bravo:
            jobs = []
            for (width, height), count in [((64, 48), 1), ((100, 60), 2), ((128, 128), 1)]:
                size = {"width": width, "height": height}
                body = {"model": "tessera-demo", "prompt": "p", "num_images": count, **FAST}
                jobs.append((alpha, submit(alpha, body | {"image_size": size})))
            for _ in range(2):
                body = {"model": "tessera-demo-edit", "prompt": "p", "image_url": SOURCE}
                body |= {"image_size": "96x64", "num_inference_steps": 2}
                jobs.append((bravo, submit(bravo, body, "/images/edits")))
            tasks = [wait(client, job_id) for client, job_id in jobs]
        assert all(task["status"] == "completed" for task in tasks), tasks
        records = ledger(deployment)
        assert sorted(r.job_id for r in records) == sorted(job_id for _, job_id in jobs)

        prometheus.wait_for_fresh_scrapes()
        patches: Counter[str] = Counter()
        images: Counter[str] = Counter()
        amount: dict[str, Decimal] = {}
        for record in records:
            patches[record.model] += record.patches
            images[record.model] += record.images
            amount[record.model] = amount.get(record.model, Decimal(0)) + record.amount
        assert prometheus.by_label("sum by (model) (tessera_patches_total)", "model") == patches
        assert prometheus.by_label("sum by (model) (tessera_images_total)", "model") == images
        completed = prometheus.by_label(
            'sum by (model) (tessera_jobs_finished_total{outcome="completed"})', "model"
        )
        assert completed == Counter(record.model for record in records)
        spend = prometheus.by_label("sum by (model) (tessera_billed_usd_total)", "model")
        assert spend.keys() == amount.keys()
        for model, total in amount.items():
            assert abs(Decimal(str(spend[model])) - total) <= total * Decimal("1e-12")
        # The gateway samples queue depth every second; nothing is left waiting.
        wait_until(
            "empty queues in Prometheus",
            lambda: (
                prometheus.by_label("sum by (model) (tessera_queue_jobs)", "model")
                == {"tessera-demo": 0, "tessera-demo-edit": 0}
            ),
            timeout=30,
        )
        runs = prometheus.by_label(
            'sum by (model) (tessera_job_seconds_count{phase="run"})', "model"
        )
        assert runs == completed
        waits = prometheus.by_label(
            'sum by (model) (tessera_job_seconds_count{phase="queue"})', "model"
        )
        assert waits == completed, "each job's queue wait observed once (none ran again)"
        busy = prometheus.by_label("sum by (model) (tessera_worker_busy_seconds_total)", "model")
        assert busy.keys() == patches.keys() and all(seconds > 0 for seconds in busy.values())
    finally:
        prometheus.stop()


def test_every_series_is_named_as_prometheus_says(usage_deployment: GatewayDeployment) -> None:
    """promtool's own lint (units, ``_total`` on counters, ...) on what the gateway and both
    workers serve after the workload above, and no key or key id anywhere in it."""
    lint = promtool()
    key_ids = {record.key_id for record in ledger(usage_deployment)}
    assert key_ids, "the workload above billed someone"
    seen: set[str] = set()
    for url in usage_deployment.metrics_urls:
        text = httpx.get(url, timeout=10).text
        checked = subprocess.run(
            [str(lint), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
        )
        assert (checked.returncode, checked.stdout + checked.stderr) == (0, ""), url
        families = [f for f in text_string_to_metric_families(text) if f.name.startswith("tessera")]
        labels = {label for family in families for s in family.samples for label in s.labels}
        assert not any("key" in label for label in labels), (url, labels)
        assert not any(secret in text for secret in [*usage_deployment.keys, *key_ids]), url
        seen |= {family.name for family in families}
    assert {"tessera_patches", "tessera_jobs_finished", "tessera_job_seconds"} <= seen
