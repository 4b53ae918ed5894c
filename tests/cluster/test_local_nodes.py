"""Pods on local nodes really run: processes, probes, restarts, signals, env and volumes.

Every test here runs on ``local_cluster``, whose nodes have an agent as their kubelet
(tests/cluster/localnode). What a test asserts comes from the API server (pod status,
EndpointSlices) or from the processes themselves (their output, their sockets), never
from the agent's own bookkeeping.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.waiting import wait_until

from .harness import GPU_TOLERATION, H100_NODE_SELECTOR, LOCAL_NODE_LABEL, Cluster

pytestmark = pytest.mark.cluster

SERVE_DATA = ["python", "-m", "http.server", "8000", "--bind", "$(POD_IP)", "--directory", "/data"]
POD_IP = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def pod_manifest(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    for container in containers:
        container.setdefault("image", "local/test:1")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": containers, **spec},
    }


def web_pod(name: str, probe_path: str = "/", period: int = 1) -> dict[str, Any]:
    """``python -m http.server`` on the pod's address, serving an emptyDir."""
    return pod_manifest(
        name,
        [
            {
                "name": "web",
                "command": SERVE_DATA,
                "env": [POD_IP],
                "ports": [{"name": "http", "containerPort": 8000}],
                "readinessProbe": {
                    "httpGet": {"path": probe_path, "port": "http"},
                    "periodSeconds": period,
                    "failureThreshold": 1,
                },
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }
        ],
        volumes=[{"name": "data", "emptyDir": {}}],
    )


def create(cluster: Cluster, namespace: str, manifest: dict[str, Any]) -> None:
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(manifest))


def in_phase(phase: str) -> Any:
    return lambda pod: pod["status"].get("phase") == phase


