"""The closed loop from zero, on local nodes: gateway -> Redis -> operator -> pod -> image.

The CPU demo model is applied at zero replicas; a job submitted through ``tessera gateway``
(which reads the cluster's ImageModels as its own ServiceAccount and writes only to Redis)
wakes the operator, which scales the worker Deployment within a second; a real
``tessera worker`` starts on a local node, loads the pipeline and completes the job; the
model's status shows what that cold start cost, and the model goes back to zero once idle.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.api.helpers import FAST, submit, wait
from tests.cluster.fixtures import fresh_namespace
from tests.cluster.harness import Cluster
from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess

from .process import (
    CRDS,
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
DELAY = 5


def seconds(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def loop(
    local_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, OperatorProcess, ServerProcess]]:
    work = tmp_path_factory.mktemp("autoscale-local")
    install_crds(local_cluster)
    local_cluster.kubectl("apply", "--server-side", "-f", str(CRDS / "gateway-rbac.yaml"))
    redis = RedisServer(work / "redis").start()
    with fresh_namespace(local_cluster) as namespace:
        # The workers write results into the claim's folder; the gateway serves that folder.
        results = create_results_claim(local_cluster, namespace, work / "results")
        operator = OperatorProcess(
            service_account_kubeconfig(local_cluster, work / "operator.json"),
            work / "operator.log",
            namespaces=[namespace],
            env={"TESSERA_QUEUE_URL": redis.url},
        )
        gateway = ServerProcess(
            work / "gateway",
            command=("gateway", "--queue", redis.url, "--storage", f"file://{results}"),
            env={
                "KUBECONFIG": str(
                    service_account_kubeconfig(
                        local_cluster, work / "gateway.json", "tessera-gateway"
                    )
                ),
                "TESSERA_SIGNING_SECRET": "local-loop",
            },
        )
        try:
            operator.start()
            # A submit before the autoscaler subscribes would be found by a sweep, not heard.
            wait_until(
                "the autoscaler to subscribe to the queues' events",
                lambda: redis.pattern_subscribers() > 0,
            )
            gateway.start(ready_timeout=90)
        except (OperatorError, AssertionError) as error:
            operator.stop()
            gateway.stop()
            redis.stop()
            pytest.fail(str(error), pytrace=False)
        body = yaml.safe_load(EXAMPLE.read_text())
        body["spec"]["scaling"] = {
            "minReplicas": 0,
            "maxReplicas": 2,
            "scaleDownDelaySeconds": DELAY,
        }
        local_cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(body))
        try:
            yield namespace, operator, gateway
        finally:
            gateway.stop()
            operator.stop()
            redis.stop()


def get(cluster: Cluster, namespace: str, *what: str) -> Any:
    result = cluster.kubectl("-n", namespace, "get", *what, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def autoscaling(cluster: Cluster, namespace: str) -> dict[str, Any]:
    obj = get(cluster, namespace, "imagemodel", MODEL) or {}
    return (obj.get("status") or {}).get("autoscaling") or {}  # type: ignore[no-any-return]


def replicas(cluster: Cluster, namespace: str) -> int | None:
    deployment = get(cluster, namespace, "deployment", MODEL)
    return None if deployment is None else int(deployment["spec"].get("replicas") or 0)


def test_from_zero_to_an_image_and_back_to_zero(
    local_cluster: Cluster, loop: tuple[str, OperatorProcess, ServerProcess]
) -> None:
    namespace, operator, gateway = loop

    def explain() -> str:
        pods = local_cluster.kubectl("-n", namespace, "get", "pods", "-o", "wide", check=False)
        return f"{autoscaling(local_cluster, namespace)}\n{pods.stdout}\n{operator.tail(30)}"

    wait_until("the model at zero replicas", lambda: replicas(local_cluster, namespace) == 0)
    with gateway.client() as client:
        wait_until(
            "the model served by the gateway",
            lambda: MODEL in {m["model_name"] for m in client.get("/base_models").json()["models"]},
            timeout=30,
        )
        submitted = time.time()
        job_id = submit(client, {"model": MODEL, "prompt": "a lighthouse", **FAST})
        status = wait_until(
            "a scale-up decision",
            lambda: (s := autoscaling(local_cluster, namespace)).get("lastScaleTime") and s,
            timeout=10,
            explain=explain,
        )
        decided = seconds(status["lastScaleTime"]) - submitted
        print(f"submit -> scale decision: {decided:.3f} s")
        # Heard as the submit happened, not found by the sweep (the speed is bench material).
        assert status["lastDecision"]["trigger"] == "QueueEvent", status
        assert status["lastDecision"]["message"] == "Scaled 0 -> 1: 1 job in backlog, 4 per replica"

        task = wait(client, job_id, timeout=240)
        assert task["status"] == "completed", task
        finished = time.time()

    cold = wait_until(
        "the cold start in status",
        lambda: (
            (c := autoscaling(local_cluster, namespace).get("coldStart", {})).get(
                "firstImageSeconds"
            )
            and c
        ),
        timeout=15,
        explain=explain,
    )
    print(f"cold start from zero: {cold}")
    milestones = ("scheduledSeconds", "startedSeconds", "loadedSeconds", "firstImageSeconds")
    assert [cold[m] for m in milestones] == sorted(cold[m] for m in milestones), cold
    assert cold["firstImageSeconds"] <= finished - submitted + 1
    assert cold["importSeconds"] > 0 and cold["pipelineSeconds"] > 0

    wait_until(
        "back to zero replicas",
        lambda: replicas(local_cluster, namespace) == 0,
        timeout=DELAY + 30,
        explain=explain,
    )
    status = autoscaling(local_cluster, namespace)
    assert status["lastDecision"]["reason"] == "ScaledToZero"
    # Not before the window had passed since the job finished (its replica was busy).
    assert seconds(status["lastScaleTime"]) >= finished + DELAY - 1.5
