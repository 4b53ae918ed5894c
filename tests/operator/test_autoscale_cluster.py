"""The autoscaler on a real control plane with simulated H100 nodes and a real redis-server.

The operator runs as its own ServiceAccount with ``TESSERA_QUEUE_URL`` pointing at the
test's Redis; jobs are submitted to, leased from and failed in that Redis with the job
store's own calls, as the gateway and the workers make them. KWOK makes scheduled pods
Running and Ready but runs nothing, so here a "running job" is one leased by the test.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tessera.runtime.jobs.base import Job
from tessera.runtime.jobs.redis import RedisJobStore
from tests.cluster.fixtures import fresh_namespace
from tests.cluster.harness import Cluster
from tests.support.params import job_params
from tests.support.redis_server import RedisServer
from tests.support.server import free_port

from .process import (
    OperatorProcess,
    create_results_claim,
    install_crds,
    running_operator,
    wait_until,
)

pytestmark = pytest.mark.cluster

PARAMS = job_params(prompt="p")
T = TypeVar("T")


@pytest.fixture(scope="module")
def cluster(kube_cluster: Cluster) -> Cluster:
    install_crds(kube_cluster)
    return kube_cluster


@pytest.fixture(scope="module")
def namespace(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fresh_namespace(cluster) as name:
        create_results_claim(cluster, name, tmp_path_factory.mktemp("results"))
        yield name


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster,
    namespace: str,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    work = tmp_path_factory.mktemp("operator")
    env = {
        "TESSERA_QUEUE_URL": redis_server.url,
        "TESSERA_OPERATOR_METRICS_PORT": str(free_port()),
    }
    before = redis_server.pattern_subscribers()
    with running_operator(cluster, namespace, work, env) as process:
        # A submit before the autoscaler subscribes would be found by a sweep, not heard.
        wait_until(
            "the autoscaler to subscribe to the queues' events",
            lambda: redis_server.pattern_subscribers() > before,
        )
        yield process


def store_call(redis: RedisServer, call: Callable[[RedisJobStore], Awaitable[T]]) -> T:
    async def go() -> T:
        store = RedisJobStore(redis.url)
        try:
            return await call(store)
        finally:
            await store.close()

    return asyncio.run(go())


def submit(redis: RedisServer, queue: str, count: int = 1) -> float:
    """Submit ``count`` jobs to ``queue`` (an ImageModel's ``namespace/name``, as the gateway
    does); the wall-clock time of the first submission."""

    async def go(store: RedisJobStore) -> float:
        started = time.time()
        for _ in range(count):
            await store.submit(queue.rpartition("/")[2], "key_test", PARAMS, queue_name=queue)
        return started

    return store_call(redis, go)


def lease(redis: RedisServer, queue: str) -> Job:
    """Take one job as a worker would: it is in progress until failed or completed."""

    async def go(store: RedisJobStore) -> Job:
        job = await store.lease([queue], "test-worker")
        assert job is not None
        return job

    return store_call(redis, go)


def get(cluster: Cluster, namespace: str, *what: str) -> Any:
    result = cluster.kubectl("-n", namespace, "get", *what, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def autoscaling(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    obj = get(cluster, namespace, "imagemodel", name) or {}
    return (obj.get("status") or {}).get("autoscaling") or {}  # type: ignore[no-any-return]


def scaled_events(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    """The autoscaler's events on the model, oldest first."""
    events = get(cluster, namespace, "events", "--field-selector", f"involvedObject.name={name}")
    found = [
        e
        for e in (events or {}).get("items", [])
        if e["involvedObject"]["kind"] == "ImageModel" and e["message"].startswith("Scaled ")
    ]
    # resourceVersions are etcd revisions here: they order creations (timestamps are seconds).
    return sorted(found, key=lambda e: int(e["metadata"]["resourceVersion"]))


def seconds(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def model(name: str, namespace: str, **scaling: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tessera.dev/v1alpha1",
        "kind": "ImageModel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "weights": {"demo": {}},
            "scaling": {"minReplicas": 0, "maxReplicas": 4, **scaling},
        },
    }


