"""Rendering rules of charts/tessera, table-driven over ``helm template`` (no cluster)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tessera.runtime.errors import Unauthorized
from tessera.runtime.keys import KeyRing

from .render import CHART, REPO, Rendered, RenderError, env_of, helm, render

FULL = "tessera"  # the release is named like the chart, so objects are not "tessera-tessera-*"


def crd_files() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name in ("imagemodel.yaml", "kopf-peering.yaml"):
        docs += [d for d in yaml.safe_load_all((REPO / "crds" / name).read_text()) if d]
    return docs


def without_chart_metadata(crd: dict[str, Any]) -> dict[str, Any]:
    """A CRD less what the chart adds: Helm's labels and the keep annotation."""
    out = {**crd, "metadata": dict(crd["metadata"])}
    labels = {
        k: v
        for k, v in out["metadata"].get("labels", {}).items()
        if k not in ("app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "helm.sh/chart")
    }
    out["metadata"].pop("annotations", None)
    out["metadata"].pop("labels", None)
    if labels:
        out["metadata"]["labels"] = labels
    return out


def test_helm_lint_passes() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


def test_values_schema_is_generated_from_values_yaml() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "chart-schema"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_crds_are_the_ones_in_crds_folder() -> None:
    rendered = render()
    crds = [o for o in rendered.objects if o["kind"] == "CustomResourceDefinition"]
    assert sorted(map(without_chart_metadata, crds), key=lambda c: c["metadata"]["name"]) == (
        sorted(crd_files(), key=lambda c: c["metadata"]["name"])
    )
    for crd in crds:
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


@pytest.mark.parametrize("component", ["operator", "gateway"])
def test_rbac_rules_are_the_ones_in_crds_folder(component: str) -> None:
    documented = next(
        d
        for d in yaml.safe_load_all((REPO / "crds" / f"{component}-rbac.yaml").read_text())
        if d and d["kind"] == "ClusterRole"
    )
    rendered = render()
    role = rendered.get("ClusterRole", f"{FULL}-{component}")
    assert role["rules"] == documented["rules"]
    binding = rendered.get("ClusterRoleBinding", f"{FULL}-{component}")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{FULL}-{component}", "namespace": "tessera"}
    ]
    pods = rendered.pod_specs()
    assert pods[f"Deployment/{FULL}-{component}"]["serviceAccountName"] == f"{FULL}-{component}"


def test_every_container_names_its_command_and_runs_locked_down() -> None:
    for owner, pod in render().pod_specs().items():
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, owner
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, owner
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = f"{owner} {container['name']}"
            assert container["command"], where
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert container["resources"]["requests"], where
            assert container["resources"]["limits"]["memory"], where


