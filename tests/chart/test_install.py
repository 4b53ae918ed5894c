"""``helm install``, ``upgrade`` and ``uninstall`` on a control plane of its own.

What only a real release shows: the peering object (a post-install hook) is created though
its CRD is new in the same release; the generated secrets survive ``helm upgrade`` through
``lookup``; an upgrade with no changes changes no pod template; ``uninstall`` leaves the
CRDs that ``crds.keep`` keeps. KWOK nodes only: no pod of the chart runs here.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.harness import Cluster, start_cluster, stop_cluster
from tests.support.waiting import wait_until

from .release import get, helm
from .render import CHART

NS = "tessera"
SECRETS = {
    "tessera-redis": "password",
    "tessera-signing": "secret",
    "tessera-initial-api-key": "api-key",
    "tessera-api-keys": "keys.json",
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # A cluster of its own: the CRDs must be new to it, and uninstall must leave it clean.
    cluster = start_cluster(f"pytest-chart-{os.getpid()}", gpu_nodes=0, cpu_nodes=1)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


def secret_values(cluster: Cluster) -> dict[str, str]:
    return {
        name: base64.b64decode(get(cluster, "-n", NS, "secret", name)["data"][key]).decode()
        for name, key in SECRETS.items()
    }


def pod_templates(cluster: Cluster) -> dict[str, Any]:
    return {
        f"{o['kind']}/{o['metadata']['name']}": o["spec"]["template"]
        for o in get(cluster, "-n", NS, "deployments,statefulsets")["items"]
    }


def release_objects(cluster: Cluster) -> list[str]:
    """What is left in the namespace, less the ServiceAccount Kubernetes puts in each."""
    found = get(cluster, "-n", NS, "deploy,sts,svc,secrets,pvc,hpa,pdb,sa")["items"]
    names = [f"{o['kind']}/{o['metadata']['name']}" for o in found]
    return [name for name in names if name != "ServiceAccount/default"]


def test_install_upgrade_uninstall(cluster: Cluster) -> None:
    notes = helm(cluster, "install", "tessera", str(CHART), "-n", NS, "--create-namespace")
    assert "kubectl -n tessera get secret tessera-initial-api-key" in notes
    # The generated key is the installer's admin key, and NOTES says what it reads.
    assert "admin key: it submits jobs and reads everyone's usage" in notes
    assert 'curl -s -H "api_key: $KEY" "http://127.0.0.1:8000/v1/usage?start=' in notes
    # No usage exporter by default: NOTES says the ledger then stays in Redis, and how not.
    assert "stays in Redis until a push exporter delivers it" in notes
    assert "usageExporter.enabled=true" in notes
    # The hook created the peering object after the release's CRDs.
    peering = get(cluster, "clusterkopfpeering", "tessera")
    assert peering["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    secrets = secret_values(cluster)
    assert secrets["tessera-initial-api-key"].startswith("tsk_")
    keys = json.loads(secrets["tessera-api-keys"])["keys"]
    templates = pod_templates(cluster)
    assert sorted(templates) == [
        "Deployment/tessera-gateway",
        "Deployment/tessera-operator",
        "StatefulSet/tessera-redis",
    ]

    helm(cluster, "upgrade", "tessera", str(CHART), "-n", NS)
    assert secret_values(cluster) == secrets  # kept by lookup, not regenerated
    assert json.loads(secret_values(cluster)["tessera-api-keys"])["keys"] == keys
    assert pod_templates(cluster) == templates  # so no pod restarts
    assert get(cluster, "clusterkopfpeering", "tessera")["metadata"]["name"] == "tessera"

    helm(cluster, "uninstall", "tessera", "-n", NS, "--wait")
    kept = sorted(c["metadata"]["name"] for c in get(cluster, "crd")["items"])
    assert kept == [
        "clusterkopfpeerings.kopf.dev",
        "imagemodels.tessera.dev",
        "kopfpeerings.kopf.dev",
    ]
    # The garbage collector takes the Redis data claim after its StatefulSet.
    wait_until(
        "the release's namespaced objects to go",
        lambda: not release_objects(cluster),
        timeout=60,
        explain=lambda: str(release_objects(cluster)),
    )
    # The pre-delete hook Job deleted the peering object, which Helm, having made it as a
    # hook, would have left (KWOK only completes the Job's pod: the deletion itself is
    # proven where pods run, tests/chart/test_local_install.py); every hook went with it.
    assert (
        get(cluster, "jobs,sa", "-n", NS, "-l", "app.kubernetes.io/component=delete-peering")[
            "items"
        ]
        == []
    )
    for kind in ("clusterrole", "clusterrolebinding"):
        names = [o["metadata"]["name"] for o in get(cluster, kind)["items"]]
        assert not [n for n in names if n.startswith("tessera-")], names
