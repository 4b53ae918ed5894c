"""The API server accepts what the chart renders: a server-side dry run on the test cluster.

Every object goes through the real API server's decoding, schema validation and admission
(an unknown field, an invalid PodDisruptionBudget or HPA, a bad CRD schema would each be
refused), which `helm lint` and `helm template` never reach.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cluster.harness import Cluster
from tests.support.waiting import wait_until

from .render import render
from .test_render import CASES

# prometheus-operator's ServiceMonitor and PrometheusRule CRDs, pinned (see their headers).
MONITORING_CRDS = sorted((Path(__file__).parent / "crds").glob("*.yaml"))


@pytest.fixture(scope="module")
def monitoring_crds(kube_cluster: Cluster) -> None:
    """What a cluster with prometheus-operator has, so the dry run validates our objects
    against the real schemas."""
    for path in MONITORING_CRDS:
        kube_cluster.kubectl(
            "apply", "--server-side", "--field-manager=chart-test", "-f", str(path)
        )
    for kind in ("servicemonitors", "prometheusrules"):
        kube_cluster.kubectl(
            "wait", "--for=condition=Established", f"crd/{kind}.monitoring.coreos.com"
        )
    wait_until(
        "kubectl to know the monitoring CRDs",
        lambda: (
            kube_cluster.kubectl(
                "api-resources", "--api-group=monitoring.coreos.com", "-o", "name", check=False
            ).stdout.count(".monitoring.coreos.com")
            == 2
        ),
        timeout=30,
    )


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
        # The CRDs for real (a dry run cannot make kopf.dev/v1 known to the peering object).
        kube_cluster.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=chart-test",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": crds}),
        )
        for crd in crds:
            kube_cluster.kubectl(
                "wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}"
            )
    listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": rest})
    wait_until(
        "kubectl to know the new CRDs",
        lambda: (
            kube_cluster.kubectl(
                "api-resources", "--api-group=kopf.dev", "-o", "name", check=False
            ).stdout.count("peering")
            == 2
        ),
        timeout=30,
    )
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
