"""The API server accepts what the chart renders: a server-side dry run on the test cluster.

Every object goes through the real API server's decoding, schema validation and admission
(an unknown field, an invalid PodDisruptionBudget or HPA, a bad CRD schema would each be
refused), which `helm lint` and `helm template` never reach.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.harness import Cluster
from tests.support.waiting import wait_until

from .render import render
from .test_render import CASES

# prometheus-operator's ServiceMonitor and PrometheusRule CRDs, pinned (see their headers).
MONITORING_CRDS = sorted((Path(__file__).parent / "crds").glob("*.yaml"))


def install_crds(cluster: Cluster, crds: list[dict[str, Any]]) -> None:
    """Apply CRDs for real (a dry run cannot make a new kind known to the objects of that
    kind) and wait until kubectl resolves every one of their kinds."""
    cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=chart-test",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": crds}),
    )
    for crd in crds:
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}")
    for group in {crd["spec"]["group"] for crd in crds}:
        kinds = {c["metadata"]["name"] for c in crds if c["spec"]["group"] == group}

        def known(group: str = group, kinds: set[str] = kinds) -> bool:
            listed = cluster.kubectl(
                "api-resources", f"--api-group={group}", "-o", "name", check=False
            ).stdout.split()
            return kinds <= set(listed)

        wait_until(f"kubectl to know the kinds of {group}", known, timeout=30)


@pytest.fixture(scope="module")
def monitoring_crds(kube_cluster: Cluster) -> None:
    """What a cluster with prometheus-operator has, so the dry run validates our objects
    against the real schemas."""
    docs = [yaml.safe_load(path.read_text()) for path in MONITORING_CRDS]
    install_crds(kube_cluster, docs)


@pytest.mark.parametrize(
    "case",
    [
        "defaults",
        "external redis",
        "s3",
        "ingress",
        "one operator",
        "service monitors",
        "rules",
        "network policies",
        "network policies elsewhere",
        "priority classes",
        "usage exporter",
    ],
)
@pytest.mark.usefixtures("monitoring_crds")
def test_server_accepts_the_rendered_chart(
    kube_cluster: Cluster, kube_namespace: str, case: str
) -> None:
    values, _ = CASES[case]
    objects = render(values, namespace=kube_namespace).objects
    crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    rest = [o for o in objects if o["kind"] != "CustomResourceDefinition"]
    assert rest, "nothing but CRDs rendered"
    if crds:
        install_crds(kube_cluster, crds)
    listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": rest})
    result = kube_cluster.kubectl(
        "apply", "--dry-run=server", "-o", "name", "-f", "-", input=listing, check=False
    )
    assert result.returncode == 0, result.stderr
    accepted = result.stdout.split()
    assert len(accepted) == len(rest), result.stdout


def test_dry_run_refuses_an_unknown_field(kube_cluster: Cluster, kube_namespace: str) -> None:
    # The check above is only worth something if the server really validates: it does.
    gateway = render(namespace=kube_namespace).get("Deployment", "tessera-gateway")
    gateway["spec"]["template"]["spec"]["containers"][0]["comand"] = ["tessera"]
    result = kube_cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=json.dumps(gateway), check=False
    )
    assert result.returncode != 0
    assert 'unknown field "spec.template.spec.containers[0].comand"' in result.stderr
