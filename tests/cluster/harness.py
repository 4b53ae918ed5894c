"""A real Kubernetes control plane for tests, with simulated H100 nodes.

Why a real one: only a real kube-apiserver enforces CRD structural schemas, CEL rules,
RBAC, admission, subresources, resourceVersion conflicts and watches, and only a real
controller manager and scheduler garbage-collect owned objects and place pods. The nodes
are simulated by KWOK, so a laptop can hold a fleet of 8-GPU H100 nodes; local nodes
(``tests/cluster/localnode``) have an agent as their kubelet, and their pods really run.

How: ``tests/cluster/build`` builds etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kubectl, kwok, kwokctl and helm from pinned Go modules into a cache
outside the repository (or takes official binaries from ``TESSERA_K8S_BIN_DIR``).
``kwokctl --runtime binary`` starts them as local processes with certificates, RBAC and
admission on, every listener on 127.0.0.1 and on ports no other cluster holds. Nodes are
plain Node objects carrying KWOK's annotation, so KWOK keeps them Ready and turns pods
scheduled onto them Running and Ready.

State lives in ``${TESSERA_CACHE_DIR:-~/.cache/tessera}/kwok/clusters/<name>``; stopping a
cluster kills its processes and removes that folder. This module uses the standard
library only, so ``tests/cluster/up`` runs with any Python 3.11+.

Command line (what ``tests/cluster/up`` and ``down`` call)::

    python tests/cluster/harness.py up [--gpu-nodes N] [--cpu-nodes M] [--local-nodes K]
        [--local-h100-nodes K] [--name NAME]
    python tests/cluster/harness.py logs [-n NAMESPACE] [-c CONTAINER] POD [--name NAME]
    python tests/cluster/harness.py down [--name NAME]
"""

from __future__ import annotations

import argparse
import base64
import collections
import concurrent.futures
import contextlib
import fcntl
import functools
import http.client
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build"
PROVISIONER_BUILD_SCRIPT = HERE.parent / "tools" / "build-local-path-provisioner"
KWOKCTL_CONFIG = HERE / "kwokctl.yaml"

# What NVIDIA's GPU operator (GPU feature discovery) puts on an H100 SXM node.
H100_PRODUCT = "NVIDIA-H100-80GB-HBM3"
H100_LABELS = {
    "nvidia.com/gpu.present": "true",
    "nvidia.com/gpu.product": H100_PRODUCT,
    "nvidia.com/gpu.count": "8",
    "nvidia.com/gpu.memory": "81559",
    "nvidia.com/gpu.family": "hopper",
}
# The selector and toleration a workload needs to land on those nodes.
H100_NODE_SELECTOR = {"nvidia.com/gpu.product": H100_PRODUCT}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}

# KWOK's controller manages exactly the nodes that carry this annotation (kwokctl.yaml).
_KWOK_ANNOTATION = {"kwok.x-k8s.io/node": "fake"}
# What local nodes carry, so tests and people can tell them from KWOK's.
LOCAL_NODE_LABEL = "tessera.dev/local-node"
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
_BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
    "kwokctl",
    "helm",
)
_START_TIMEOUT = 120.0
REPO = HERE.parents[1]
# Under each cluster's folder: one folder per local node (pods' logs and volumes, pid files).
LOCAL_NODES_DIR = "local-nodes"
_AGENT_MODULE = b"tests.cluster.localnode"
# Pods on local nodes get addresses from this range, made local to this machine by one
# route on lo (see tests/cluster/localnode/addresses.py for why not 127.x).
LOCAL_POD_RANGE = "198.18.0.0/15"
_POD_ROUTE = ("local", LOCAL_POD_RANGE, "dev", "lo")
_SERVICE_ACCOUNT_MOUNT_POINT = "/run/secrets/kubernetes.io/serviceaccount"
# The agent's own shutdown gives containers at most 10 s of grace; then it is killed.
_AGENT_STOP_TIMEOUT = 20.0
_METADATA = "tessera-cluster.json"
# The default StorageClass of clusters with local nodes: rancher's local-path-provisioner
# (a process beside the control plane, like KWOK's controller) makes each claim a folder
# under <cluster folder>/volumes. Every local node shares this machine's disk, so the
# folder serves any access mode, ReadWriteMany included (its sharedFileSystemPath mode).
STORAGE_CLASS = "local-path"
PROVISIONER = "rancher.io/local-path"
_STORAGE_NAMESPACE = "local-path-storage"
_STORAGE_ACCOUNT = "local-path-provisioner"
_STORAGE_CONFIG = "local-path-config"
VOLUMES_DIR = "volumes"


