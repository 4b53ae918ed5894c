"""The test control plane behaves like a real GPU cluster.

Each test proves one thing the operator and chart tests will rely on: the scheduler
places GPU pods by extended resources, labels and taints; validation, admission, RBAC
and garbage collection run; clusters are isolated and leave nothing behind.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.waiting import wait_until

from .harness import (
    GPU_TOLERATION,
    H100_NODE_SELECTOR,
    Cluster,
    _cluster_pids,
    _listening_sockets,
    local_node_processes,
    start_cluster,
    stop_cluster,
)

T = TypeVar("T")
TOOLS = Path(__file__).resolve().parent / "tools"


def get_json(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def gpu_deployment(name: str, gpus: int, replicas: int) -> dict[str, Any]:
    """A Deployment shaped like a Tessera worker: H100 selector, GPU toleration, GPU limit."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": H100_NODE_SELECTOR,
                    "tolerations": [GPU_TOLERATION],
                    "containers": [
                        {
                            "name": "worker",
                            "image": "tessera/worker:test",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                        }
                    ],
                },
            },
        },
    }


def test_server_reports_the_pinned_version(kube_cluster: Cluster) -> None:
    # Unstamped builds say v0.0.0-master, which confuses kubectl's and helm's version checks.
    go_mod = (TOOLS / "kubernetes" / "go.mod").read_text()
    match = re.search(r"^\s*(?:require\s+)?k8s\.io/kubernetes (v\S+)", go_mod, re.MULTILINE)
    assert match, "tools/kubernetes/go.mod does not require k8s.io/kubernetes"
    pinned = match.group(1)
    version = json.loads(kube_cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == pinned
    assert version["clientVersion"]["gitVersion"] == pinned


def test_nodes_look_like_h100_and_cpu_machines(kube_cluster: Cluster) -> None:
    nodes = get_json(kube_cluster, "nodes")["items"]
    gpu = [n for n in nodes if n["metadata"]["labels"].get("nvidia.com/gpu.present") == "true"]
    cpu = [n for n in nodes if n not in gpu]
    assert len(gpu) == 2
    assert len(cpu) == 1
    for node in gpu:
        labels = node["metadata"]["labels"]
        assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        assert labels["nvidia.com/gpu.count"] == "8"
        assert labels["nvidia.com/gpu.memory"] == "81559"
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in node[
            "spec"
        ]["taints"]
    assert "nvidia.com/gpu" not in cpu[0]["status"]["allocatable"]
    ready = {
        n["metadata"]["name"]: c["status"]
        for n in nodes
        for c in n["status"]["conditions"]
        if c["type"] == "Ready"
    }
    assert set(ready.values()) == {"True"}


def test_gpu_pods_run_on_h100_nodes_only(kube_cluster: Cluster, kube_namespace: str) -> None:
    ns = kube_namespace
    kube_cluster.kubectl(
        "-n", ns, "apply", "-f", "-", input=json.dumps(gpu_deployment("flux", gpus=1, replicas=3))
    )
    kube_cluster.kubectl(
        "-n", ns, "rollout", "status", "deployment/flux", "--timeout=90s", timeout=100
    )
    h100 = set(
        kube_cluster.kubectl(
            "get", "nodes", "-l", "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3", "-o", "name"
        )
        .stdout.replace("node/", "")
        .split()
    )
    pods = get_json(kube_cluster, "-n", ns, "pods", "-l", "app=flux")["items"]
    assert len(pods) == 3
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert {"type": "Ready", "status": "True"}.items() <= next(
            c for c in pod["status"]["conditions"] if c["type"] == "Ready"
        ).items()
        assert pod["spec"]["nodeName"] in h100


def test_more_gpus_than_a_node_has_stays_pending(
    kube_cluster: Cluster, kube_namespace: str
) -> None:
    ns = kube_namespace
    kube_cluster.kubectl(
        "-n", ns, "apply", "-f", "-", input=json.dumps(gpu_deployment("big", gpus=9, replicas=1))
    )

    def failed_scheduling() -> list[dict[str, Any]]:
        events = get_json(
            kube_cluster, "-n", ns, "events", "--field-selector", "reason=FailedScheduling"
        )
        items: list[dict[str, Any]] = events["items"]
        return items

    events = wait_until("a FailedScheduling event", failed_scheduling)
    assert any("nvidia.com/gpu" in e["message"] for e in events), [e["message"] for e in events]
    pods = get_json(kube_cluster, "-n", ns, "pods", "-l", "app=big")["items"]
    assert [p["status"]["phase"] for p in pods] == ["Pending"]
    assert "nodeName" not in pods[0]["spec"]


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.tessera.dev"},
    "spec": {
        "group": "test.tessera.dev",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "minReplicas": {"type": "integer"},
                                    "maxReplicas": {"type": "integer"},
                                },
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "self.minReplicas <= self.maxReplicas",
                                        "message": "minReplicas must not exceed maxReplicas",
                                    }
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture
def widget_crd(kube_cluster: Cluster) -> Iterator[str]:
    kube_cluster.apply(CRD)
    kube_cluster.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.test.tessera.dev", "--timeout=30s"
    )
    try:
        yield "widgets.test.tessera.dev"
    finally:
        kube_cluster.kubectl(
            "delete", "crd", "widgets.test.tessera.dev", "--wait=false", check=False
        )