def wait_replicas(
    cluster: Cluster,
    namespace: str,
    name: str,
    replicas: int,
    operator: OperatorProcess,
    timeout: float = 30,
) -> dict[str, Any]:
    """The model's status.autoscaling once the Deployment asks for ``replicas``."""

    def probe() -> dict[str, Any] | None:
        operator.check_alive()
        deployment = get(cluster, namespace, "deployment", name)
        if deployment and deployment["spec"].get("replicas") == replicas:
            return autoscaling(cluster, namespace, name)
        return None

    def explain() -> str:
        events = [e["message"] for e in scaled_events(cluster, namespace, name)]
        return f"{autoscaling(cluster, namespace, name)}\n{events}\n{operator.tail(30)}"

    return wait_until(f"{name} at {replicas} replicas", probe, timeout, explain)


def test_from_zero_in_a_second_and_back_to_zero_but_never_under_a_running_job(
    cluster: Cluster, namespace: str, operator: OperatorProcess, redis_server: RedisServer
) -> None:
    for name in ("busy", "idle"):
        cluster.apply(model(name, namespace, scaleDownDelaySeconds=3))
        wait_replicas(cluster, namespace, name, 0, operator)

    submitted = {name: submit(redis_server, f"{namespace}/{name}") for name in ("busy", "idle")}
    for name, at in submitted.items():
        status = wait_replicas(cluster, namespace, name, 1, operator)
        took = seconds(status["lastScaleTime"]) - at
        print(f"{name}: submit -> scale decision {took:.3f} s")
        # Heard as the submit happened, not found by the sweep (the speed is bench material).
        assert status["lastDecision"]["trigger"] == "QueueEvent", status
        assert status["lastDecision"]["message"] == "Scaled 0 -> 1: 1 job in backlog, 4 per replica"

    # A burst: 12 jobs at 4 a replica is 3.
    submit(redis_server, f"{namespace}/busy", 11)
    wait_replicas(cluster, namespace, "busy", 3, operator)

    # busy: one job stays in progress; the rest of both queues fails.
    running = lease(redis_server, f"{namespace}/busy")
    for name in ("busy", "idle"):
        queue = f"{namespace}/{name}"
        store_call(redis_server, lambda s, q=queue: s.expire(q, 0, "cancelled by the test"))
    status = wait_replicas(cluster, namespace, "idle", 0, operator)
    assert status["lastDecision"]["reason"] == "ScaledToZero"
    # The same window has passed for busy: down to the one replica its job needs, not zero.
    busy = wait_replicas(cluster, namespace, "busy", 1, operator)
    assert (busy["queued"], busy["inProgress"]) == (0, 1)
    messages = [e["message"] for e in scaled_events(cluster, namespace, "busy")]
    # The 11 submissions are separate writes: the autoscaler may wake between them.
    assert messages[0] == "Scaled 0 -> 1: 1 job in backlog, 4 per replica"
    # Three replicas from 9 jobs on: the last scale-up saw between 9 and 12.
    burst = r"Scaled [12] -> 3: (9|1[0-2]) jobs in backlog, 4 per replica"
    assert re.fullmatch(burst, messages[-2]), messages
    assert messages[-1] == (
        "Scaled 3 -> 1: 1 job in backlog, 4 per replica; 1 is the most wanted in the last 3 s"
    )

    finished = time.time()
    store_call(redis_server, lambda s: s.fail(running.id, "test-worker", "done"))
    status = wait_replicas(cluster, namespace, "busy", 0, operator)
    assert seconds(status["lastScaleTime"]) - finished >= 3.0
    assert "no jobs in the last 3 s" in status["lastDecision"]["message"]