class ClusterError(RuntimeError):
    """The control plane could not be built, started, driven or stopped.

    The message says what was attempted and carries the tail of the relevant output or
    logs, because a test fixture that fails must say why without a second run.
    """


class KubectlError(ClusterError):
    """A kubectl command failed; ``result`` holds its exit code and output."""

    def __init__(self, message: str, result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(message)
        self.result = result


def _agent_python() -> str:
    """The Python that runs local-node agents: it needs the ``kubernetes`` package and the
    project, so the repository's virtualenv when there is one (this module itself runs on
    any Python 3.11+). ``TESSERA_AGENT_PYTHON`` overrides it."""
    venv = REPO / ".venv" / "bin" / "python"
    return os.environ.get("TESSERA_AGENT_PYTHON") or (
        str(venv) if venv.exists() else sys.executable
    )


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _cache_dir() -> Path:
    return Path(os.environ.get("TESSERA_CACHE_DIR") or Path.home() / ".cache" / "tessera")


def _kwok_workdir() -> Path:
    # One KWOK workdir for all clusters: kwokctl reads every cluster's ports from it and
    # never hands out a port another of our clusters holds.
    return _cache_dir() / "kwok"


def _cluster_dir(name: str) -> Path:
    return _kwok_workdir() / "clusters" / name


@dataclass(frozen=True)
class Cluster:
    """A running control plane: its name, admin kubeconfig and the binaries it runs."""

    name: str
    kubeconfig: Path
    bin_dir: Path

    @property
    def workdir(self) -> Path:
        """The folder kwokctl keeps this cluster's certificates, etcd data and logs in."""
        return self.kubeconfig.parent

    def env(self) -> dict[str, str]:
        """The environment for tools that talk to this cluster.

        PATH puts our kubectl and helm first: a system kubectl of another version must
        not answer for this cluster. kubectl's discovery cache is kept per cluster: it is
        keyed by host and port, and a later cluster on the same port would otherwise see
        the resource types of an earlier one.
        """
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["KUBECACHEDIR"] = str(self.workdir / "kubectl-cache")
        env["PATH"] = os.pathsep.join([str(self.bin_dir), env.get("PATH", "")])
        return env

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run this cluster's kubectl; with ``check`` a failure raises KubectlError with stderr."""
        cmd = [str(self.bin_dir / "kubectl"), *args]
        try:
            result = subprocess.run(
                cmd,
                input=input,
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"kubectl {' '.join(args)} took longer than {timeout} s") from exc
        if check and result.returncode != 0:
            raise KubectlError(
                f"kubectl {' '.join(args)} failed (exit {result.returncode}): "
                f"{result.stderr.strip()}",
                result,
            )
        return result

    def apply(self, manifest: str | dict[str, Any] | list[dict[str, Any]]) -> None:
        """``kubectl apply`` a YAML/JSON document, one object, or a list of objects."""
        if isinstance(manifest, list):
            manifest = {"apiVersion": "v1", "kind": "List", "items": manifest}
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        self.kubectl("apply", "-f", "-", input=text)

    def add_nodes(self, gpu_nodes: int = 0, cpu_nodes: int = 0, prefix: str = "node") -> list[str]:
        """Create simulated H100 and CPU-only nodes and wait until all are Ready.

        Names are ``<prefix>-h100-<i>`` and ``<prefix>-cpu-<i>``, numbered after the
        nodes that already exist, so calling this again grows the fleet. Returns the new
        names.
        """
        new = [
            node_object(name, gpu=gpu)
            for gpu, name in self._new_node_names(
                [(True, gpu_nodes, f"{prefix}-h100"), (False, cpu_nodes, f"{prefix}-cpu")]
            )
        ]
        if not new:
            return []
        self._create_all("/api/v1/nodes?fieldValidation=Strict", new)
        names = [n["metadata"]["name"] for n in new]
        self._wait_nodes_ready(names, timeout=60 + len(names) * 0.2)
        return names

    def _new_node_names(self, wanted: list[tuple[bool, int, str]]) -> list[tuple[bool, str]]:
        """(gpu, name) for ``count`` new nodes per (gpu, count, stem), numbered after the
        nodes that already exist."""
        existing = set(self.kubectl("get", "nodes", "-o", "name").stdout.split())
        existing = {n.removeprefix("node/") for n in existing}
        names = []
        for gpu, count, stem in wanted:
            index = 0
            for _ in range(count):
                while f"{stem}-{index}" in existing:
                    index += 1
                existing.add(f"{stem}-{index}")
                names.append((gpu, f"{stem}-{index}"))
        return names

    def add_local_nodes(
        self,
        count: int = 0,
        h100_count: int = 0,
        prefix: str = "node",
        backoff_seconds: float = 10.0,
    ) -> list[str]:
        """Start one agent per local node (``<prefix>-local-<i>``, and H100-shaped
        ``<prefix>-local-h100-<i>``) and wait until every node is Ready.

        Their pods run as local processes (tests/cluster/localnode); ``backoff_seconds``
        is the first crash-loop delay (the kubelet's is 10 s). Returns the new names.
        """
        names = self._new_node_names(
            [(False, count, f"{prefix}-local"), (True, h100_count, f"{prefix}-local-h100")]
        )
        if names:
            _ensure_pod_route()
            self._start_storage()
        agents = [self._start_agent(name, gpu, backoff_seconds) for gpu, name in names]
        try:
            self._wait_nodes_ready([name for _, name in names], timeout=60)
        except ClusterError as exc:
            dead = [f"{log}:\n{_tail(log)}" for proc, log in agents if proc.poll() is not None]
            raise ClusterError(f"{exc}\n" + "\n".join(dead)) from exc
        return [name for _, name in names]

    def _start_agent(
        self, node: str, h100: bool, backoff_seconds: float
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """A detached agent process: it outlives ``tests/cluster/up``, and ``down`` stops it."""
        log = self.workdir / "logs" / f"local-node-{node}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        args = [
            _agent_python(), "-m", "tests.cluster.localnode",
            "--kubeconfig", str(self.kubeconfig),
            "--node", node,
            "--state-dir", str(self.workdir / LOCAL_NODES_DIR / node),
            "--address-locks", str(_kwok_workdir() / "local-addresses"),
            "--backoff-seconds", str(backoff_seconds),
        ]  # fmt: skip
        if h100:
            args.append("--h100")
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                args,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        return proc, log

    def _start_storage(self) -> None:
        """The default StorageClass and its provisioner, once per cluster.

        The provisioner runs each claim's setup (``mkdir``) and teardown (``rm -rf``) as a
        helper pod, which a local node runs like any other: a claim is provisioned, bound
        and deleted as on a real cluster, with the chart's own claims unchanged.
        """
        log = self.workdir / "logs" / "local-path-provisioner.log"
        if any(b"local-path-provisioner" in _cmdline_bytes(p) for p in _cluster_pids(self.workdir)):
            return
        volumes = self.workdir / VOLUMES_DIR
        volumes.mkdir(parents=True, exist_ok=True)
        config = {"sharedFileSystemPath": str(volumes)}
        helper = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "helper-pod"},
            "spec": {"containers": [{"name": "helper-pod", "image": "busybox", "command": ["sh"]}]},
        }
        self.apply(
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": _STORAGE_NAMESPACE}},
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": _STORAGE_ACCOUNT, "namespace": _STORAGE_NAMESPACE},
                },
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": _STORAGE_CONFIG, "namespace": _STORAGE_NAMESPACE},
                    "data": {
                        "config.json": json.dumps(config),
                        "setup": '#!/bin/sh\nset -eu\nmkdir -m 0777 -p "$VOL_DIR"\n',
                        "teardown": '#!/bin/sh\nset -eu\nrm -rf "$VOL_DIR"\n',
                        "helperPod.yaml": json.dumps(helper),
                    },
                },
                {
                    "apiVersion": "storage.k8s.io/v1",
                    "kind": "StorageClass",
                    "metadata": {
                        "name": STORAGE_CLASS,
                        "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                    },
                    "provisioner": PROVISIONER,
                    "reclaimPolicy": "Delete",
                    "volumeBindingMode": "WaitForFirstConsumer",
                },
            ]
        )
        binary = provisioner_binary()
        args = [
            str(binary), "start",
            "--kubeconfig", str(self.kubeconfig),
            "--namespace", _STORAGE_NAMESPACE,
            "--configmap-name", _STORAGE_CONFIG,
            "--service-account-name", _STORAGE_ACCOUNT,
            "--provisioner-name", PROVISIONER,
            "--helper-image", "busybox",
        ]  # fmt: skip
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )

    def service_addresses(self, namespace: str, service: str) -> list[str]:
        """``address:port`` of every ready endpoint of a Service, from its EndpointSlices.

        The one step from a Service name to where its pods answer: this machine has no
        cluster DNS and no kube-proxy, but pods on local nodes listen on addresses of their
        own, which the real EndpointSlice controller publishes.
        """
        slices = json.loads(
            self.kubectl(
                "-n", namespace, "get", "endpointslices",
                "-l", f"kubernetes.io/service-name={service}", "-o", "json",
            ).stdout
        )["items"]  # fmt: skip
        found = []
        for piece in slices:
            ports = [p["port"] for p in piece.get("ports") or [] if p.get("port")]
            for endpoint in piece.get("endpoints") or []:
                if endpoint.get("conditions", {}).get("ready"):
                    found += [f"{a}:{port}" for a in endpoint["addresses"] for port in ports]
        return sorted(found)

    def pod_log(self, namespace: str, pod: str, container: str | None = None) -> Path:
        """The output file of a container of a pod on a local node (the newest such pod).

        Logs live in ``<workdir>/local-nodes/<node>/pods/<namespace>/<pod>-<uid>/logs/``;
        without ``container``, the pod's only (or first) container's.
        """
        pattern = f"{LOCAL_NODES_DIR}/*/pods/{namespace}/{pod}-*/logs/{container or '*'}.log"
        found = sorted(self.workdir.glob(pattern), key=lambda p: p.stat().st_mtime)
        if not found:
            raise ClusterError(
                f"no log of {namespace}/{pod} on a local node (looked for {pattern})"
            )
        return found[-1]

    def _create_all(self, path: str, objects: list[dict[str, Any]], threads: int = 8) -> None:
        """POST objects straight to the API server over a few kept-alive connections.

        Not kubectl: kubectl's client is rate-limited to 5 requests a second (burst 10),
        so a thousand nodes would take minutes. This is the same API call, as the
        cluster's admin, so admission and validation still apply.
        """
        config = json.loads(
            self.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout
        )
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        server = urllib.parse.urlsplit(cluster["server"])
        context = ssl.create_default_context()
        with tempfile.TemporaryDirectory() as tmp:

            def material(entry: dict[str, Any], key: str) -> str:
                """A file for a kubeconfig credential given either as a path or inline."""
                if f"{key}-data" not in entry:
                    return str(entry[key])
                file = Path(tmp) / key
                file.write_bytes(base64.b64decode(entry[f"{key}-data"]))
                return str(file)

            context.load_verify_locations(material(cluster, "certificate-authority"))
            context.load_cert_chain(
                material(user, "client-certificate"), material(user, "client-key")
            )

        def post(batch: list[dict[str, Any]]) -> list[str]:
            errors = []
            conn = http.client.HTTPSConnection(
                server.hostname or "127.0.0.1", server.port, context=context, timeout=60
            )
            try:
                for obj in batch:
                    conn.request(
                        "POST", path, json.dumps(obj), {"Content-Type": "application/json"}
                    )
                    response = conn.getresponse()
                    body = response.read()
                    if response.status >= 300:
                        errors.append(
                            f"{obj['metadata']['name']}: HTTP {response.status} {body[:300]!r}"
                        )
            finally:
                conn.close()
            return errors

        batches = [objects[i::threads] for i in range(threads)]
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            errors = [e for found in pool.map(post, batches) for e in found]
        if errors:
            raise ClusterError(
                f"creating {len(errors)} objects in {self.name} failed: {errors[:3]}"
            )

    def _wait_nodes_ready(self, names: list[str], timeout: float) -> None:
        wanted = set(names)
        jsonpath = (
            "{range .items[*]}{.metadata.name}="
            '{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}'
        )
        deadline = time.monotonic() + timeout
        while True:
            out = self.kubectl("get", "nodes", "-o", f"jsonpath={jsonpath}", timeout=120).stdout
            ready = {line.split("=", 1)[0] for line in out.splitlines() if line.endswith("=True")}
            missing = wanted - ready
            if not missing:
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{len(missing)} of {len(wanted)} nodes not Ready after {timeout:.0f} s "
                    f"(e.g. {sorted(missing)[:3]}); kwok-controller log: {self.workdir / 'logs'}"
                )
            time.sleep(0.5)