def get_pod(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    result = cluster.kubectl("-n", namespace, "get", "pod", name, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def ready(pod: dict[str, Any] | None) -> bool:
    conditions = (pod or {}).get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def wait_pod(
    cluster: Cluster, namespace: str, name: str, what: str, check: Any, timeout: float = 60
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        pod = get_pod(cluster, namespace, name)
        return pod if pod is not None and check(pod) else None

    def explain() -> str:
        status = json.dumps((get_pod(cluster, namespace, name) or {}).get("status"))[:3000]
        logs = sorted(cluster.workdir.glob(f"local-nodes/*/pods/{namespace}/{name}-*/logs/*"))
        return "\n".join([status] + [f"--- {log}:\n{log.read_text()[-2000:]}" for log in logs])

    return wait_until(f"pod {namespace}/{name} {what}", probe, timeout, explain=explain)


def container_state(pod: dict[str, Any], index: int = 0) -> dict[str, Any]:
    statuses: list[dict[str, Any]] = pod["status"].get("containerStatuses") or [{}]
    return statuses[index]


def volume_folder(cluster: Cluster, namespace: str, pod: str, volume: str) -> Path:
    """The local folder behind a pod's volume (beside its logs)."""
    return cluster.pod_log(namespace, pod).parent.parent / "volumes" / volume


# -- nodes --------------------------------------------------------------------------------


def test_local_nodes_are_ready_labelled_and_left_alone_by_kwok(local_cluster: Cluster) -> None:
    nodes = json.loads(local_cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert len(nodes) == 2
    for node in nodes:
        meta, status = node["metadata"], node["status"]
        assert meta["labels"][LOCAL_NODE_LABEL] == "true"
        assert "kwok.x-k8s.io/node" not in meta.get("annotations", {})
        ready_condition = next(c for c in status["conditions"] if c["type"] == "Ready")
        # Written by the agent, not by KWOK (whose reason would be KubeletReady too, but
        # whose nodeInfo says kwok).
        assert ready_condition["status"] == "True"
        assert status["nodeInfo"]["kubeletVersion"] == "local-node-agent"
        lease = json.loads(
            local_cluster.kubectl(
                "-n", "kube-node-lease", "get", "lease", meta["name"], "-o", "json"
            ).stdout
        )
        assert lease["spec"]["holderIdentity"] == meta["name"]
    h100 = [n for n in nodes if n["metadata"]["labels"].get("nvidia.com/gpu.present") == "true"]
    assert len(h100) == 1
    assert h100[0]["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in h100[0]["spec"][
        "taints"
    ]


# -- readiness, reachability --------------------------------------------------------------


def test_http_server_pod_becomes_ready_and_answers_through_its_service(
    local_cluster: Cluster, local_namespace: str
) -> None:
    ns = local_namespace
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }
    pod = web_pod("web")
    pod["metadata"]["namespace"] = ns
    local_cluster.apply([pod, service])
    pod = wait_pod(local_cluster, ns, "web", "to be Ready", ready)
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["podIP"] != pod["status"]["hostIP"]
    (volume_folder(local_cluster, ns, "web", "data") / "hello.txt").write_text("hello from a pod")

    addresses = wait_until(
        "the Service's EndpointSlice to list the pod",
        lambda: local_cluster.service_addresses(ns, "web"),
    )
    assert addresses == [f"{pod['status']['podIP']}:8000"]
    response = httpx.get(f"http://{addresses[0]}/hello.txt", timeout=5)
    assert response.text == "hello from a pod"
    # The container's output is its log file: http.server logs every request, probes too.
    log = local_cluster.pod_log(ns, "web").read_text()
    assert '"GET /hello.txt HTTP/1.1" 200' in log


# Fetches a URL from inside a pod until its name resolves and answers, then saves the body.
FETCH = """
import sys, time, urllib.request
for _ in range(120):
    try:
        body = urllib.request.urlopen(sys.argv[1], timeout=2).read()
        break
    except OSError:
        time.sleep(0.5)
open(sys.argv[2], "wb").write(body)
"""


def test_a_pod_reaches_a_service_by_name_and_writes_to_a_provisioned_claim(
    local_cluster: Cluster, local_namespace: str
) -> None:
    ns = local_namespace
    server = web_pod("named")
    # Told to listen on every address, it gets its pod's: what 0.0.0.0 means in a pod.
    server["spec"]["containers"][0]["command"] = [
        a if a != "$(POD_IP)" else "0.0.0.0" for a in SERVE_DATA
    ]
    server["metadata"]["namespace"] = ns
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "named", "namespace": ns},
        # Port 80 answers at the pod's address as kube-proxy would map it: onto port 8000.
        "spec": {"selector": {"app": "named"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "shared", "namespace": ns},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    local_cluster.apply([server, service, claim])
    wait_pod(local_cluster, ns, "named", "to be Ready", ready)
    (volume_folder(local_cluster, ns, "named", "data") / "hello.txt").write_text("by name")
    clients = []
    for name, url in (("short", "http://named"), ("full", f"http://named.{ns}.svc:80")):
        client = pod_manifest(
            name,
            [
                {
                    "name": "fetch",
                    "command": ["python", "-c", FETCH, f"{url}/hello.txt", f"/claim/{name}"],
                    "volumeMounts": [{"name": "claim", "mountPath": "/claim"}],
                }
            ],
            restartPolicy="Never",
            volumes=[{"name": "claim", "persistentVolumeClaim": {"claimName": "shared"}}],
        )
        client["metadata"]["namespace"] = ns
        clients.append(client)
    local_cluster.apply(clients)
    for name in ("short", "full"):
        wait_pod(local_cluster, ns, name, "to succeed", in_phase("Succeeded"), timeout=90)

    # The default StorageClass provisioned the claim as a folder; both pods wrote into it.
    bound = json.loads(local_cluster.kubectl("-n", ns, "get", "pvc", "shared", "-o", "json").stdout)
    assert bound["spec"]["storageClassName"] == "local-path"
    volume = bound["spec"]["volumeName"]
    pv = json.loads(local_cluster.kubectl("get", "pv", volume, "-o", "json").stdout)
    folder = Path(pv["spec"]["hostPath"]["path"])
    assert folder.parent == local_cluster.workdir / "volumes"
    assert {f.name: f.read_text() for f in folder.iterdir()} == {
        "short": "by name",
        "full": "by name",
    }

    # Deleting the claim deletes the volume and, through a helper pod, its folder.
    local_cluster.kubectl("-n", ns, "delete", "pod", "short", "full", "--wait")
    local_cluster.kubectl("-n", ns, "delete", "pvc", "shared", "--wait")
    wait_until(
        "the claim's volume and folder removed",
        lambda: (
            not folder.exists()
            and local_cluster.kubectl("get", "pv", volume, check=False).returncode != 0
        ),
        timeout=90,
    )


def test_a_failing_readiness_probe_keeps_the_pod_unready(
    local_cluster: Cluster, local_namespace: str
) -> None:
    ns = local_namespace
    local_cluster.kubectl(
        "-n", ns, "apply", "-f", "-", input=json.dumps(web_pod("picky", probe_path="/ok"))
    )
    wait_pod(local_cluster, ns, "picky", "to run", in_phase("Running"))

    def probes_failed() -> int:
        log = local_cluster.pod_log(ns, "picky").read_text()
        return log.count('"GET /ok HTTP/1.1" 404')

    # Counted, not slept: five probes answered 404, and the pod stayed unready throughout.
    wait_until("five failed readiness probes", lambda: probes_failed() >= 5, timeout=30)
    pod = get_pod(local_cluster, ns, "picky")
    assert not ready(pod)
    assert container_state(pod)["ready"] is False  # type: ignore[arg-type]
    assert "state" in container_state(pod) and "running" in container_state(pod)["state"]  # type: ignore[arg-type]

    (volume_folder(local_cluster, ns, "picky", "data") / "ok").write_text("fine now")
    wait_pod(local_cluster, ns, "picky", "to turn Ready once its probe passes", ready, 15)


# -- restarts -----------------------------------------------------------------------------


def test_a_crashing_container_restarts_with_a_growing_count(
    local_cluster: Cluster, local_namespace: str
) -> None:
    ns = local_namespace
    crash = pod_manifest("crash", [{"name": "crash", "command": ["sh", "-c", "echo boom; exit 3"]}])
    create(local_cluster, ns, crash)
    seen: list[int] = []

    def restarted_three_times(pod: dict[str, Any]) -> bool:
        status = container_state(pod)
        count = status.get("restartCount", 0)
        if not seen or seen[-1] != count:
            seen.append(count)
        return bool(count >= 3)

    pod = wait_pod(local_cluster, ns, "crash", "to restart three times", restarted_three_times)
    status = container_state(pod)
    assert seen == sorted(seen), seen  # the count only grows
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert pod["status"]["phase"] == "Running"
    # Each start really ran: its output is in the log once per run.
    assert local_cluster.pod_log(ns, "crash").read_text().count("boom") >= 4
    wait_pod(
        local_cluster,
        ns,
        "crash",
        "to wait in CrashLoopBackOff",
        lambda p: (
            container_state(p)["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff"
        ),
        30,
    )


def test_a_job_pod_that_succeeds_is_not_restarted(
    local_cluster: Cluster, local_namespace: str
) -> None:
    ns = local_namespace
    once = pod_manifest(
        "once", [{"name": "once", "command": ["sh", "-c", "echo done"]}], restartPolicy="Never"
    )
    create(local_cluster, ns, once)
    pod = wait_pod(local_cluster, ns, "once", "to succeed", in_phase("Succeeded"))
    assert container_state(pod)["restartCount"] == 0
    assert container_state(pod)["state"]["terminated"]["reason"] == "Completed"
    assert local_cluster.pod_log(ns, "once").read_text() == "done\n"


# -- termination --------------------------------------------------------------------------

# Reports SIGTERM, then takes `delay` seconds to shut down (or ignores SIGTERM entirely).
GRACEFUL = """
import signal, sys, time
def stop(*_):
    print("got SIGTERM", flush=True)
    if sys.argv[1] == "ignore":
        return
    time.sleep(float(sys.argv[1]))
    print("clean exit", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("started", flush=True)
while True:
    time.sleep(0.1)
"""


@pytest.mark.parametrize(
    ("behaviour", "grace", "expect_exit", "at_least", "at_most"),
    [("2", 10, 0, 2, 8), ("ignore", 2, 137, 2, 6)],
    ids=["exits-within-grace", "killed-after-grace"],
)
def test_deletion_sends_sigterm_and_respects_the_grace_period(
    local_cluster: Cluster,
    local_namespace: str,
    behaviour: str,
    grace: int,
    expect_exit: int,
    at_least: float,
    at_most: float,
) -> None:
    ns = local_namespace
    manifest = pod_manifest(
        "stopper",
        [{"name": "stopper", "command": ["python", "-c", GRACEFUL, behaviour]}],
        terminationGracePeriodSeconds=grace,
    )
    create(local_cluster, ns, manifest)
    pod = wait_pod(local_cluster, ns, "stopper", "to be Ready", ready)
    wait_until(
        "the process to start",
        lambda: "started" in local_cluster.pod_log(ns, "stopper").read_text(),
    )
    pid = int(container_state(pod)["containerID"].removeprefix("local://"))
    assert Path(f"/proc/{pid}").exists()

    started = time.monotonic()
    local_cluster.kubectl("-n", ns, "delete", "pod", "stopper", "--wait=false")
    wait_until(
        "the pod object to be removed",
        lambda: get_pod(local_cluster, ns, "stopper") is None,
        timeout=grace + 10,
    )
    took = time.monotonic() - started
    assert not _alive(pid)
    log = local_cluster.pod_log(ns, "stopper").read_text()
    assert "got SIGTERM" in log
    assert ("clean exit" in log) == (expect_exit == 0)
    assert at_least <= took <= at_most, took


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


# -- what cannot run here -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("container", "reason", "words"),
    [
        ({"name": "c"}, "CommandRequired", "names no command"),
        (
            {"name": "c", "command": ["no-such-binary-here"]},
            "ExecutableNotFound",
            "not on this machine",
        ),
    ],
    ids=["no-command", "missing-executable"],
)
def test_a_pod_that_cannot_run_here_fails_with_a_message(
    local_cluster: Cluster, local_namespace: str, container: dict[str, Any], reason: str, words: str
) -> None:
    ns = local_namespace
    manifest = pod_manifest("cannot", [container], restartPolicy="Never")
    create(local_cluster, ns, manifest)
    pod = wait_pod(local_cluster, ns, "cannot", "to fail", in_phase("Failed"))
    assert pod["status"]["reason"] == reason
    assert words in pod["status"]["message"]


# -- env, volumes, init containers, working directory ------------------------------------

SHOW = """
import json, os, pathlib, sys
files = {p: pathlib.Path(p).read_text() for p in sys.argv[1:]}
names = "GREETING FROM_CM FROM_SECRET CM_colour S_token MY_NAME MY_NODE SAID".split()
env = {k: os.environ.get(k) for k in names}
print(json.dumps({"cwd": os.getcwd(), "env": env, "files": files}))
"""


def test_env_volumes_init_containers_and_working_directory(
    local_cluster: Cluster, local_namespace: str
) -> None:
    ns = local_namespace
    local_cluster.kubectl("-n", ns, "create", "configmap", "settings", "--from-literal=colour=blue")
    local_cluster.kubectl(
        "-n", ns, "create", "secret", "generic", "creds", "--from-literal=token=s3cret"
    )
    manifest = pod_manifest(
        "show",
        [
            {
                "name": "show",
                "command": ["python", "-c", SHOW],
                "args": [
                    "/config/colour",
                    "/secret/token",
                    "/info/labels",
                    "/work/from-init",
                    "/work/sub/x",
                ],
                "workingDir": "/work",
                "envFrom": [
                    {"configMapRef": {"name": "settings"}, "prefix": "CM_"},
                    {"secretRef": {"name": "creds"}, "prefix": "S_"},
                ],
                "env": [
                    {"name": "GREETING", "value": "hi $(CM_colour) $$(literal)"},
                    {
                        "name": "FROM_CM",
                        "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "colour"}},
                    },
                    {
                        "name": "FROM_SECRET",
                        "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}},
                    },
                    {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "MY_NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "SAID", "value": "--out=/work/said"},
                ],
                "volumeMounts": [
                    {"name": "config", "mountPath": "/config"},
                    {"name": "secret", "mountPath": "/secret"},
                    {"name": "info", "mountPath": "/info"},
                    {"name": "work", "mountPath": "/work"},
                ],
            }
        ],
        restartPolicy="Never",
        initContainers=[
            {
                "name": "prepare",
                "image": "local/test:1",
                "command": [
                    "sh",
                    "-c",
                    "echo made-by-init > /work/from-init; mkdir /work/sub; echo x > /work/sub/x",
                ],
                "volumeMounts": [{"name": "work", "mountPath": "/work"}],
            }
        ],
        volumes=[
            {"name": "config", "configMap": {"name": "settings"}},
            {"name": "secret", "secret": {"secretName": "creds"}},
            {
                "name": "info",
                "downwardAPI": {
                    "items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]
                },
            },
            {"name": "work", "emptyDir": {}},
        ],
    )
    create(local_cluster, ns, manifest)
    pod = wait_pod(local_cluster, ns, "show", "to succeed", in_phase("Succeeded"))
    init = pod["status"]["initContainerStatuses"][0]
    assert init["state"]["terminated"]["exitCode"] == 0
    shown = json.loads(local_cluster.pod_log(ns, "show", "show").read_text())
    work = volume_folder(local_cluster, ns, "show", "work")
    assert shown["cwd"] == str(work)
    assert shown["env"] == {
        "GREETING": "hi blue $(literal)",
        "FROM_CM": "blue",
        "FROM_SECRET": "s3cret",
        "CM_colour": "blue",
        "S_token": "s3cret",
        "MY_NAME": "show",
        "MY_NODE": pod["spec"]["nodeName"],
        "SAID": f"--out={work}/said",
    }
    assert list(shown["files"].values()) == [
        "blue",
        "s3cret",
        'app="show"',
        "made-by-init\n",
        "x\n",
    ]


# -- service accounts ---------------------------------------------------------------------

WHO_AM_I = """
import sys
from kubernetes import client, config
from kubernetes.config.incluster_config import InClusterConfigLoader
if sys.argv[1:]:  # the folder, by the path the agent rewrites
    folder = sys.argv[1]
    InClusterConfigLoader(folder + "/token", folder + "/ca.crt").load_and_set()
else:  # where every in-cluster client looks
    config.load_incluster_config()
namespace = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
try:
    client.CoreV1Api().list_namespaced_pod(namespace)
    print("listed pods")
except client.ApiException as error:
    print(error.status, error.body)
"""


def test_a_pod_calls_the_api_server_with_its_own_service_account(
    local_cluster: Cluster, local_namespace: str
) -> None:
    ns = local_namespace
    local_cluster.kubectl("-n", ns, "create", "serviceaccount", "reader")

    def run(name: str, *args: str) -> str:
        manifest = pod_manifest(
            name,
            [{"name": "who", "command": ["python", "-c", WHO_AM_I], "args": list(args)}],
            restartPolicy="Never",
            serviceAccountName="reader",
        )
        create(local_cluster, ns, manifest)
        wait_pod(local_cluster, ns, name, "to succeed", in_phase("Succeeded"))
        return local_cluster.pod_log(ns, name).read_text()

    # The admission plugin's kube-api-access volume is mounted at the usual path: the
    # agent binds the pod's folder there (this machine runs the tests as root), and maps
    # the path, when given as an argument, to the folder itself.
    denied = run("before")
    assert denied.startswith("403"), denied
    assert f"system:serviceaccount:{ns}:reader" in denied
    assert run("by-path", "/var/run/secrets/kubernetes.io/serviceaccount") == denied
    local_cluster.kubectl("-n", ns, "create", "role", "pods", "--verb=list", "--resource=pods")
    local_cluster.kubectl(
        "-n",
        ns,
        "create",
        "rolebinding",
        "reader-pods",
        "--role=pods",
        f"--serviceaccount={ns}:reader",
    )
    assert run("after").strip() == "listed pods"


# -- H100-shaped local nodes --------------------------------------------------------------


def test_a_gpu_shaped_pod_lands_on_the_h100_local_node_and_runs(
    local_cluster: Cluster, local_namespace: str
) -> None:
    ns = local_namespace
    manifest = pod_manifest(
        "gpu",
        [
            {
                "name": "gpu",
                "command": ["sh", "-c", "echo running on the CPU"],
                "resources": {"limits": {"nvidia.com/gpu": "1"}},
            }
        ],
        restartPolicy="Never",
        nodeSelector=H100_NODE_SELECTOR,
        tolerations=[GPU_TOLERATION],
    )
    create(local_cluster, ns, manifest)
    pod = wait_pod(local_cluster, ns, "gpu", "to succeed", in_phase("Succeeded"))
    node = json.loads(
        local_cluster.kubectl("get", "node", pod["spec"]["nodeName"], "-o", "json").stdout
    )
    assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    assert local_cluster.pod_log(ns, "gpu").read_text() == "running on the CPU\n"


def test_a_deleted_pods_process_group_is_gone(local_cluster: Cluster, local_namespace: str) -> None:
    # A shell that starts a child: stopping the container stops the child too.
    ns = local_namespace
    manifest = pod_manifest(
        "family",
        [{"name": "family", "command": ["sh", "-c", "sleep 300 & echo child $! ; wait"]}],
        terminationGracePeriodSeconds=1,
    )
    create(local_cluster, ns, manifest)
    wait_pod(local_cluster, ns, "family", "to run", ready)
    line = wait_until(
        "the child's pid", lambda: local_cluster.pod_log(ns, "family").read_text().strip()
    )
    child = int(line.split()[1])
    assert _alive(child)
    local_cluster.kubectl(
        "-n", ns, "delete", "pod", "family", "--wait=true", "--timeout=30s", timeout=40
    )
    wait_until("the child to be gone", lambda: not _alive(child), timeout=10)


def test_a_pod_waits_for_a_missing_config_map_and_runs_once_it_exists(
    local_cluster: Cluster, local_namespace: str
) -> None:
    ns = local_namespace
    manifest = pod_manifest(
        "patient",
        [
            {
                "name": "patient",
                "command": ["cat", "/config/word"],
                "volumeMounts": [{"name": "config", "mountPath": "/config"}],
            }
        ],
        restartPolicy="Never",
        volumes=[{"name": "config", "configMap": {"name": "later"}}],
    )
    create(local_cluster, ns, manifest)
    pod = wait_pod(
        local_cluster,
        ns,
        "patient",
        "to wait for its ConfigMap",
        lambda p: (
            "not found" in container_state(p).get("state", {}).get("waiting", {}).get("message", "")
        ),
    )
    assert pod["status"]["phase"] == "Pending"
    local_cluster.kubectl("-n", ns, "create", "configmap", "later", "--from-literal=word=now")
    wait_pod(
        local_cluster,
        ns,
        "patient",
        "to succeed",
        in_phase("Succeeded"),
    )
    assert local_cluster.pod_log(ns, "patient").read_text() == "now"
