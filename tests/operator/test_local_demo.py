"""The closed loop on local nodes: ImageModel -> operator -> Deployment -> worker -> image.

``examples/demo-cpu.yaml`` is applied unchanged with the operator running (as its own
ServiceAccount); the worker pod the operator renders really starts on a local node (its
init container builds the demo pipeline, ``tessera worker`` loads it), turns Ready only
once the pipeline is loaded, and completes jobs submitted to the Redis queue it was
rendered with. Results land in the results claim, a hostPath volume on a test folder.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tessera.runtime.jobs import open_store
from tessera.runtime.jobs.base import Job, JobStatus, StorePolicy
from tests.cluster.fixtures import fresh_namespace
from tests.cluster.harness import Cluster
from tests.support.params import job_params
from tests.support.redis_server import RedisServer

from .process import (
    OperatorError,
    OperatorProcess,
    create_results_claim,
    install_crds,
    service_account_kubeconfig,
    wait_until,
)

pytestmark = pytest.mark.cluster

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "demo-cpu.yaml"
MODEL = "tessera-demo"
WORKERS = "tessera.dev/imagemodel=tessera-demo,app.kubernetes.io/component=worker"
PARAMS = job_params(prompt="a lighthouse", width=96, height=64, num_inference_steps=2, seed=7)


@pytest.fixture(scope="module")
def demo(
    local_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, RedisServer, Path, OperatorProcess]]:
    """The demo model applied in a fresh namespace, with its queue, results and operator."""
    work = tmp_path_factory.mktemp("local-demo")
    install_crds(local_cluster)
    redis = RedisServer(work / "redis").start()
    with fresh_namespace(local_cluster) as namespace:
        results = create_results_claim(local_cluster, namespace, work / "results")
        operator = OperatorProcess(
            service_account_kubeconfig(local_cluster, work / "kubeconfig.json"),
            work / "operator.log",
            namespaces=[namespace],
            env={"TESSERA_QUEUE_URL": redis.url},
        )
        try:
            operator.start()
        except OperatorError as error:
            redis.stop()
            pytest.fail(str(error), pytrace=False)
        local_cluster.kubectl("-n", namespace, "apply", "-f", str(EXAMPLE))
        try:
            yield namespace, redis, results, operator
        finally:
            operator.stop()
            redis.stop()


def worker_pod(cluster: Cluster, namespace: str) -> dict[str, Any] | None:
    pods = json.loads(
        cluster.kubectl("-n", namespace, "get", "pods", "-l", WORKERS, "-o", "json").stdout
    )["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    return live[0] if len(live) == 1 else None


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def readyz(pod: dict[str, Any]) -> int | None:
    """The worker's own answer on its pod address, or None while nothing listens."""
    address = pod["status"].get("podIP")
    if not address:
        return None
    try:
        return httpx.get(f"http://{address}:8080/readyz", timeout=2).status_code
    except httpx.TransportError:
        return None


def wait_ready_worker(
    cluster: Cluster, namespace: str, operator: OperatorProcess, timeout: float = 240
) -> tuple[dict[str, Any], list[int | None]]:
    """The Ready worker pod, and what its /readyz answered while it was not yet Ready.

    Each poll reads the pod first and asks the worker second: a pod already Ready whose
    worker then answers anything but 200 would mean Ready came before the pipeline.
    """
    answers_while_unready: list[int | None] = []

    def probe() -> dict[str, Any] | None:
        operator.check_alive()
        pod = worker_pod(cluster, namespace)
        if pod is None or pod["status"].get("phase") != "Running":
            return None
        answer = readyz(pod)
        if is_ready(pod):
            assert answer == 200, f"pod Ready while the worker answers {answer}"
            return pod
        answers_while_unready.append(answer)
        return None

    pod = wait_until(
        "a Ready worker pod", probe, timeout, explain=lambda: _explain(cluster, namespace)
    )
    return pod, answers_while_unready


def _explain(cluster: Cluster, namespace: str) -> str:
    pod = worker_pod(cluster, namespace) or {}
    parts = [json.dumps(pod.get("status"))[:2500]]
    for log in sorted(cluster.workdir.glob(f"local-nodes/*/pods/{namespace}/*/logs/*.log")):
        parts.append(f"--- {log}:\n{log.read_text(errors='replace')[-2500:]}")
    return "\n".join(parts)


def run_job(
    redis: RedisServer, namespace: str, kill: int | None = None, timeout: float = 150
) -> Job:
    """Submit one job to the model's queue (``namespace/name``, as the gateway does) and wait
    until it finishes (``kill``: SIGKILL that pid right after submitting)."""

    async def go() -> Job:
        store = open_store(redis.url, StorePolicy())
        try:
            key_id = f"key_{uuid.uuid4().hex[:6]}"
            job = await store.submit(MODEL, key_id, PARAMS, queue_name=f"{namespace}/{MODEL}")
            if kill is not None:
                os.kill(kill, signal.SIGKILL)
            async with asyncio.timeout(timeout):
                while not job.status.finished:
                    job = await store.wait_for_change(job.id, job.status, timeout)
            return job
        finally:
            await store.close()

    return asyncio.run(go())


def test_the_demo_worker_really_runs_and_completes_a_job(
    local_cluster: Cluster, demo: tuple[str, RedisServer, Path, OperatorProcess]
) -> None:
    namespace, redis, results, operator = demo
    pod, unready_answers = wait_ready_worker(local_cluster, namespace, operator)
    # Seen while the pod was Running but unready: the worker still loading (503) or not
    # yet listening (None).
    assert any(answer != 200 for answer in unready_answers), unready_answers
    init = pod["status"]["initContainerStatuses"][0]
    assert (init["name"], init["state"]["terminated"]["exitCode"]) == ("demo-weights", 0)

    job = run_job(redis, namespace)
    assert job.status is JobStatus.COMPLETED, job.error
    assert job.result is not None
    image = Image.open(io.BytesIO((results / job.result.images[0].key).read_bytes()))
    assert image.size == (96, 64)

    def status() -> dict[str, Any]:
        answer = local_cluster.kubectl("-n", namespace, "get", "im", MODEL, "-o", "json")
        return dict(json.loads(answer.stdout)["status"])

    # The operator writes status from the Deployment it watches, a moment after the pod.
    wait_until(
        "the ImageModel to count its ready worker",
        lambda: status().get("readyReplicas") == 1,
        explain=lambda: json.dumps(status()),
    )


def test_a_worker_killed_with_sigkill_is_restarted_and_its_job_completes(
    local_cluster: Cluster, demo: tuple[str, RedisServer, Path, OperatorProcess]
) -> None:
    namespace, redis, results, operator = demo
    pod, _ = wait_ready_worker(local_cluster, namespace, operator)
    worker = pod["status"]["containerStatuses"][0]
    pid = int(worker["containerID"].removeprefix("local://"))

    job = run_job(redis, namespace, kill=pid)

    assert job.status is JobStatus.COMPLETED, job.error
    assert job.result is not None
    assert (results / job.result.images[0].key).is_file()
    after = worker_pod(local_cluster, namespace)
    assert after is not None and after["metadata"]["uid"] == pod["metadata"]["uid"]
    restarted = after["status"]["containerStatuses"][0]
    assert restarted["restartCount"] == worker["restartCount"] + 1
    assert restarted["lastState"]["terminated"]["exitCode"] == 137
    assert restarted["containerID"] != worker["containerID"]