def test_cel_rule_rejects_a_bad_object(
    kube_cluster: Cluster, kube_namespace: str, widget_crd: str
) -> None:
    def widget(name: str, low: int, high: int) -> str:
        return json.dumps(
            {
                "apiVersion": "test.tessera.dev/v1",
                "kind": "Widget",
                "metadata": {"name": name, "namespace": kube_namespace},
                "spec": {"minReplicas": low, "maxReplicas": high},
            }
        )

    kube_cluster.kubectl("apply", "-f", "-", input=widget("good", 1, 3))
    bad = kube_cluster.kubectl("apply", "-f", "-", input=widget("bad", 5, 3), check=False)
    assert bad.returncode != 0
    assert "minReplicas must not exceed maxReplicas" in bad.stderr


def test_owned_objects_are_garbage_collected(kube_cluster: Cluster, kube_namespace: str) -> None:
    ns = kube_namespace
    kube_cluster.kubectl("-n", ns, "create", "configmap", "owner")
    uid = kube_cluster.kubectl(
        "-n", ns, "get", "configmap", "owner", "-o", "jsonpath={.metadata.uid}"
    ).stdout
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "namespace": ns,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
            ],
        },
    }
    kube_cluster.apply(owned)
    kube_cluster.kubectl("-n", ns, "delete", "configmap", "owner")
    wait_until(
        "the garbage collector to delete the owned ConfigMap",
        lambda: (
            kube_cluster.kubectl("-n", ns, "get", "configmap", "owned", check=False).returncode != 0
        ),
    )


def test_admission_plugins_run(kube_cluster: Cluster, kube_namespace: str) -> None:
    # ResourceQuota admission caps GPUs per namespace, as a multi-tenant GPU cluster would.
    ns = kube_namespace
    kube_cluster.kubectl("-n", ns, "create", "quota", "gpus", "--hard=requests.nvidia.com/gpu=1")
    wait_until(
        "the quota controller to fill in the quota's status",
        lambda: (
            get_json(kube_cluster, "-n", ns, "resourcequota", "gpus").get("status", {}).get("hard")
        ),
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "greedy", "namespace": ns},
        "spec": {
            "containers": [
                {"name": "c", "image": "x", "resources": {"limits": {"nvidia.com/gpu": "2"}}}
            ],
            "tolerations": [GPU_TOLERATION],
        },
    }
    result = kube_cluster.kubectl("create", "-f", "-", input=json.dumps(pod), check=False)
    assert result.returncode != 0
    assert "exceeded quota" in result.stderr


def test_rbac_forbids_a_service_account_without_rights(
    kube_cluster: Cluster, kube_namespace: str, tmp_path: Path
) -> None:
    ns = kube_namespace
    kube_cluster.kubectl("-n", ns, "create", "serviceaccount", "nobody")
    token = kube_cluster.kubectl("-n", ns, "create", "token", "nobody").stdout.strip()
    # A kubeconfig with only the service account's token: no admin client certificate.
    config = json.loads(
        kube_cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout
    )
    server = config["clusters"][0]["cluster"]["server"]
    ca = config["clusters"][0]["cluster"].get("certificate-authority-data")
    sa_kubeconfig = tmp_path / "nobody.kubeconfig"
    cluster_entry = {"server": server}
    if ca:
        cluster_entry["certificate-authority-data"] = ca
    else:
        cluster_entry["certificate-authority"] = config["clusters"][0]["cluster"][
            "certificate-authority"
        ]
    sa_kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster_entry}],
                "users": [{"name": "nobody", "user": {"token": token}}],
                "contexts": [
                    {"name": "c", "context": {"cluster": "c", "user": "nobody", "namespace": ns}}
                ],
                "current-context": "c",
            }
        )
    )

    def as_nobody(*args: str) -> Any:
        return kube_cluster.kubectl("--kubeconfig", str(sa_kubeconfig), *args, check=False)

    denied = as_nobody("get", "pods")
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    assert f"system:serviceaccount:{ns}:nobody" in denied.stderr

    kube_cluster.kubectl(
        "-n", ns, "create", "role", "pod-reader", "--verb=get,list", "--resource=pods"
    )
    kube_cluster.kubectl(
        "-n",
        ns,
        "create",
        "rolebinding",
        "nobody-reads",
        "--role=pod-reader",
        f"--serviceaccount={ns}:nobody",
    )
    wait_until(
        "the RoleBinding to take effect",
        lambda: as_nobody("get", "pods").returncode == 0,
        timeout=30,
    )
    assert as_nobody("get", "secrets").returncode != 0


