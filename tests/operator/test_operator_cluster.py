"""The operator against a real control plane with simulated H100 nodes (tests/cluster).

One operator subprocess serves this module. It runs ``tessera operator`` with a token of
its ServiceAccount, so every test here also proves that the ClusterRole in
``crds/operator-rbac.yaml`` is enough. KWOK turns scheduled pods Running and Ready (no
container runs) and completes Job pods, so Ready here means: the right objects, accepted by
the API server, placed by the real scheduler on H100 nodes.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import Cluster, KubectlError

from .process import (
    CRDS,
    OperatorProcess,
    create_results_claim,
    host_path_volume,
    install_crds,
    running_operator,
    service_account_kubeconfig,
    wait_until,
)

pytestmark = pytest.mark.cluster

H100 = "NVIDIA-H100-80GB-HBM3"


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(kube_cluster: Cluster) -> Cluster:
    install_crds(kube_cluster)
    return kube_cluster


@pytest.fixture(scope="module")
def namespace(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    name = f"op-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    wait_until(
        f"the default service account in {name}",
        lambda: cluster.kubectl("-n", name, "get", "sa", "default", check=False).returncode == 0,
    )
    # Workers mount the results claim: without it the scheduler would not place them.
    create_results_claim(cluster, name, tmp_path_factory.mktemp("results"))
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    with running_operator(cluster, namespace, tmp_path_factory.mktemp("operator")) as process:
        yield process


def get(cluster: Cluster, namespace: str, *what: str) -> Any:
    result = cluster.kubectl("-n", namespace, "get", *what, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def condition(obj: dict[str, Any] | None, type: str) -> dict[str, Any]:
    for found in ((obj or {}).get("status") or {}).get("conditions") or ():
        if found["type"] == type:
            return found  # type: ignore[no-any-return]
    return {}


def image_model(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tessera.dev/v1alpha1",
        "kind": "ImageModel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"weights": {"demo": {}}, **spec},
    }


def explain(cluster: Cluster, namespace: str, name: str, operator: OperatorProcess) -> str:
    described = cluster.kubectl("-n", namespace, "describe", "imagemodel", name, check=False)
    pods = cluster.kubectl("-n", namespace, "get", "pods,deploy,rs", "-o", "wide", check=False)
    return f"{described.stdout}\n{pods.stdout}\n{operator.tail(30)}"


def wait_condition(
    cluster: Cluster,
    namespace: str,
    name: str,
    operator: OperatorProcess,
    type: str = "Ready",
    status: str = "True",
    timeout: float = 60,
) -> dict[str, Any]:
    """Wait until condition ``type`` has ``status`` for the model's current generation."""

    def probe() -> dict[str, Any] | None:
        operator.check_alive()
        obj = get(cluster, namespace, "imagemodel", name)
        found = condition(obj, type)
        generation = (obj or {}).get("metadata", {}).get("generation")
        if found.get("status") == status and found.get("observedGeneration") == generation:
            return obj
        return None

    return wait_until(
        f"{type}={status} on ImageModel {namespace}/{name}",
        probe,
        timeout,
        lambda: explain(cluster, namespace, name, operator),
    )