def test_the_decision_state_survives_an_operator_restart(
    cluster: Cluster, namespace: str, operator: OperatorProcess, redis_server: RedisServer
) -> None:
    delay = 20
    cluster.apply(model("steady", namespace, scaleDownDelaySeconds=delay))
    wait_replicas(cluster, namespace, "steady", 0, operator)
    submit(redis_server, f"{namespace}/steady", 8)
    wait_replicas(cluster, namespace, "steady", 2, operator)
    store_call(redis_server, lambda s: s.expire(f"{namespace}/steady", 0, "cancelled by the test"))
    emptied = time.time()
    wait_until(
        "the empty queue in status",
        lambda: autoscaling(cluster, namespace, "steady").get("queued") == 0,
        timeout=10,
    )

    before = [e["message"] for e in scaled_events(cluster, namespace, "steady")]
    # The 8 submissions are separate writes: the autoscaler may wake between them.
    assert " -> 2: " in before[-1], before
    operator.stop()
    time.sleep(delay / 2)  # half the window passes with no operator at all
    operator.start()
    restarted = time.time()

    status = wait_replicas(cluster, namespace, "steady", 0, operator, timeout=delay * 2)
    # The window ran from the last demand, across the restart, not afresh from the restart
    # (which would end it ``delay`` after the restart); a slow restart decides at once.
    gone = seconds(status["lastScaleTime"])
    due = max(emptied + delay, restarted)
    assert emptied + delay - 1 <= gone < due + 6, (gone - emptied, restarted - emptied, status)
    # Nothing re-decided by the new operator: one event, the scale to zero.
    after = [e["message"] for e in scaled_events(cluster, namespace, "steady")]
    assert after == [
        *before,
        f"Scaled 2 -> 0: no jobs in the last {delay} s; releasing every GPU",
    ]


def worker_pod(cluster: Cluster, namespace: str, name: str, not_: str = "") -> str:
    """The name of the model's worker pod (another than ``not_``), once there is one."""

    def probe() -> str | None:
        pods = get(cluster, namespace, "pods", "-l", f"tessera.dev/imagemodel={name}") or {}
        names = [p["metadata"]["name"] for p in pods.get("items", [])]
        return next((n for n in names if n != not_), None)

    return wait_until(f"a worker pod of {name}", probe, timeout=30)


def record_start(redis: RedisServer, queue: str, pod: str, decided: float, *phases: str) -> None:
    """Record a worker's start-up as ``tessera worker`` does, each phase one second after
    the one before, from the scale-up decision."""
    record = {phase: decided + i for i, phase in enumerate(phases, start=1)}
    record |= {"importSeconds": 0.5, "pipelineSeconds": 0.25}
    store_call(redis, lambda s: s.record_start(queue, pod, record))


def test_each_cold_start_is_reported_whole_and_replaces_the_last(
    cluster: Cluster, namespace: str, operator: OperatorProcess, redis_server: RedisServer
) -> None:
    queue = f"{namespace}/cold"
    cluster.apply(model("cold", namespace, scaleDownDelaySeconds=2))
    wait_replicas(cluster, namespace, "cold", 0, operator)

    def cold_start(pod: str, *fields: str) -> dict[str, Any]:
        return wait_until(
            f"the cold start of {pod} with {fields}",
            lambda: (
                (c := autoscaling(cluster, namespace, "cold").get("coldStart") or {})
                and c["pod"] == pod
                and all(f in c for f in fields)
                and c
            ),
            timeout=15,
            explain=lambda: f"{autoscaling(cluster, namespace, 'cold')}\n{operator.tail(20)}",
        )

    submit(redis_server, queue)
    decided = seconds(wait_replicas(cluster, namespace, "cold", 1, operator)["lastScaleTime"])
    first = worker_pod(cluster, namespace, "cold")
    # The whole start-up at once, then a queue event: the measurement ends on a pass that
    # has no other reason to write the status, and is written all the same.
    record_start(redis_server, queue, first, decided, "started", "loaded", "firstImage")
    submit(redis_server, queue)
    cold = cold_start(first, "firstImageSeconds")
    expected = {"startedSeconds": 1.0, "loadedSeconds": 2.0, "firstImageSeconds": 3.0}
    assert {k: cold[k] for k in expected} == expected, cold
    assert (cold["importSeconds"], cold["pipelineSeconds"]) == (0.5, 0.25)

    store_call(redis_server, lambda s: s.expire(queue, 0, "cancelled by the test"))
    wait_replicas(cluster, namespace, "cold", 0, operator)
    submit(redis_server, queue)
    decided = seconds(wait_replicas(cluster, namespace, "cold", 1, operator)["lastScaleTime"])
    second = worker_pod(cluster, namespace, "cold", not_=first)
    record_start(redis_server, queue, second, decided, "started", "loaded")
    # The new pod's milestones so far, none of the last cold start's left over.
    cold = cold_start(second, "loadedSeconds")
    assert "firstImageSeconds" not in cold, cold
    record_start(redis_server, queue, second, decided, "started", "loaded", "firstImage")
    submit(redis_server, queue)
    assert cold_start(second, "firstImageSeconds")["firstImageSeconds"] == 3.0