def _defaults(r: Rendered) -> None:
    operator = r.get("Deployment", f"{FULL}-operator")
    assert operator["spec"]["replicas"] == 2
    command = operator["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["tessera", "operator", "--all-namespaces"]
    assert command[3:5] == ["--peering", FULL]
    assert r.get("ClusterKopfPeering", FULL)["metadata"]["annotations"]["helm.sh/hook"] == (
        "post-install,post-upgrade"
    )
    env = env_of(operator["spec"]["template"]["spec"]["containers"][0])
    queue = f"redis://:$(REDIS_PASSWORD)@{FULL}-redis.tessera.svc:6379/0"
    # The operator renders $(REDIS_PASSWORD) into its workers as written, with the Secret
    # they read it from: the password itself never lands in a Deployment.
    assert env["TESSERA_QUEUE_URL"] == queue.replace("$(", "$$(")
    assert env["TESSERA_QUEUE_PASSWORD_SECRET"] == f"{FULL}-redis"
    assert env["TESSERA_QUEUE_PASSWORD_KEY"] == "password"
    assert env["TESSERA_RESULTS_CLAIM"] == "tessera-results"
    assert env["TESSERA_WORKER_IMAGE"] == "ghcr.io/tessera-dev/tessera:0.1.0"
    gateway = r.get("Deployment", f"{FULL}-gateway")["spec"]
    assert "replicas" not in gateway  # the HPA owns it
    gw_env = env_of(gateway["template"]["spec"]["containers"][0])
    assert gw_env["TESSERA_QUEUE"] == queue
    assert gw_env["TESSERA_STORAGE"] == "/results"
    assert {"claimName": "tessera-results"} in [
        v.get("persistentVolumeClaim") for v in gateway["template"]["spec"]["volumes"]
    ]
    claim = r.get("PersistentVolumeClaim", "tessera-results")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    hpa = r.get("HorizontalPodAutoscaler", f"{FULL}-gateway")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10)
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert r.names("PodDisruptionBudget") == [f"{FULL}-gateway", f"{FULL}-operator"]
    redis = r.get("StatefulSet", f"{FULL}-redis")["spec"]
    args = redis["template"]["spec"]["containers"][0]["command"]
    assert args[args.index("--appendfsync") + 1] == "always"
    assert args[args.index("--appendonly") + 1] == "yes"
    assert redis["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "8Gi"
    assert "requirepass" not in " ".join(args)  # the password is in a file, not the args
    assert r.names("Secret") == [
        f"{FULL}-api-keys",
        f"{FULL}-initial-api-key",
        f"{FULL}-redis",
        f"{FULL}-signing",
    ]
    assert r.names("Ingress") == []


def _external_redis(r: Rendered) -> None:
    assert r.names("StatefulSet") == []
    assert f"{FULL}-redis" not in r.names("Secret")
    env = env_of(
        r.get("Deployment", f"{FULL}-gateway")["spec"]["template"]["spec"]["containers"][0]
    )
    assert env["TESSERA_QUEUE"] == "rediss://:$(REDIS_PASSWORD)@redis.example.com:6380/2"
    assert env["REDIS_PASSWORD"] == {"secretKeyRef": {"name": "queue-auth", "key": "pw"}}
    operator = r.get("Deployment", f"{FULL}-operator")["spec"]["template"]["spec"]
    operator_env = env_of(operator["containers"][0])
    assert operator_env["TESSERA_QUEUE_PASSWORD_SECRET"] == "queue-auth"
    assert operator_env["TESSERA_QUEUE_PASSWORD_KEY"] == "pw"


def _s3(r: Rendered) -> None:
    assert r.names("PersistentVolumeClaim") == []
    pod = r.get("Deployment", f"{FULL}-gateway")["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert env["TESSERA_STORAGE"] == "s3://images/tessera"
    assert env["AWS_ENDPOINT_URL_S3"] == "http://seaweedfs:8333"
    assert env["AWS_ACCESS_KEY_ID"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}
    }
    assert "results" not in [v["name"] for v in pod["volumes"]]
    # The operator renders the same bucket, endpoint and keys into its workers.
    operator = r.get("Deployment", f"{FULL}-operator")["spec"]["template"]["spec"]
    operator_env = env_of(operator["containers"][0])
    assert operator_env["TESSERA_RESULTS_URL"] == "s3://images/tessera"
    assert operator_env["TESSERA_S3_ENDPOINT"] == "http://seaweedfs:8333"
    assert operator_env["TESSERA_S3_CREDENTIALS_SECRET"] == "s3-creds"
    assert "TESSERA_RESULTS_CLAIM" not in operator_env


def _crds_not_kept(r: Rendered) -> None:
    crds = [o for o in r.objects if o["kind"] == "CustomResourceDefinition"]
    assert len(crds) == 3
    assert all("annotations" not in c["metadata"] for c in crds)


def _no_crds(r: Rendered) -> None:
    assert r.names("CustomResourceDefinition") == []


def _one_operator(r: Rendered) -> None:
    command = r.get("Deployment", f"{FULL}-operator")["spec"]["template"]["spec"]["containers"]
    assert "--standalone" in command[0]["command"]
    assert r.names("ClusterKopfPeering") == []
    assert r.names("PodDisruptionBudget") == [f"{FULL}-gateway"]


def _given_keys(r: Rendered) -> None:
    assert f"{FULL}-initial-api-key" not in r.names("Secret")
    data = r.get("Secret", f"{FULL}-api-keys")["data"]["keys.json"]
    keys = json.loads(base64.b64decode(data))
    assert keys == {"keys": [{"id": "key_" + "ab" * 5, "sha256": "ab" * 32}]}


def _ingress(r: Rendered) -> None:
    ingress = r.get("Ingress", f"{FULL}-gateway")["spec"]
    assert ingress["tls"] == [{"hosts": ["images.example.com"], "secretName": "images-tls"}]
    env = env_of(
        r.get("Deployment", f"{FULL}-gateway")["spec"]["template"]["spec"]["containers"][0]
    )
    assert env["TESSERA_PUBLIC_URL"] == "https://images.example.com"


def _fixed_gateway(r: Rendered) -> None:
    assert r.names("HorizontalPodAutoscaler") == []
    assert r.get("Deployment", f"{FULL}-gateway")["spec"]["replicas"] == 3


CASES: dict[str, tuple[dict[str, str], Callable[[Rendered], None]]] = {
    "defaults": ({}, _defaults),
    "external redis": (
        {
            "redis.bundled.enabled": "false",
            "redis.external.url": "rediss://redis.example.com:6380/2",
            "redis.external.passwordSecret": "queue-auth",
            "redis.external.passwordKey": "pw",
        },
        _external_redis,
    ),
    "s3": (
        {
            "storage.type": "s3",
            "storage.s3.bucket": "images",
            "storage.s3.prefix": "tessera",
            "storage.s3.endpoint": "http://seaweedfs:8333",
            "storage.s3.credentialsSecret": "s3-creds",
        },
        _s3,
    ),
    "crds.keep off": ({"crds.keep": "false"}, _crds_not_kept),
    "crds.install off": ({"crds.install": "false"}, _no_crds),
    "one operator": ({"operator.replicas": "1"}, _one_operator),
    "given key hashes": ({"apiKeys.sha256[0]": "ab" * 32}, _given_keys),
    "ingress": (
        {
            "gateway.ingress.enabled": "true",
            "gateway.ingress.host": "images.example.com",
            "gateway.ingress.tlsSecretName": "images-tls",
        },
        _ingress,
    ),
    "fixed gateway replicas": (
        {"gateway.autoscaling.enabled": "false", "gateway.replicas": "3"},
        _fixed_gateway,
    ),
}


@pytest.mark.parametrize(("values", "check"), list(CASES.values()), ids=list(CASES))
def test_render(values: dict[str, str], check: Callable[[Rendered], None]) -> None:
    check(render(values))


REFUSED: dict[str, tuple[dict[str, str], str]] = {
    "typo": ({"gateway.replicaz": "3"}, "additional properties 'replicaz' not allowed"),
    "unknown storage": ({"storage.type": "nfs"}, "value must be one of 'file', 's3'"),
    "two queues": (
        {"redis.external.url": "redis://r:6379/0"},
        "redis.bundled.enabled and redis.external.url are both set",
    ),
    "no queue": ({"redis.bundled.enabled": "false"}, "no job queue"),
    "password in url": (
        {"redis.bundled.enabled": "false", "redis.external.url": "redis://:pw@r:6379/0"},
        "without credentials",
    ),
    "s3 without bucket": ({"storage.type": "s3"}, "storage.s3.bucket is empty"),
    "keys given twice": (
        {"apiKeys.existingSecret": "keys", "apiKeys.sha256[0]": "ab" * 32},
        "apiKeys.existingSecret and apiKeys.sha256 are both set",
    ),
    "hpa bounds": (
        {"gateway.autoscaling.minReplicas": "5", "gateway.autoscaling.maxReplicas": "2"},
        "minReplicas (5) exceeds maxReplicas (2)",
    ),
    "ingress without host": ({"gateway.ingress.enabled": "true"}, "needs gateway.ingress.host"),
}


@pytest.mark.parametrize(("values", "message"), list(REFUSED.values()), ids=list(REFUSED))
def test_refused(values: dict[str, str], message: str) -> None:
    with pytest.raises(RenderError, match=re.escape(message)):
        render(values)


def test_generated_key_is_accepted_by_the_gateways_key_file(tmp_path: Path) -> None:
    rendered = render()
    key = base64.b64decode(rendered.get("Secret", f"{FULL}-initial-api-key")["data"]["api-key"])
    key_file = tmp_path / "keys.json"
    key_file.write_bytes(
        base64.b64decode(rendered.get("Secret", f"{FULL}-api-keys")["data"]["keys.json"])
    )
    # Key ids come from the key file (stored ids); the secret only names plain-text keys.
    ring = KeyRing.from_file(key_file, id_secret=b"gateway signing secret")
    assert len(ring) == 1
    assert ring.authenticate(key.decode()).id.startswith("key_")
    with pytest.raises(Unauthorized):
        ring.authenticate(key.decode() + "x")
