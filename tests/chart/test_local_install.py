"""``helm install`` with default values onto local nodes, and a user's whole path after it.

Every pod of the chart (two operators, two gateways, Redis, then the usage exporter) runs
as a real process on a local node; the chart's claims (Redis's append-only file, the
ReadWriteMany results claim) are provisioned by the cluster's default StorageClass as
folders, never switched off. Then, as README's "On a cluster" section runs them: the CPU
demo models are applied, the seed article's client goes through ``kubectl port-forward``'s
stand-in to the gateway (list, generate, poll, fetch, edit from a result URL), the gateways'
and workers' metrics count the jobs and patches, the generated admin key reads
``GET /v1/usage``, ``tessera usage export`` reads one usage record per job from Redis, the
usage exporter (turned on by ``helm upgrade``) delivers them to a receiver, ``helm upgrade``
with no changes restarts nothing, ``helm test`` runs its pod and bills its job, the model
scales to zero and back, the models are deleted, and ``helm uninstall`` leaves only what
``crds.keep`` keeps.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tessera.runtime.config import key_id_secret
from tessera.runtime.keys import KeyRing
from tests.cluster.forward import port_forward
from tests.cluster.harness import (
    STORAGE_CLASS,
    VOLUMES_DIR,
    Cluster,
    local_node_processes,
    start_cluster,
    stop_cluster,
)
from tests.support import seed_client
from tests.support.usage_receiver import UsageReceiver
from tests.support.waiting import wait_until

from .release import get, helm
from .render import CHART, REPO

pytestmark = pytest.mark.cluster

NS = "tessera"
RELEASE = "tessera"
# Where NOTES.txt's `kubectl port-forward svc/tessera-gateway 8000:80` listens, and so the
# base URL the gateway signs result URLs with by default.
LOCAL_PORT = 8000
BASE_URL = f"http://127.0.0.1:{LOCAL_PORT}/v1"
EXAMPLES = REPO / "examples"
MODELS = {
    "tessera-demo": EXAMPLES / "demo-cpu.yaml",
    "tessera-demo-edit": EXAMPLES / "demo-cpu-edit.yaml",
}
CHART_PODS = f"app.kubernetes.io/instance={RELEASE}"
WORKER_PODS = "app.kubernetes.io/component=worker"
# What each of the chart's components runs (the process's command line names it).
PROGRAMS = {
    "operator": "operator",
    "gateway": "gateway",
    "redis": "redis-server",
    "usage-exporter": "usage push",
}
FAST = {"image_size": "64x48", "num_inference_steps": 2}
# Where README's `kubectl port-forward svc/tessera-redis 16379:6379` puts Redis, for
# `tessera usage export`.
REDIS_PORT = 16379
TESSERA = Path(sys.executable).with_name("tessera")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # A cluster of its own: the CRDs must be new to it, and uninstall must leave it clean.
    cluster = start_cluster(
        f"pytest-helm-{os.getpid()}",
        gpu_nodes=0,
        cpu_nodes=0,
        local_nodes=2,
        backoff_seconds=1.0,
    )
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
    """Print how long ``what`` took (figures for the record, not assertions)."""
    started = time.monotonic()
    yield
    print(f"{what}: {time.monotonic() - started:.1f} s")


def pods(cluster: Cluster, selector: str) -> list[dict[str, Any]]:
    found = get(cluster, "-n", NS, "pods", "-l", selector)["items"]
    return [p for p in found if not p["metadata"].get("deletionTimestamp")]


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def explain(cluster: Cluster) -> str:
    listing = cluster.kubectl("-n", NS, "get", "pods,pvc,im", "-o", "wide", check=False).stdout
    logs = []
    for log in sorted(cluster.workdir.glob(f"local-nodes/*/pods/{NS}/*/logs/*.log")):
        logs.append(f"--- {log.name} ({log.parent.parent.name}):\n{log.read_text()[-1500:]}")
    return listing + "\n".join(logs)


def processes(pod: dict[str, Any]) -> dict[str, str]:
    """Each running container's command line, read from /proc by its process id."""
    found = {}
    for container in pod["status"].get("containerStatuses") or []:
        assert "running" in container["state"], container
        pid = int(container["containerID"].removeprefix("local://"))
        found[container["name"]] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    return {name: line.decode() for name, line in found.items()}