def node_object(name: str, gpu: bool, local: bool = False) -> dict[str, Any]:
    """A Node shaped like a p5.48xlarge (8 x H100) or a 16-core CPU-only machine.

    A KWOK node carries KWOK's annotation (KWOK manages exactly those); a local node
    carries ``tessera.dev/local-node: "true"`` instead, and its agent keeps it Ready.
    """
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "local" if local else "kwok",
    }
    if local:
        labels[LOCAL_NODE_LABEL] = "true"
    if gpu:
        labels |= H100_LABELS
        capacity = {
            "cpu": "192",
            "memory": "2048Gi",
            "pods": "110",
            "ephemeral-storage": "3800Gi",
            "nvidia.com/gpu": "8",
        }
    else:
        capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "200Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {} if local else dict(_KWOK_ANNOTATION),
        },
        "spec": {"taints": [dict(GPU_TAINT)]} if gpu else {},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
        },
    }


@functools.cache
def build_binaries() -> Path:
    """Run ``tests/cluster/build`` and return its bin folder (cached; cold takes minutes).

    Progress goes to stderr as it happens; a failure raises ClusterError with the tail of
    the build output, never a skip: a test run without a control plane proves nothing.
    """
    tail: collections.deque[str] = collections.deque(maxlen=40)
    proc = subprocess.Popen(
        [str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        tail.append(line)
    out = proc.stdout.read().strip().splitlines()
    if proc.wait() != 0 or not out:
        raise ClusterError(f"{BUILD_SCRIPT} failed (exit {proc.returncode}):\n{''.join(tail)}")
    bin_dir = Path(out[-1])
    missing = [b for b in _BINARIES if not (bin_dir / b).is_file()]
    if missing:
        raise ClusterError(f"{BUILD_SCRIPT} returned {bin_dir}, which lacks {', '.join(missing)}")
    return bin_dir


@functools.cache
def provisioner_binary() -> Path:
    """Run ``tests/tools/build-local-path-provisioner`` and return the binary (cached)."""
    result = subprocess.run(
        [str(PROVISIONER_BUILD_SCRIPT)], capture_output=True, text=True, check=False
    )
    sys.stderr.write(result.stderr)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        tail = result.stderr[-3000:]
        raise ClusterError(f"{PROVISIONER_BUILD_SCRIPT} failed (exit {result.returncode}):\n{tail}")
    return Path(lines[-1])


@functools.cache
def _kube_version(bin_dir: Path) -> str:
    out = subprocess.run(
        [str(bin_dir / "kube-apiserver"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"v(\d+\.\d+\.\d+)", out)
    if not match:
        raise ClusterError(f"cannot read the version of {bin_dir / 'kube-apiserver'}: {out!r}")
    return match.group(1)


@contextlib.contextmanager
def _state_lock() -> Iterator[None]:
    """Serialise starts and stops across processes: kwokctl picks free ports by probing."""
    _kwok_workdir().mkdir(parents=True, exist_ok=True)
    with open(_kwok_workdir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _kwokctl(bin_dir: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        KWOK_WORKDIR=str(_kwok_workdir()),
        KWOK_RUNTIME="binary",
        KWOK_KUBE_VERSION="v" + _kube_version(bin_dir),
        KWOK_KUBECTL_BINARY=str(bin_dir / "kubectl"),
        PATH=os.pathsep.join([str(bin_dir), env.get("PATH", "")]),
    )
    cmd = [str(bin_dir / "kwokctl"), "--config", str(KWOKCTL_CONFIG), *args]
    # Output to a file, not a pipe: the components kwokctl starts could inherit a pipe
    # and keep it open for their whole life.
    with open(_kwok_workdir() / ".kwokctl.out", "w+") as out:
        try:
            code = subprocess.run(
                cmd, env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            code = -1
        out.seek(0)
        return subprocess.CompletedProcess(cmd, code, out.read(), "")


def _log_tails(workdir: Path, lines: int = 15) -> str:
    parts = []
    for log in sorted((workdir / "logs").glob("*.log")):
        text = log.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {log.name} ---\n" + "\n".join(text))
    return "\n".join(parts)


def start_cluster(
    name: str,
    gpu_nodes: int = 2,
    cpu_nodes: int = 1,
    local_nodes: int = 0,
    local_h100_nodes: int = 0,
    backoff_seconds: float = 10.0,
) -> Cluster:
    """Start a control plane named ``name`` with simulated nodes; stops a stale one first.

    ``local_nodes`` (CPU-shaped) and ``local_h100_nodes`` (H100-shaped) are nodes whose
    pods really run, as local processes (see ``Cluster.add_local_nodes``).

    Returns once the API server is ready, the controller manager and scheduler hold their
    leader leases (so they run), the ``default`` service account exists, and every node
    is Ready. Raises ClusterError with the component logs otherwise.
    """
    if not _NAME_RE.match(name):
        raise ClusterError(
            f"cluster name {name!r} must be lower-case letters, digits and '-', at most 40"
        )
    bin_dir = build_binaries()
    workdir = _cluster_dir(name)
    cluster = Cluster(name=name, kubeconfig=workdir / "kubeconfig.yaml", bin_dir=bin_dir)
    with _state_lock():
        if workdir.exists():
            _stop(cluster)
        result = _kwokctl(
            bin_dir,
            "create", "cluster",
            "--name", name,
            "--kubeconfig", "",  # never touch ~/.kube/config
            "--kube-apiserver-binary", str(bin_dir / "kube-apiserver"),
            "--kube-controller-manager-binary", str(bin_dir / "kube-controller-manager"),
            "--kube-scheduler-binary", str(bin_dir / "kube-scheduler"),
            "--kwok-controller-binary", str(bin_dir / "kwok"),
            "--etcd-binary", str(bin_dir / "etcd"),
            "--timeout", f"{int(_START_TIMEOUT)}s",
            timeout=_START_TIMEOUT + 30,
        )  # fmt: skip
        if result.returncode != 0 or not cluster.kubeconfig.is_file():
            logs = _log_tails(workdir)
            _stop(cluster)
            raise ClusterError(
                f"kwokctl create cluster {name} failed (exit {result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{logs}"
            )
        (workdir / _METADATA).write_text(json.dumps({"bin_dir": str(bin_dir)}))
    try:
        _wait_control_plane(cluster)
        cluster.add_nodes(gpu_nodes=gpu_nodes, cpu_nodes=cpu_nodes)
        cluster.add_local_nodes(local_nodes, local_h100_nodes, backoff_seconds=backoff_seconds)
    except ClusterError as exc:
        logs = _log_tails(workdir)
        stop_cluster(cluster)
        raise ClusterError(f"cluster {name} did not become ready: {exc}\n{logs}") from exc
    return cluster


def _wait_control_plane(cluster: Cluster, timeout: float = _START_TIMEOUT) -> None:
    """Wait for what a test relies on: API ready, controllers and scheduler elected."""
    deadline = time.monotonic() + timeout
    checks: list[tuple[str, tuple[str, ...]]] = [
        ("API server ready", ("get", "--raw", "/readyz")),
        (
            "kube-controller-manager lease",
            ("-n", "kube-system", "get", "lease", "kube-controller-manager"),
        ),
        ("kube-scheduler lease", ("-n", "kube-system", "get", "lease", "kube-scheduler")),
        ("default service account", ("-n", "default", "get", "serviceaccount", "default")),
    ]
    for what, args in checks:
        while True:
            result = cluster.kubectl(*args, "--request-timeout=5s", check=False, timeout=15)
            if result.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise ClusterError(f"no {what} after {timeout:.0f} s: {result.stderr.strip()}")
            time.sleep(0.2)


def _cluster_pids(workdir: Path) -> list[int]:
    """Processes whose command line names the cluster's folder: every component does."""
    needle = str(workdir).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle + b"/" in cmdline or cmdline.endswith(needle) or needle + b"\0" in cmdline:
            pids.append(int(entry.name))
    return pids


def _listening_sockets(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets these processes listen on, from /proc."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with contextlib.suppress(OSError), open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                    continue
                hex_addr, hex_port = fields[1].split(":")
                found.add((_decode_addr(hex_addr, width), int(hex_port, 16)))
    return found


def _decode_addr(hex_addr: str, width: int) -> str:
    raw = bytes.fromhex(hex_addr)
    # /proc/net/tcp* prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if width == 8:
        return ".".join(str(b) for b in words)
    import ipaddress

    return str(ipaddress.IPv6Address(words))


def _stop(cluster: Cluster) -> None:
    """kwokctl delete, then kill whatever survived and remove the folder (idempotent)."""
    workdir = cluster.workdir
    _stop_local_nodes(workdir)
    pids = _cluster_pids(workdir)
    if (cluster.bin_dir / "kwokctl").is_file() and workdir.exists():
        _kwokctl(
            cluster.bin_dir,
            "delete",
            "cluster",
            "--name",
            cluster.name,
            "--kubeconfig",
            "",
            timeout=60,
        )
    survivors = [p for p in pids if _alive(p)] + _cluster_pids(workdir)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in set(survivors):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while (survivors := [p for p in survivors if _alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not survivors:
            break
    shutil.rmtree(workdir, ignore_errors=True)


def _stop_local_nodes(workdir: Path) -> None:
    """SIGTERM every local-node agent (each stops its containers), then SIGKILL whatever a
    container left behind, found through the agents' pid files: an agent killed with -9
    cannot clean up after itself."""
    agents = [p for p in _cluster_pids(workdir) if _AGENT_MODULE in _cmdline_bytes(p)]
    for pid in agents:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _AGENT_STOP_TIMEOUT
    while (agents := [p for p in agents if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in agents:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid_file in workdir.glob(f"{LOCAL_NODES_DIR}/*/pids/*.pid"):
        pid, _, started = pid_file.read_text().partition(" ")
        if process_start_time(int(pid)) in (None, started.strip()):  # not a reused pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid), signal.SIGKILL)
    if (workdir / LOCAL_NODES_DIR).exists():
        _remove_pod_route_if_unused()


def _ensure_pod_route() -> None:
    """Make every address of ``LOCAL_POD_RANGE`` local (idempotent; needs CAP_NET_ADMIN)."""
    result = subprocess.run(
        ["ip", "route", "replace", *_POD_ROUTE], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ClusterError(
            f"local nodes need the route `ip route replace {' '.join(_POD_ROUTE)}` (run as "
            f"root, or add it once with sudo): {result.stderr.strip()}"
        )


def _remove_pod_route_if_unused() -> None:
    """Drop the route once no agent of any cluster runs: nothing is left behind."""
    if any(_AGENT_MODULE in _cmdline_bytes(pid) for pid in _all_pids()):
        return
    subprocess.run(["ip", "route", "del", *_POD_ROUTE], capture_output=True, check=False)
    # The empty mount point agents make for pods' service-account folders (and its
    # parents, as long as they are empty).
    with contextlib.suppress(OSError):
        os.removedirs(_SERVICE_ACCOUNT_MOUNT_POINT)


def _all_pids() -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]


def local_node_processes(workdir: Path) -> list[int]:
    """Live processes that containers on the cluster's local nodes started (pid files)."""
    found = []
    for pid_file in workdir.glob(f"{LOCAL_NODES_DIR}/*/pids/*.pid"):
        pid, _, started = pid_file.read_text().partition(" ")
        if process_start_time(int(pid)) == started.strip():
            found.append(int(pid))
    return found


def process_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat), to tell a
    process from a later one that reuses its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _cmdline_bytes(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_cluster(cluster: Cluster) -> None:
    """Stop every process of the cluster and remove its state; safe to call twice."""
    with _state_lock():
        _stop(cluster)


def _cluster_by_name(name: str) -> Cluster:
    workdir = _cluster_dir(name)
    meta = workdir / _METADATA
    bin_dir = Path(json.loads(meta.read_text())["bin_dir"]) if meta.is_file() else build_binaries()
    return Cluster(name=name, kubeconfig=workdir / "kubeconfig.yaml", bin_dir=bin_dir)


def main(argv: list[str] | None = None) -> int:
    """``up`` prints the kubeconfig path as its last line; ``down`` stops and cleans up."""
    parser = argparse.ArgumentParser(prog="tests/cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a cluster; prints its kubeconfig path last")
    up.add_argument("--name", default="tessera")
    up.add_argument("--gpu-nodes", type=int, default=2)
    up.add_argument("--cpu-nodes", type=int, default=1)
    up.add_argument(
        "--local-nodes", type=int, default=0, help="nodes whose pods run as local processes"
    )
    up.add_argument(
        "--local-h100-nodes", type=int, default=0, help="local nodes shaped like 8 x H100 nodes"
    )
    logs = sub.add_parser("logs", help="print a container's output (pods on local nodes)")
    logs.add_argument("--name", default="tessera")
    logs.add_argument("-n", "--namespace", default="default")
    logs.add_argument("-c", "--container")
    logs.add_argument("pod")
    down = sub.add_parser("down", help="stop a cluster and remove its state")
    down.add_argument("--name", default="tessera")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            start = time.monotonic()
            cluster = start_cluster(
                args.name,
                gpu_nodes=args.gpu_nodes,
                cpu_nodes=args.cpu_nodes,
                local_nodes=args.local_nodes,
                local_h100_nodes=args.local_h100_nodes,
            )
            print(
                f"cluster {cluster.name} up in {time.monotonic() - start:.1f} s "
                f"({args.gpu_nodes} H100 nodes, {args.cpu_nodes} CPU nodes, "
                f"{args.local_nodes + args.local_h100_nodes} local nodes); "
                f"kubectl and helm are in {cluster.bin_dir}",
                file=sys.stderr,
            )
            print(cluster.kubeconfig)
        elif args.command == "logs":
            cluster = _cluster_by_name(args.name)
            sys.stdout.write(cluster.pod_log(args.namespace, args.pod, args.container).read_text())
        else:
            stop_cluster(_cluster_by_name(args.name))
            print(f"cluster {args.name} stopped", file=sys.stderr)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