def test_helm_installs_a_chart(kube_cluster: Cluster, kube_namespace: str, tmp_path: Path) -> None:
    # kubeVersion makes helm check the server's stamped version, as real charts do.
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: probe\nversion: 0.1.0\nkubeVersion: '>=1.30.0-0'\n"
    )
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-probe\n"
        "data:\n  gpus: {{ .Values.gpus | quote }}\n"
    )
    (chart / "values.yaml").write_text("gpus: 8\n")
    helm = subprocess.run(
        [
            "helm",
            "install",
            "probe",
            str(chart),
            "-n",
            kube_namespace,
            "--wait",
            "--timeout",
            "60s",
        ],
        env=kube_cluster.env(),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert helm.returncode == 0, helm.stderr
    data = get_json(kube_cluster, "-n", kube_namespace, "configmap", "probe-probe")["data"]
    assert data == {"gpus": "8"}


@pytest.fixture(scope="module")
def second_cluster() -> Iterator[Cluster]:
    cluster = start_cluster(f"pytest-second-{os.getpid()}", gpu_nodes=1, cpu_nodes=0, local_nodes=1)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


def test_two_clusters_run_side_by_side(kube_cluster: Cluster, second_cluster: Cluster) -> None:
    def server(cluster: Cluster) -> str:
        return cluster.kubectl(
            "config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"
        ).stdout

    assert server(kube_cluster) != server(second_cluster)
    assert len(get_json(second_cluster, "nodes", "-l", "type=kwok")["items"]) == 1
    second_cluster.kubectl("create", "namespace", "only-in-second")
    assert kube_cluster.kubectl("get", "namespace", "only-in-second", check=False).returncode != 0
    assert len(get_json(kube_cluster, "nodes")["items"]) == 3
    # Everything listens on loopback only.
    for cluster in (kube_cluster, second_cluster):
        sockets = _listening_sockets(_cluster_pids(cluster.workdir))
        assert sockets, f"found no listening sockets for {cluster.name}"
        assert {addr for addr, _ in sockets} <= {"127.0.0.1", "::1"}, sockets


# A container that ignores SIGTERM (as does its child, which inherits that) and listens:
# only the agent's SIGKILL after the grace period stops it.
STUBBORN = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "stubborn", "namespace": "default"},
    "spec": {
        "terminationGracePeriodSeconds": 2,
        "containers": [
            {
                "name": "stubborn",
                "image": "local/test:1",
                "command": [
                    "sh",
                    "-c",
                    "trap '' TERM; python -m http.server 8000 --bind $POD_IP & wait",
                ],
                "env": [
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
                ],
                "readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 1},
            }
        ],
    },
}


def test_stopping_leaves_no_processes_or_ports(second_cluster: Cluster) -> None:
    second_cluster.apply(STUBBORN)
    second_cluster.kubectl("wait", "--for=condition=Ready", "pod/stubborn", "--timeout=60s")
    pod = get_json(second_cluster, "pod", "stubborn")
    containers = local_node_processes(second_cluster.workdir)
    assert len(containers) == 1
    family = containers + _children(containers[0])
    assert len(family) == 2  # the shell and its http.server
    pids = _cluster_pids(second_cluster.workdir)
    names = sorted(Path(f"/proc/{p}/comm").read_text().strip() for p in pids)
    components = ["etcd", "kube-apiserver", "kube-controller", "kube-scheduler", "kwok-controller"]
    # python: the local node's agent; local-path-prov(isioner): the default StorageClass's.
    assert names == sorted([*components, "local-path-prov", "python"]), names
    ports = {port for _, port in _listening_sockets(pids)}

    stop_cluster(second_cluster)

    alive = [
        p
        for p in pids + family
        if Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]
    ]
    assert not alive
    assert not second_cluster.workdir.exists()
    # Not a connection attempt: with the pods' route gone, that address leads off the machine.
    pod_socket = (pod["status"]["podIP"], 8000)
    assert not [p for p in _port_owners(8000) if pod_socket in _listening_sockets([p])]
    for port in ports:
        wait_until(
            f"port {port} of the stopped cluster to be released",
            lambda port=port: _released(port, pids, second_cluster.name),
            timeout=10,
            explain=lambda port=port: _socket_table(port),
        )


def _released(port: int, pids: list[int], cluster_name: str) -> bool | None:
    """True once nothing of the cluster answers on ``port``. A listener can outlive its
    process by a moment while the kernel closes it, and a freed port may be taken at once by
    another process (a server of another test), which is not a leak."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) != 0:
            return True
    owners = _port_owners(port)
    leaked = [p for p in owners if p in pids or cluster_name in _cmdline(p)]
    return (bool(owners) and not leaked) or None


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def _socket_table(port: int) -> str:
    """The port's lines of ``ss``, to name what still answers."""
    try:
        table = subprocess.run(["ss", "-tanp"], capture_output=True, text=True).stdout
    except OSError as error:
        return f"(ss: {error})"
    return "\n".join(line for line in table.splitlines() if f":{port} " in line)


def _port_owners(port: int) -> list[int]:
    """The processes that listen on this TCP port, whoever they are."""
    everyone = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [pid for pid in everyone if any(p == port for _, p in _listening_sockets([pid]))]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