def events_for(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    events = get(cluster, namespace, "events", "--field-selector", f"involvedObject.name={name}")
    return [
        e for e in (events or {}).get("items", []) if e["involvedObject"]["kind"] == "ImageModel"
    ]


# -- the CRD, without the operator --------------------------------------------------------


def test_crd_is_served_with_short_name_and_category(cluster: Cluster, namespace: str) -> None:
    resources = cluster.kubectl("api-resources", "--api-group=tessera.dev", "-o", "wide").stdout
    assert "imagemodels" in resources
    assert " im " in resources
    assert "tessera" in resources  # the category
    cluster.apply(image_model("listed", namespace))
    assert "listed" in cluster.kubectl("-n", namespace, "get", "tessera").stdout
    assert "listed" in cluster.kubectl("-n", namespace, "get", "im").stdout
    cluster.kubectl("-n", namespace, "delete", "im", "listed")


def test_kubectl_explain_shows_descriptions(cluster: Cluster) -> None:
    spec = cluster.kubectl("explain", "imagemodel.spec").stdout
    assert "What to serve, on which hardware" in spec
    assert "The public name clients pass as `model`" in spec
    revision = cluster.kubectl("explain", "imagemodel.spec.weights.huggingFace.revision").stdout
    assert "pin a commit for reproducible images" in revision
    steps = cluster.kubectl("explain", "imagemodel.spec.parameters.numInferenceSteps").stdout
    assert "FLUX.1-schnell want about 4" in steps


REJECTED: dict[str, tuple[dict[str, Any], str]] = {
    "two weights sources": (
        {"weights": {"demo": {}, "pvc": {"claimName": "models"}}},
        "spec.weights must name exactly one source",
    ),
    "no weights source": ({"weights": {}}, "spec.weights must name exactly one source"),
    "minReplicas above maxReplicas": (
        {"scaling": {"minReplicas": 3, "maxReplicas": 2}},
        "spec.scaling.minReplicas must not exceed maxReplicas",
    ),
    "replicas beyond maxReplicas": (
        {"replicas": 4, "scaling": {"maxReplicas": 2}},
        "spec.replicas must lie within scaling.minReplicas and scaling.maxReplicas",
    ),
    "default steps outside the range": (
        {"parameters": {"numInferenceSteps": {"max": 8}}},
        "spec.parameters.numInferenceSteps: Invalid value",
    ),
    "default size beyond maxSide": (
        {"parameters": {"maxSide": 1024, "defaultImageSize": "1536x640"}},
        "spec.parameters.defaultImageSize must lie within minSide..maxSide",
    ),
    "default format not offered": (
        {"parameters": {"outputFormats": ["png"], "defaultOutputFormat": "webp"}},
        "spec.parameters.defaultOutputFormat must be one of outputFormats",
    ),
    "price as a float": ({"pricePerPatch": 0.001}, "spec.pricePerPatch"),
    "unknown task": ({"task": "text-to-video"}, 'Unsupported value: "text-to-video"'),
    "device map on one GPU": (
        {"pipeline": {"deviceMap": "balanced"}, "gpu": {"count": 1}},
        "spec.pipeline.deviceMap spreads the pipeline over several GPUs",
    ),
    "device map with offload": (
        {"pipeline": {"deviceMap": "balanced", "cpuOffload": "model"}, "gpu": {"count": 2}},
        "spec.pipeline.deviceMap places the components itself",
    ),
    "fixed argument not a name": (
        {"pipeline": {"fixedArguments": {"max length": 256}}},
        "spec.pipeline.fixedArguments names must be argument names",
    ),
    "fixed argument a dunder": (
        {"pipeline": {"fixedArguments": {"__class__": 1}}},
        "spec.pipeline.fixedArguments names must be argument names",
    ),
    "fixed argument the worker sets": (
        {"pipeline": {"fixedArguments": {"num_inference_steps": 4}}},
        "spec.pipeline.fixedArguments names an argument the worker sets on every call",
    ),
    "fixed argument past 2**53": (
        {"pipeline": {"fixedArguments": {"guidance_scale": 1e300}}},
        "spec.pipeline.fixedArguments.guidance_scale",
    ),
    "class name private": ({"pipeline": {"className": "__class__"}}, "spec.pipeline.className"),
}


@pytest.mark.parametrize("case", REJECTED, ids=list(REJECTED))
def test_invalid_models_are_rejected_with_the_rule(
    cluster: Cluster, namespace: str, case: str
) -> None:
    spec, message = REJECTED[case]
    body = image_model("invalid", namespace)
    body["spec"] |= spec
    with pytest.raises(KubectlError) as error:
        cluster.apply(body)
    assert message in str(error.value)


def test_long_or_odd_names_are_rejected(cluster: Cluster, namespace: str) -> None:
    with pytest.raises(KubectlError) as error:
        cluster.apply(image_model("m" * 47, namespace))
    assert "metadata.name must be a DNS-1035 label" in str(error.value)


def test_task_and_model_name_are_immutable(cluster: Cluster, namespace: str) -> None:
    cluster.apply(
        image_model(
            "fixed", namespace, modelName="FLUX.1-schnell", replicas=0, scaling={"minReplicas": 0}
        )
    )
    for patch, message in (
        ({"spec": {"task": "image-to-image"}}, "spec.task is immutable"),
        ({"spec": {"modelName": "other"}}, "spec.modelName is immutable"),
    ):
        result = cluster.kubectl(
            "-n",
            namespace,
            "patch",
            "im",
            "fixed",
            "--type=merge",
            "-p",
            json.dumps(patch),
            check=False,
        )
        assert result.returncode != 0
        assert message in result.stderr
    cluster.kubectl("-n", namespace, "delete", "im", "fixed")


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_are_accepted(cluster: Cluster, namespace: str, path: Path) -> None:
    cluster.kubectl("-n", namespace, "apply", "--dry-run=server", "-f", str(path))


# -- the operator -------------------------------------------------------------------------


def test_the_cpu_demo_example_runs_on_the_cpu_node(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "demo-cpu.yaml"
    cluster.kubectl("-n", namespace, "apply", "-f", str(path))
    wait_condition(cluster, namespace, "tessera-demo", operator)
    pods = get(cluster, namespace, "pods", "-l", "tessera.dev/imagemodel=tessera-demo")["items"]
    node = get(cluster, "default", "node", pods[0]["spec"]["nodeName"])
    assert "nvidia.com/gpu.product" not in node["metadata"]["labels"]
    init = pods[0]["spec"]["initContainers"][0]
    assert init["command"][:2] == ["tessera", "demo-model"]
    cluster.kubectl("-n", namespace, "delete", "-f", str(path))
    # The garbage collector removes the children after the model: wait, so that later tests
    # in this namespace never see them vanish.
    wait_until(
        "the demo's Deployment and Service to be garbage-collected",
        lambda: (
            not get(
                cluster,
                namespace,
                "deployments,services",
                "-l",
                "tessera.dev/imagemodel=tessera-demo",
            )["items"]
        ),
        90,
    )


def test_a_model_reaches_ready_on_h100_nodes(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    cluster.apply(image_model("schnell", namespace, modelName="FLUX.1-schnell"))
    obj = wait_condition(cluster, namespace, "schnell", operator)
    status = obj["status"]
    assert status["phase"] == "Ready"
    assert status["modelName"] == "FLUX.1-schnell"
    assert status["readyReplicas"] == 1
    assert status["endpoint"] == f"http://schnell.{namespace}.svc:8080"
    assert condition(obj, "Unschedulable")["status"] == "False"

    deployment = get(cluster, namespace, "deployment", "schnell")
    pod_spec = deployment["spec"]["template"]["spec"]
    assert pod_spec["nodeSelector"]["nvidia.com/gpu.product"] == H100
    container = pod_spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["command"][:4] == ["tessera", "worker", "--model", "FLUX.1-schnell"]
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("ImageModel", "schnell", True)

    pods = get(cluster, namespace, "pods", "-l", "tessera.dev/imagemodel=schnell")["items"]
    node = get(cluster, "default", "node", pods[0]["spec"]["nodeName"])
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == H100

    reasons = [e["reason"] for e in events_for(cluster, namespace, "schnell")]
    assert "Created" in reasons
    assert "Ready" in reasons
    printed = cluster.kubectl("-n", namespace, "get", "im", "schnell").stdout
    assert "FLUX.1-schnell" in printed
    assert "Ready" in printed


def test_gpu_shortage_reports_the_schedulers_reason(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    # Two simulated H100 nodes with 8 GPUs each cannot hold three 8-GPU replicas.
    cluster.apply(
        image_model(
            "dev-8gpu",
            namespace,
            replicas=3,
            gpu={"count": 8},
            scaling={"mode": "Manual", "minReplicas": 1, "maxReplicas": 3},
        )
    )
    try:
        obj = wait_condition(
            cluster, namespace, "dev-8gpu", operator, type="Unschedulable", timeout=90
        )
        message = condition(obj, "Unschedulable")["message"]
        assert "cannot be scheduled: 0/" in message
        assert "Insufficient nvidia.com/gpu" in message
        assert obj["status"]["phase"] in ("Unschedulable", "Degraded")
        warnings = [
            e for e in events_for(cluster, namespace, "dev-8gpu") if e["reason"] == "Unschedulable"
        ]
        assert warnings
        assert warnings[0]["type"] == "Warning"
        assert "Insufficient nvidia.com/gpu" in warnings[0]["message"]
    finally:
        cluster.kubectl("-n", namespace, "delete", "im", "dev-8gpu", "--wait=true", timeout=120)
        wait_until(
            "the 8-GPU pods to go",
            lambda: (
                not get(cluster, namespace, "pods", "-l", "tessera.dev/imagemodel=dev-8gpu")[
                    "items"
                ]
            ),
            timeout=90,
        )


def test_a_spec_change_rolls_out(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    cluster.apply(image_model("rolling", namespace))
    wait_condition(cluster, namespace, "rolling", operator)
    before = get(cluster, namespace, "deployment", "rolling")
    patch = {
        "spec": {
            "pipeline": {"dtype": "bfloat16"},
            "worker": {"env": [{"name": "EXTRA", "value": "1"}]},
        }
    }
    cluster.kubectl(
        "-n", namespace, "patch", "im", "rolling", "--type=merge", "-p", json.dumps(patch)
    )
    obj = wait_condition(
        cluster, namespace, "rolling", operator, type="Progressing", status="False"
    )
    assert condition(obj, "Progressing")["reason"] == "RolloutComplete"
    obj = wait_condition(cluster, namespace, "rolling", operator)
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 2
    after = get(cluster, namespace, "deployment", "rolling")
    container = after["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "EXTRA", "value": "1"} in container["env"]
    assert container["command"][container["command"].index("--dtype") + 1] == "bfloat16"
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    pods = get(cluster, namespace, "pods", "-l", "tessera.dev/imagemodel=rolling")["items"]
    hashes = {
        p["metadata"]["labels"]["pod-template-hash"]
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
    }
    assert len(hashes) == 1
    updates = [
        e["message"] for e in events_for(cluster, namespace, "rolling") if e["reason"] == "Updated"
    ]
    assert any("rolling out" in m for m in updates)


def test_kubectl_scale(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    scaling = {"mode": "Manual", "minReplicas": 1, "maxReplicas": 3}
    cluster.apply(image_model("scaled", namespace, scaling=scaling))
    wait_condition(cluster, namespace, "scaled", operator)
    cluster.kubectl("-n", namespace, "scale", "im/scaled", "--replicas=2")

    def two_ready() -> bool:
        obj = get(cluster, namespace, "imagemodel", "scaled")
        return bool(
            obj and obj["status"].get("readyReplicas") == 2 and obj["status"].get("replicas") == 2
        )

    wait_until(
        "2 ready replicas", two_ready, 60, lambda: explain(cluster, namespace, "scaled", operator)
    )
    assert get(cluster, namespace, "deployment", "scaled")["spec"]["replicas"] == 2
    scale = json.loads(
        cluster.kubectl(
            "-n", namespace, "get", "im", "scaled", "--subresource=scale", "-o", "json"
        ).stdout
    )
    assert scale["spec"]["replicas"] == 2
    assert scale["status"]["replicas"] == 2
    assert (
        scale["status"]["selector"]
        == "app.kubernetes.io/component=worker,tessera.dev/imagemodel=scaled"
    )
    refused = cluster.kubectl("-n", namespace, "scale", "im/scaled", "--replicas=5", check=False)
    assert refused.returncode != 0
    assert "spec.replicas must lie within" in refused.stderr
    assert "Scaled" in [e["reason"] for e in events_for(cluster, namespace, "scaled")]


def test_hub_weights_are_downloaded_once_before_replicas_start(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    # No storage provisioner here: a PersistentVolume for the cache claim to bind.
    volume = f"{namespace}-hub-cache"
    host_path_volume(cluster, volume, (namespace, "hub-weights"), Path(f"/tmp/{volume}"))
    try:
        cluster.apply(
            image_model(
                "hub",
                namespace,
                weights={
                    "huggingFace": {
                        "repo": "black-forest-labs/FLUX.1-schnell",
                        "tokenSecretRef": {"name": "hf"},
                    }
                },
            )
        )
        obj = wait_condition(cluster, namespace, "hub", operator, timeout=90)
        assert condition(obj, "WeightsReady")["reason"] == "WeightsCached"
        job_name = obj["status"]["weights"]["job"]
        job = get(cluster, namespace, "job", job_name)
        assert condition(job, "Complete")["status"] == "True"
        assert job["spec"]["template"]["spec"]["containers"][0]["command"][:3] == [
            "hf",
            "download",
            "black-forest-labs/FLUX.1-schnell",
        ]
        deployment = get(cluster, namespace, "deployment", "hub")
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["weights"]["persistentVolumeClaim"] == {
            "claimName": "hub-weights",
            "readOnly": True,
        }
        reasons = [e["reason"] for e in events_for(cluster, namespace, "hub")]
        assert "WaitingForWeights" in reasons
        assert "WeightsCached" in reasons
    finally:
        cluster.kubectl("-n", namespace, "delete", "im", "hub", "--wait=false", check=False)


def test_operator_restart_makes_no_writes(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    cluster.apply(
        image_model(
            "steady",
            namespace,
            replicas=2,
            scaling={"mode": "Manual", "minReplicas": 1, "maxReplicas": 2},
        )
    )
    wait_condition(cluster, namespace, "steady", operator)
    wait_until(
        "steady to have 2 ready replicas",
        lambda: get(cluster, namespace, "im", "steady")["status"].get("readyReplicas") == 2,
    )
    time.sleep(2)  # let the last status write land

    def versions() -> dict[str, str]:
        found = get(
            cluster, namespace, "imagemodels,deployments,services,jobs,persistentvolumeclaims"
        )
        return {
            f"{item['kind']}/{item['metadata']['name']}": item["metadata"]["resourceVersion"]
            for item in found["items"]
        }

    def tessera_events() -> set[str]:
        events = get(cluster, namespace, "events")["items"]
        return {
            e["metadata"]["name"]
            for e in events
            if e.get("source", {}).get("component") == "tessera-operator"
        }

    before, events_before = versions(), tessera_events()
    models = [k.split("/", 1)[1] for k in before if k.startswith("ImageModel/")]
    operator.stop()
    operator.start()
    for name in models:
        operator.wait_for_log(rf"reconciled {namespace}/{name} \(generation \d+\): unchanged")
    time.sleep(3)  # any write the restart caused would have happened by now
    after = versions()
    changed = {
        k: (before.get(k), after.get(k))
        for k in before.keys() | after.keys()
        if before.get(k) != after.get(k)
    }
    assert changed == {}, f"the restart wrote {changed}\n{operator.tail()}"
    assert tessera_events() == events_before


def test_deleting_a_model_removes_its_children(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    cluster.apply(image_model("doomed", namespace))
    wait_condition(cluster, namespace, "doomed", operator)
    cluster.kubectl("-n", namespace, "delete", "im", "doomed")

    def gone() -> bool:
        left = get(
            cluster, namespace, "deployments,services,pods", "-l", "tessera.dev/imagemodel=doomed"
        )
        return not left["items"]

    wait_until("the garbage collector to remove doomed's Deployment, Service and pods", gone, 90)


def test_a_deleted_deployment_is_put_back(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    cluster.apply(image_model("resilient", namespace))
    wait_condition(cluster, namespace, "resilient", operator)
    uid = get(cluster, namespace, "deployment", "resilient")["metadata"]["uid"]
    cluster.kubectl("-n", namespace, "delete", "deployment", "resilient")

    def replaced() -> bool:
        found = get(cluster, namespace, "deployment", "resilient")
        return bool(
            found
            and found["metadata"]["uid"] != uid
            and not found["metadata"].get("deletionTimestamp")
        )

    wait_until(
        "a new Deployment for resilient",
        replaced,
        60,
        lambda: explain(cluster, namespace, "resilient", operator),
    )
    wait_condition(cluster, namespace, "resilient", operator)


def test_a_child_the_api_server_refuses_is_reported(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    # spec.gpu.affinity is copied to the pods as given; the API server refuses a Deployment
    # with a field Kubernetes does not know, and the model says so instead of going quiet.
    cluster.apply(
        image_model("refused", namespace, gpu={"affinity": {"nodeAffinity": {"bogus": 1}}})
    )
    obj = wait_condition(cluster, namespace, "refused", operator, type="Degraded", timeout=60)
    degraded = condition(obj, "Degraded")
    assert degraded["reason"] == "ApplyFailed"
    assert "the API server refused Deployment refused" in degraded["message"]
    assert "bogus" in degraded["message"]
    warnings = [
        e for e in events_for(cluster, namespace, "refused") if e["reason"] == "ApplyFailed"
    ]
    assert warnings
    cluster.kubectl("-n", namespace, "delete", "im", "refused")


def test_the_operator_holds_only_its_cluster_role(
    cluster: Cluster, operator: OperatorProcess, tmp_path: Path
) -> None:
    kubeconfig = service_account_kubeconfig(cluster, tmp_path / "sa.json")

    def can(verb: str, resource: str, *flags: str) -> bool:
        result = subprocess.run(
            ["kubectl", "auth", "can-i", verb, resource, *flags],
            env=cluster.env() | {"KUBECONFIG": str(kubeconfig)},
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout.strip() == "yes"

    assert can("patch", "deployments.apps", "-A")
    assert can("patch", "imagemodels.tessera.dev", "--subresource=status", "-A")
    assert can("watch", "pods", "-A")
    for verb, resource in (
        ("get", "secrets"),
        ("create", "pods"),
        ("delete", "deployments.apps"),
        ("update", "nodes"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("delete", "imagemodels.tessera.dev"),
    ):
        assert not can(verb, resource, "-A"), f"the operator may {verb} {resource}"
    assert "Forbidden" not in operator.output(since_start=False)


def test_two_replicas_elect_one_active_leader(cluster: Cluster, tmp_path: Path) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(CRDS / "kopf-peering.yaml"))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev", "--timeout=60s"
    )
    namespace = f"peer-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", namespace)
    create_results_claim(cluster, namespace, tmp_path / "results")
    wait_until(
        "the KopfPeering resource",
        lambda: cluster.kubectl("get", "kopfpeerings", "-A", check=False).returncode == 0,
    )
    cluster.apply(
        {
            "apiVersion": "kopf.dev/v1",
            "kind": "KopfPeering",
            "metadata": {"name": "tessera", "namespace": namespace},
        }
    )
    kubeconfig = service_account_kubeconfig(cluster, tmp_path / "kubeconfig.json")

    def replica(name: str, priority: int) -> OperatorProcess:
        args = ["--peering", "tessera", "--priority", str(priority)]
        return OperatorProcess(kubeconfig, tmp_path / f"{name}.log", [namespace], args)

    leader, standby = replica("leader", 20), replica("standby", 10)
    try:
        # Each replica starts paused; one that sees no higher priority resumes.
        leader.start()
        leader.wait_for_log(r"Resuming operations")
        standby.start()
        cluster.apply(image_model("elected", namespace))
        wait_condition(cluster, namespace, "elected", leader)
        leader.wait_for_log(rf"reconciled {namespace}/elected")
        assert "reconciled" not in standby.output(), standby.tail()
        assert "Resuming operations" not in standby.output(), standby.tail()

        leader.stop()  # a clean exit leaves the peering object at once
        standby.wait_for_log(r"Resuming operations", timeout=90)
        standby.wait_for_log(rf"reconciled {namespace}/elected \(generation 1\): unchanged")
        cluster.kubectl(
            "-n",
            namespace,
            "patch",
            "im",
            "elected",
            "--type=merge",
            "-p",
            json.dumps({"spec": {"worker": {"env": [{"name": "X", "value": "1"}]}}}),
        )
        standby.wait_for_log(rf"reconciled {namespace}/elected \(generation 2\): updated")
    finally:
        leader.stop()
        standby.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