@pytest.fixture
def pool_node(cluster: Cluster, namespace: str) -> Iterator[str]:
    """One more 8-GPU node, removed afterwards: later modules count the cluster's GPUs."""
    node = cluster.add_nodes(gpu_nodes=1, prefix=f"{namespace}-pool")[0]
    yield node
    cluster.kubectl("delete", "node", node, "--wait=false", check=False)


def test_a_gpu_shortage_is_explained_and_does_not_run_away(
    cluster: Cluster,
    namespace: str,
    operator: OperatorProcess,
    redis_server: RedisServer,
    pool_node: str,
) -> None:
    """One 8-GPU node and 4 GPUs a replica: 2 replicas fit, whatever the queue says."""
    node = pool_node
    body = model("big", namespace, maxReplicas=10, capacityWaitSeconds=6)
    body["spec"]["gpu"] = {"count": 4, "nodeSelector": {"kubernetes.io/hostname": node}}
    cluster.apply(body)
    wait_replicas(cluster, namespace, "big", 0, operator)

    submit(redis_server, f"{namespace}/big", 24)
    wait_replicas(cluster, namespace, "big", 6, operator)

    def waiting() -> dict[str, Any] | None:
        status = autoscaling(cluster, namespace, "big")
        return status if status.get("unschedulableReplicas") == 4 else None

    status = wait_until("4 replicas Pending in status", waiting, timeout=20)
    assert status["lastDecision"]["reason"] == "WaitingForCapacity"
    assert "4 of 6 replicas Pending with no node since" in status["lastDecision"]["message"]
    table = cluster.kubectl("-n", namespace, "get", "im", "big", "-o", "wide").stdout.split("\n")
    shown = dict(zip(table[0].split(), table[1].split(), strict=False))
    assert (shown["PENDING"], shown["DESIRED"]) == ("4", "6"), table
    # More work arrives: the request does not grow while replicas wait for a node.
    submit(redis_server, f"{namespace}/big", 16)
    wait_until(
        "40 jobs in status",
        lambda: autoscaling(cluster, namespace, "big").get("queued") == 40,
        timeout=10,
    )
    assert get(cluster, namespace, "deployment", "big")["spec"]["replicas"] == 6

    # After capacityWaitSeconds: only what fits; then one try for more per wait.
    status = wait_replicas(cluster, namespace, "big", 2, operator, timeout=30)
    assert status["lastDecision"]["reason"] == "CapacityExhausted"
    ups = len(scaled_events(cluster, namespace, "big")) - 1
    started = time.time()
    wait_until(
        "a second try and a second give-up",
        lambda: len(scaled_events(cluster, namespace, "big")) >= ups + 3,
        timeout=40,
    )
    elapsed = time.time() - started
    messages = [e["message"] for e in scaled_events(cluster, namespace, "big")]
    # The 24 submissions are separate writes: the autoscaler may wake between them, and
    # reach 6 replicas on any backlog from 21 (ceil(21 / 4) = 6) before the last arrive.
    assert re.fullmatch(
        r"Scaled \d -> 6: 2[1-4] jobs in backlog, 4 per replica", messages[ups - 1]
    ), messages
    assert messages[ups].startswith("Scaled 6 -> 2: 4 of 6 replicas Pending with no node")
    assert messages[ups + 1] == "Scaled 2 -> 10: 40 jobs in backlog, 4 per replica"
    assert messages[ups + 2].startswith("Scaled 10 -> 2: 8 of 10 replicas Pending with no node")
    # No runaway: one try and one give-up per capacityWaitSeconds at most.
    assert len(messages) - ups <= 1 + 2 * (elapsed // 6 + 1), messages
    warnings = get(
        cluster, namespace, "events", "--field-selector", "involvedObject.name=big,type=Warning"
    )
    reasons = {e["reason"] for e in warnings["items"]}
    assert {"WaitingForCapacity", "CapacityExhausted"} <= reasons


def test_manual_mode_keeps_kubectl_scale(
    cluster: Cluster, namespace: str, operator: OperatorProcess, redis_server: RedisServer
) -> None:
    cluster.apply(model("manual", namespace, mode="Manual"))
    wait_replicas(cluster, namespace, "manual", 0, operator)
    submit(redis_server, f"{namespace}/manual", 12)
    wait_until(
        "the queue reported in Manual mode",
        lambda: autoscaling(cluster, namespace, "manual").get("queued") == 12,
        timeout=10,
    )
    cluster.kubectl("-n", namespace, "scale", "im/manual", "--replicas=2")
    wait_replicas(cluster, namespace, "manual", 2, operator)
    status = autoscaling(cluster, namespace, "manual")
    assert status["lastDecision"]["reason"] == "Manual"
    assert scaled_events(cluster, namespace, "manual") == []
    explained = cluster.kubectl("explain", "imagemodel.spec.scaling.mode").stdout
    assert "kubectl scale im/NAME" in explained
    columns = cluster.kubectl("-n", namespace, "get", "im", "manual").stdout
    assert "QUEUE" in columns and "DESIRED" in columns


def test_the_printer_columns_show_the_backlog(
    cluster: Cluster, namespace: str, operator: OperatorProcess, redis_server: RedisServer
) -> None:
    cluster.apply(model("shown", namespace))
    wait_replicas(cluster, namespace, "shown", 0, operator)
    submit(redis_server, f"{namespace}/shown", 5)
    wait_replicas(cluster, namespace, "shown", 2, operator)

    # The scale-up is the last decision only until the next tick finds 2 replicas right for
    # 5 jobs ("Steady"), which then holds while nothing changes: the columns are read there.
    def settled() -> bool:
        status = (get(cluster, namespace, "im", "shown") or {}).get("status", {})
        decision = status.get("autoscaling", {}).get("lastDecision", {})
        return status.get("queueDepth") == 5 and decision.get("reason") == "Steady"

    wait_until("the queue depth and a steady decision in status", settled, timeout=10)
    table = cluster.kubectl("-n", namespace, "get", "im", "shown", "-o", "wide").stdout.split("\n")
    header, row = table[0].split(), table[1].split()
    values = dict(zip(header, row, strict=False))
    assert (values["QUEUE"], values["DESIRED"], values["SCALING"]) == ("5", "2", "Steady")
    # Separate submissions: the autoscaler may have seen the first alone and scaled 0 -> 1.
    last = scaled_events(cluster, namespace, "shown")[-1]["message"]
    assert re.match(r"Scaled [01] -> 2: 5 jobs in backlog", last), last


def model_gauges(operator: OperatorProcess, namespace: str, name: str) -> dict[str, float]:
    """The operator's gauges for one ImageModel (whose modelName is its name), by metric."""
    port = operator.env["TESSERA_OPERATOR_METRICS_PORT"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("tessera_model_")
        and sample.labels == {"namespace": namespace, "imagemodel": name, "model": name}
    }


def test_the_operator_exports_each_models_replicas(
    cluster: Cluster, namespace: str, operator: OperatorProcess, redis_server: RedisServer
) -> None:
    # What the chart's PrometheusRule alerts on (charts/tessera/templates/monitoring.yaml).
    cluster.apply(model("gauged", namespace))
    wait_replicas(cluster, namespace, "gauged", 0, operator)
    submit(redis_server, f"{namespace}/gauged", 3)
    wait_replicas(cluster, namespace, "gauged", 1, operator)
    # KWOK makes the scheduled pod Ready; the next pass (a sweep at most) counts it.
    expected = {
        "tessera_model_desired_replicas": 1,
        "tessera_model_ready_replicas": 1,
        "tessera_model_unschedulable_replicas": 0,
    }
    wait_until(
        "the gauges to show the replicas",
        lambda: expected.items() <= model_gauges(operator, namespace, "gauged").items(),
        timeout=30,
    )
    cluster.kubectl("-n", namespace, "delete", "imagemodel", "gauged", "--wait=true")
    wait_until(
        "a deleted model's series to go",
        lambda: model_gauges(operator, namespace, "gauged") == {},
        timeout=20,
    )