def pod_lives(cluster: Cluster) -> dict[str, tuple[str, int]]:
    """Every pod of the namespace: name -> (uid, restarts of all its containers)."""
    return {
        p["metadata"]["name"]: (
            p["metadata"]["uid"],
            sum(c["restartCount"] for c in p["status"].get("containerStatuses") or []),
        )
        for p in pods(cluster, "")
    }


def generations(cluster: Cluster) -> dict[str, int]:
    """metadata.generation of every Deployment and StatefulSet: a rollout bumps it."""
    objects = get(cluster, "-n", NS, "deployments,statefulsets")["items"]
    return {f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["generation"] for o in objects}


def worker_metrics(cluster: Cluster, model: str) -> dict[str, float]:
    """The model's worker's Prometheus samples (name{labels} -> value), from its Service."""
    [address] = cluster.service_addresses(NS, model)
    text = httpx.get(f"http://{address}/metrics", timeout=10, follow_redirects=True).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def chart_pods_ready(cluster: Cluster, components: list[str]) -> list[dict[str, Any]]:
    """The chart's pods once there is one Ready per entry of ``components``, each its
    component's program as a real process (its command line read from /proc)."""
    found = wait_until(
        f"the chart's pods Ready: {components}",
        lambda: (
            (found := pods(cluster, CHART_PODS))
            and len(found) == len(components)
            and all(is_ready(p) for p in found)
            and found
        ),
        timeout=120,
        explain=lambda: explain(cluster),
    )
    running = sorted(p["metadata"]["labels"]["app.kubernetes.io/component"] for p in found)
    assert running == sorted(components)
    for pod in found:
        component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
        [command] = processes(pod).values()
        assert PROGRAMS[component] in command, (pod["metadata"]["name"], command)
    return found


