"""``tessera gateway`` with no --models, on a real control plane: it serves the ImageModels
of its cluster, as its own ServiceAccount (crds/gateway-rbac.yaml) allows."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tessera.runtime.imagemodel import API_VERSION, KIND
from tessera.runtime.jobs.redis import RedisJobStore
from tests.api.helpers import FAST, assert_error, submit, wait
from tests.cluster.harness import Cluster
from tests.operator.process import CRDS, install_crds, service_account_kubeconfig, wait_until
from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(kube_cluster: Cluster) -> Cluster:
    install_crds(kube_cluster)
    kube_cluster.kubectl("apply", "--server-side", "-f", str(CRDS / "gateway-rbac.yaml"))
    return kube_cluster


@pytest.fixture(scope="module")
def gateway(
    cluster: Cluster, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("cluster-gateway")
    kubeconfig = service_account_kubeconfig(cluster, work / "kubeconfig.json", "tessera-gateway")
    storage = f"file://{work / 'storage'}"
    server = ServerProcess(
        work,
        command=("gateway", "--queue", redis_server.url, "--storage", storage),
        env={"KUBECONFIG": str(kubeconfig), "TESSERA_SIGNING_SECRET": "cluster-test"},
    ).start(ready_timeout=60)
    yield server
    server.stop()
    assert "Forbidden" not in server.log(), server.log()[-3000:]


def manifest(name: str, namespace: str, **spec: Any) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"weights": {"demo": {}}, "gpu": {"count": 0}, **spec},
        }
    )


def listed(server: ServerProcess) -> dict[str, dict[str, Any]]:
    with server.client() as client:
        models = client.get("/base_models").json()["models"]
    return {model["model_name"]: model for model in models}


def served_condition(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    result = cluster.kubectl("-n", namespace, "get", "imagemodel", name, "-o", "json")
    conditions = json.loads(result.stdout).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == "Served"), None)


def test_a_model_applied_is_served_within_two_seconds_and_a_deleted_one_fails_its_jobs(
    cluster: Cluster, gateway: ServerProcess, kube_namespace: str
) -> None:
    name = f"m-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("apply", "-f", "-", input=manifest(name, kube_namespace, description="new"))
    applied = time.monotonic()
    wait_until(f"{name} in the model list", lambda: name in listed(gateway) or None, 10)
    assert time.monotonic() - applied < 2
    assert listed(gateway)[name]["description"] == "new"
    condition = wait_until(
        "the Served condition", lambda: served_condition(cluster, kube_namespace, name), 10
    )
    assert (condition["status"], condition["reason"]) == ("True", "Served")

    with gateway.client() as client:
        job_id = submit(client, {"model": name, "prompt": "nobody runs me", **FAST})
        cluster.kubectl("-n", kube_namespace, "delete", "imagemodel", name)
        task = wait(client, job_id, timeout=30)
        assert task["status"] == "failed"
        assert task["error"]["message"].startswith(f"model {name!r} was removed")
        assert name not in listed(gateway)
        assert_error(client.post("/images/generations", json={"model": name, "prompt": "p"}), 404)


def queued(redis: RedisServer, queue_names: tuple[str, ...]) -> list[int]:
    """How many jobs wait in each queue, read as the autoscaler reads them."""

    async def read() -> list[int]:
        store = RedisJobStore(redis.url)
        try:
            depths = await store.queue_depths(queue_names)
        finally:
            await store.close()
        return [depths[name].queued for name in queue_names]

    return asyncio.run(read())


def test_of_two_claims_on_one_name_the_older_is_served(
    cluster: Cluster, gateway: ServerProcess, kube_namespace: str, redis_server: RedisServer
) -> None:
    other = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", other)
    try:
        public = f"shared-{uuid.uuid4().hex[:6]}"
        first = manifest("first", kube_namespace, modelName=public, description="the first")
        cluster.kubectl("apply", "-f", "-", input=first)
        wait_until("the first claim served", lambda: public in listed(gateway) or None, 10)
        # Creation timestamps have one-second resolution: make the second claim later.
        time.sleep(1.1)
        second = manifest("second", other, modelName=public, description="the second")
        cluster.kubectl("apply", "-f", "-", input=second)
        refused = wait_until(
            "the second claim's Served condition",
            lambda: served_condition(cluster, other, "second"),
            10,
        )
        assert (refused["status"], refused["reason"]) == ("False", "NameTaken")
        assert f"already served by ImageModel {kube_namespace}/first" in refused["message"]
        assert listed(gateway)[public]["description"] == "the first"
        # Jobs for the name wait in the queue of the resource that holds it, named as the
        # operator tells its workers (--queue-name) and the autoscaler reads it.
        queues = (f"{kube_namespace}/first", f"{other}/second")
        with gateway.client() as client:
            first_job = submit(client, {"model": public, "prompt": "for the first", **FAST})
        assert queued(redis_server, queues) == [1, 0]
        # The older claim goes: the newer one takes the name over, with a queue of its own;
        # the job left in the first's queue fails, since no worker of the first remains.
        cluster.kubectl("-n", kube_namespace, "delete", "imagemodel", "first")
        wait_until(
            "the second claim served",
            lambda: listed(gateway).get(public, {}).get("description") == "the second" or None,
            10,
        )
        with gateway.client() as client:
            task = wait(client, first_job, timeout=30)
            assert task["status"] == "failed"
            assert task["error"]["message"].startswith(f"model {public!r} was removed")
            submit(client, {"model": public, "prompt": "for the second", **FAST})
        assert queued(redis_server, queues) == [0, 1]
        wait_until(
            "the second claim's Served=True",
            lambda: (
                (served_condition(cluster, other, "second") or {}).get("status") == "True" or None
            ),
            10,
        )
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)