def gateway_submissions(cluster: Cluster) -> dict[str, float]:
    """Jobs accepted per model, summed over every gateway replica's metrics port."""
    totals: dict[str, float] = {}
    for address in cluster.service_addresses(NS, f"{RELEASE}-gateway-metrics"):
        text = httpx.get(f"http://{address}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "tessera_jobs_submitted_total":
                    model = sample.labels["model"]
                    totals[model] = totals.get(model, 0) + sample.value
    return totals


def usage_records(cluster: Cluster, password: str) -> list[dict[str, Any]]:
    """``tessera usage export`` (JSON lines) from the release's Redis, through a forward."""

    def redis_endpoints() -> list[str]:
        return cluster.service_addresses(NS, f"{RELEASE}-redis")

    with port_forward(redis_endpoints, REDIS_PORT):
        queue = f"redis://:{password}@127.0.0.1:{REDIS_PORT}/0"
        exported = subprocess.run(
            [str(TESSERA), "usage", "export", "--queue", queue],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert exported.returncode == 0, exported.stderr
    return [json.loads(line) for line in exported.stdout.splitlines()]


def labelled_leftovers(cluster: Cluster) -> list[str]:
    """Every object, namespaced or cluster-wide, that carries the release's or Tessera's
    labels (kind/namespace/name)."""
    kinds = cluster.kubectl("api-resources", "--verbs=list", "-o", "name").stdout.split()
    found = set()
    for selector in (CHART_PODS, "app.kubernetes.io/part-of=tessera"):
        listing = get(cluster, ",".join(kinds), "-A", "-l", selector)["items"]
        for o in listing:
            meta = o["metadata"]
            found.add(f"{o['kind']}/{meta.get('namespace', '')}/{meta['name']}")
    return sorted(found)


def namespace_leftovers(cluster: Cluster) -> list[str]:
    """Every object of every namespaced kind in the release's namespace (kind/name)."""
    kinds = cluster.kubectl(
        "api-resources", "--verbs=list", "--namespaced=true", "-o", "name"
    ).stdout.split()
    kinds = [k for k in kinds if k.split(".")[0] != "events"]
    listing = get(cluster, ",".join(kinds), "-n", NS)["items"]
    return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in listing)


def test_helm_install_with_defaults_serves_the_seed_client_end_to_end(cluster: Cluster) -> None:
    # -- install: every pod of the chart a real process, its claims real folders ----------
    with timed("helm install --wait"):
        notes = helm(cluster, "install", RELEASE, str(CHART), "-n", NS, "--create-namespace",
                     "--wait", "--timeout", "5m")  # fmt: skip
    assert f"port-forward svc/{RELEASE}-gateway 8000:80" in notes
    # The HPA brings the gateway to its two replicas a moment after the install.
    components = ["gateway", "gateway", "operator", "operator", "redis"]
    chart_pods_ready(cluster, components)
    # The peering the two operators elect their leader through (a post-install hook).
    assert get(cluster, "clusterkopfpeering", RELEASE)["metadata"]["name"] == RELEASE
    volumes = cluster.workdir / VOLUMES_DIR
    claims = {c["metadata"]["name"]: c for c in get(cluster, "-n", NS, "pvc")["items"]}
    assert sorted(claims) == [f"data-{RELEASE}-redis-0", "tessera-results"]
    folders = {}
    for name, claim in claims.items():
        assert claim["status"]["phase"] == "Bound", claim["status"]
        assert claim["spec"]["storageClassName"] == STORAGE_CLASS  # the default class
        volume = get(cluster, "pv", claim["spec"]["volumeName"])
        folders[name] = Path(volume["spec"]["hostPath"]["path"])
        assert folders[name].parent == volumes and folders[name].is_dir()
    assert claims["tessera-results"]["spec"]["accessModes"] == ["ReadWriteMany"]
    # Redis writes its append-only file into its claim's folder.
    aof = folders[f"data-{RELEASE}-redis-0"] / "appendonlydir"
    wait_until("Redis's append-only file", lambda: any(aof.glob("*.aof")), timeout=30)

    # -- the CPU demo models, their workers on the local nodes ----------------------------
    applied = [arg for path in MODELS.values() for arg in ("-f", str(path))]
    cluster.kubectl("-n", NS, "apply", *applied)
    ready = "--for=jsonpath={.status.readyReplicas}=1"
    models = [f"imagemodel/{m}" for m in MODELS]
    with timed("both demo models applied -> a Ready worker each"):
        cluster.kubectl("-n", NS, "wait", ready, *models, "--timeout=300s", timeout=320)
    password = base64.b64decode(
        get(cluster, "-n", NS, "secret", f"{RELEASE}-redis")["data"]["password"]
    ).decode()
    for model in MODELS:
        rendered = cluster.kubectl("-n", NS, "get", "deployment", model, "-o", "json").stdout
        assert password not in rendered  # the workers read it from the Secret
    key = base64.b64decode(
        get(cluster, "-n", NS, "secret", f"{RELEASE}-initial-api-key")["data"]["api-key"]
    ).decode()

    def gateway_endpoints() -> list[str]:
        return cluster.service_addresses(NS, f"{RELEASE}-gateway")

    with port_forward(gateway_endpoints, LOCAL_PORT):
        # -- the seed article's client: list, generate, poll, fetch, edit ------------------
        listed = httpx.get(
            f"{BASE_URL}/base_models",
            headers={"api_key": key},
            params={"inference": "true", "modalities": ["text-to-image", "image-to-image"]},
        ).json()
        assert sorted(m["model_name"] for m in listed["models"]) == sorted(MODELS)
        generated = seed_client.generate(
            BASE_URL, key, {"model": "tessera-demo", "prompt": "a lighthouse", **FAST}
        )
        assert generated["status"] == "completed", generated
        assert generated["result"]["usage"] == {"output_tokens": 12, "total_tokens": 12}
        [item] = generated["result"]["data"]
        assert item["url"].startswith(f"{BASE_URL}/")
        image = seed_client.fetch(item["url"])
        assert Image.open(io.BytesIO(image)).size == (64, 48)
        # The file the worker wrote is in the results claim's folder.
        assert image in [p.read_bytes() for p in folders["tessera-results"].rglob("*.png")]
        edit = {"model": "tessera-demo-edit", "prompt": "at night", "image_url": item["url"]}
        edited = seed_client.generate(BASE_URL, key, edit | FAST, path="/images/edits")
        assert edited["status"] == "completed", edited
        edited_image = seed_client.fetch(edited["result"]["data"][0]["url"])
        assert Image.open(io.BytesIO(edited_image)).size == (64, 48)

        # -- the metrics: the gateways count each submission (their metrics port), each
        # model's worker its job and its patches (gateways count no usage: metrics.py) --
        assert gateway_submissions(cluster) == {model: 1 for model in MODELS}
        for model in MODELS:
            samples = worker_metrics(cluster, model)
            finished = f"tessera_jobs_finished_total{{model={model},outcome=completed}}"
            assert samples[finished] == 1, sorted(samples)
            assert samples[f"tessera_patches_total{{model={model}}}"] == 12

        # -- the generated key is the admin's: it reads everyone's usage -------------------
        def usage() -> dict[str, Any]:
            answer = httpx.get(
                f"{BASE_URL}/usage",
                headers={"api_key": key},
                params={"start": "2020-01-01T00:00:00Z", "group_by": "model"},
            )
            assert answer.status_code == 200, answer.text
            return answer.json()

        report = usage()
        assert {g["name"]: (g["jobs"], g["patches"]) for g in report["groups"]} == {
            "tessera-demo": (1, 12),
            "tessera-demo-edit": (1, 12),
        }

        # -- the usage ledger: one record per completed job, billed to the key's id ---------
        records = usage_records(cluster, password)
        billed = [(r["job_id"], r["model"], r["namespace"], r["patches"]) for r in records]
        assert billed == [
            (generated["job_id"], "tessera-demo", NS, 12),
            (edited["job_id"], "tessera-demo-edit", NS, 12),
        ]
        # Named under the release's signing secret, as the gateway names a plain-text key;
        # never from the key's hash, which the Secret of key hashes holds.
        signing = base64.b64decode(
            get(cluster, "-n", NS, "secret", f"{RELEASE}-signing")["data"]["secret"]
        )
        key_id = KeyRing.from_keys([key], key_id_secret(signing)).authenticate(key).id
        assert hashlib.sha256(key.encode()).hexdigest()[:10] not in key_id
        assert {r["key_id"] for r in records} == {key_id}
        for record in records:
            assert Decimal(record["amount"]) == 12 * Decimal(record["price_per_patch"])
        assert Decimal(report["total"]["amount"]) == sum(Decimal(r["amount"]) for r in records)

        # -- the usage exporter, turned on: it delivers every record to the receiver ---------
        receiver = UsageReceiver(failure_rate=0)  # on this machine, which pods share
        try:
            exporter = ["--set", "usageExporter.enabled=true",
                        "--set", f"usageExporter.to={receiver.url}"]  # fmt: skip
            with timed("helm upgrade --wait, the usage exporter on"):
                helm(cluster, "upgrade", RELEASE, str(CHART), "-n", NS, "--reuse-values",
                     *exporter, "--wait", "--timeout", "5m")  # fmt: skip
            chart_pods_ready(cluster, [*components, "usage-exporter"])
            wait_until(
                "the usage exporter delivered both records",
                lambda: receiver.received == [r["event_id"] for r in records],
                timeout=60,
                explain=lambda: f"received {receiver.received}\n" + explain(cluster),
            )
            assert receiver.bad_requests == []
        finally:
            receiver.close()

        # -- helm upgrade with no changes: no rollout, no pod restarted or replaced ---------
        lives, rolled = pod_lives(cluster), generations(cluster)
        assert len(lives) == 8  # the chart's 6 and one worker per model
        with timed("helm upgrade --wait, no changes"):
            helm(cluster, "upgrade", RELEASE, str(CHART), "-n", NS, "--reuse-values",
                 "--wait", "--timeout", "5m")  # fmt: skip
        assert generations(cluster) == rolled
        assert pod_lives(cluster) == lives

        # -- helm test: its pod runs files/helm-test.py through the gateway Service ---------
        with timed("helm test"):
            tested = helm(cluster, "test", RELEASE, "-n", NS, "--timeout", "5m")
        assert "TEST SUITE:     tessera-test-generate\n" in tested, tested
        assert "Phase:          Succeeded" in tested, tested
        # Its job went through the whole path: billed 128x96 = 48 patches, on the admin's key.
        assert {g["name"]: (g["jobs"], g["patches"]) for g in usage()["groups"]} == {
            "tessera-demo": (2, 12 + 48),
            "tessera-demo-edit": (1, 12),
        }
        assert not pods(cluster, "app.kubernetes.io/component=test")  # hook-succeeded

        # -- scale to zero and back ----------------------------------------------------------
        [worker] = pods(cluster, f"tessera.dev/imagemodel=tessera-demo,{WORKER_PODS}")
        [worker_pid] = [int(c["containerID"].removeprefix("local://"))
                        for c in worker["status"]["containerStatuses"]]  # fmt: skip
        idle = {"spec": {"scaling": {"minReplicas": 0, "scaleDownDelaySeconds": 5}}}
        cluster.kubectl("-n", NS, "patch", "imagemodel", "tessera-demo", "--type", "merge",
                        "-p", json.dumps(idle))  # fmt: skip
        wait_until(
            "tessera-demo at zero replicas, its worker process gone",
            lambda: (
                get(cluster, "-n", NS, "deployment", "tessera-demo")["spec"]["replicas"] == 0
                and not pods(cluster, f"tessera.dev/imagemodel=tessera-demo,{WORKER_PODS}")
                and worker_pid not in local_node_processes(cluster.workdir)
            ),
            timeout=90,
            explain=lambda: explain(cluster),
        )
        with timed("a job from zero replicas, submit -> completed"):
            woken = seed_client.generate(
                BASE_URL, key, {"model": "tessera-demo", "prompt": "from zero", **FAST}
            )
        assert woken["status"] == "completed", woken
        [again] = pods(cluster, f"tessera.dev/imagemodel=tessera-demo,{WORKER_PODS}")
        assert again["metadata"]["uid"] != worker["metadata"]["uid"]

    # -- delete the models, uninstall: only what crds.keep keeps remains ----------------------
    cluster.kubectl("-n", NS, "delete", *applied, "--wait", timeout=120)
    wait_until(
        "the workers gone",
        lambda: not pods(cluster, WORKER_PODS),
        timeout=90,
        explain=lambda: explain(cluster),
    )
    with timed("helm uninstall --wait"):
        helm(cluster, "uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "3m")
    wait_until(
        "every process of the release stopped and every claim's folder removed",
        lambda: (
            not local_node_processes(cluster.workdir)
            and not get(cluster, "pv")["items"]
            and not list(volumes.iterdir())
        ),
        timeout=120,
        explain=lambda: explain(cluster) + f"\n{list(volumes.iterdir())}",
    )
    # Only the CRDs (crds.keep): the pre-delete hook deleted the operators' peering object,
    # and its own ServiceAccount, role, binding and Job went once it had succeeded.
    assert labelled_leftovers(cluster) == [
        "CustomResourceDefinition//clusterkopfpeerings.kopf.dev",
        "CustomResourceDefinition//imagemodels.tessera.dev",
        "CustomResourceDefinition//kopfpeerings.kopf.dev",
    ]
    assert get(cluster, "clusterkopfpeerings")["items"] == []
    # Whatever carries no label: every namespaced object left in the namespace is one
    # Kubernetes makes in each (events aside, which are records, not objects of the release).
    assert namespace_leftovers(cluster) == ["ConfigMap/kube-root-ca.crt", "ServiceAccount/default"]
