"""Rendering rules of charts/tessera, table-driven over ``helm template`` (no cluster)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tessera.operator.render import (
    COMPONENT_WORKER,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    WORKER_PORT,
)
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


@pytest.mark.parametrize(
    "values",
    [{}, {"usageExporter.enabled": "true", "usageExporter.to": "http://meter/api/v1/events"}],
    ids=["defaults", "usage exporter"],
)
def test_every_container_names_its_command_and_runs_locked_down(values: dict[str, str]) -> None:
    for owner, pod in render(values).pod_specs().items():
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
    assert r.names("Job") == []  # no peering, so nothing to delete at uninstall
    assert r.names("PodDisruptionBudget") == [f"{FULL}-gateway"]


def _given_keys(r: Rendered) -> None:
    assert f"{FULL}-initial-api-key" not in r.names("Secret")
    data = r.get("Secret", f"{FULL}-api-keys")["data"]["keys.json"]
    keys = json.loads(base64.b64decode(data))
    # Keys given are ordinary ones: whoever gives them marks an admin in their own file.
    # No ids: the gateway names each key from the key, under its secret.
    assert keys == {"keys": [{"sha256": "ab" * 32, "admin": False}]}


def _given_admin_keys(r: Rendered) -> None:
    assert f"{FULL}-initial-api-key" not in r.names("Secret")
    data = r.get("Secret", f"{FULL}-api-keys")["data"]["keys.json"]
    assert json.loads(base64.b64decode(data))["keys"] == [
        {"sha256": "ab" * 32, "admin": False},
        {"sha256": "cd" * 32, "admin": True},
    ]
    assert r.names("Pod") == []  # no plain key for the test hook


def _peering_deleted_before_uninstall(r: Rendered) -> None:
    name = f"{FULL}-delete-peering"
    hooks = {
        f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["annotations"]
        for o in r.objects
        if o["metadata"]["name"] == name
    }
    kinds = ("ClusterRole", "ClusterRoleBinding", "Job", "ServiceAccount")
    assert sorted(hooks) == [f"{kind}/{name}" for kind in kinds]
    for kind_name, hook in hooks.items():
        assert hook["helm.sh/hook"] == "pre-delete", kind_name
        assert hook["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
        # The account and its rights exist before the Job that uses them.
        assert hook["helm.sh/hook-weight"] == ("0" if kind_name.startswith("Job") else "-1")
    # It may delete the release's peering object and nothing else.
    assert r.get("ClusterRole", name)["rules"] == [
        {
            "apiGroups": ["kopf.dev"],
            "resources": ["clusterkopfpeerings"],
            "resourceNames": [FULL],
            "verbs": ["delete"],
        }
    ]
    pod = r.pod_specs()[f"Job/{name}"]
    assert pod["serviceAccountName"] == name
    [container] = pod["containers"]
    assert container["command"] == ["python", "-c", (CHART / "files/delete-peering.py").read_text()]
    assert env_of(container)["TESSERA_PEERING"] == FULL
    assert r.get("ClusterKopfPeering", FULL)["metadata"]["name"] == FULL


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


# What the operator puts on every model's worker pods and Services: the chart's worker
# ServiceMonitor and NetworkPolicy select them by it.
WORKER_LABELS = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: COMPONENT_WORKER}
DASHBOARD = REPO / "docs" / "grafana" / "tessera.json"


def _container(r: Rendered, component: str) -> dict[str, Any]:
    return r.get("Deployment", f"{FULL}-{component}")["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def _flag(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command else None


def _monitoring_defaults(r: Rendered) -> None:
    # Metrics endpoints and the dashboard need no CRD: on. ServiceMonitors and rules: off.
    for component, port in (("gateway", 9090), ("operator", 9091)):
        container = _container(r, component)
        assert _flag(container["command"], "--metrics-port") == str(port), component
        assert {"name": "metrics", "containerPort": port} in container["ports"], component
        service = r.get("Service", f"{FULL}-{component}-metrics")["spec"]
        assert service["ports"] == [{"name": "metrics", "port": port, "targetPort": "metrics"}]
        assert service["selector"]["app.kubernetes.io/component"] == component
    assert _flag(_container(r, "gateway")["command"], "--metrics-host") == "0.0.0.0"
    assert r.names("ServiceMonitor") == r.names("PrometheusRule") == []
    dashboard = r.get("ConfigMap", f"{FULL}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["tessera.json"]) == json.loads(DASHBOARD.read_text())
    assert r.names("NetworkPolicy") == []
    assert all("priorityClassName" not in pod for pod in r.pod_specs().values())


def _metrics_off(r: Rendered) -> None:
    assert "--metrics-port" not in _container(r, "gateway")["command"]
    assert "--metrics-port" not in _container(r, "operator")["command"]
    assert f"{FULL}-gateway-metrics" not in r.names("Service")
    assert r.names("ConfigMap") == []


def _service_monitors(r: Rendered) -> None:
    assert r.names("ServiceMonitor") == [f"{FULL}-gateway", f"{FULL}-operator", f"{FULL}-workers"]
    for name in r.names("ServiceMonitor"):
        monitor = r.get("ServiceMonitor", name)
        assert monitor["metadata"]["labels"]["release"] == "kps", name
        assert monitor["spec"]["endpoints"][0]["interval"] == "15s", name
    for component in ("gateway", "operator"):
        selector = r.get("ServiceMonitor", f"{FULL}-{component}")["spec"]["selector"]
        service = r.get("Service", f"{FULL}-{component}-metrics")
        assert selector["matchLabels"].items() <= service["metadata"]["labels"].items()
        # The workload's own Service is not scraped twice.
        assert (
            not selector["matchLabels"].items()
            <= r.get("Service", f"{FULL}-gateway")["metadata"]["labels"].items()
        )
    operator = r.get("ServiceMonitor", f"{FULL}-operator")["spec"]["endpoints"][0]
    assert operator["honorLabels"] is True  # the gauges' namespace is the ImageModel's
    workers = r.get("ServiceMonitor", f"{FULL}-workers")["spec"]
    assert workers["selector"]["matchLabels"] == WORKER_LABELS
    assert workers["namespaceSelector"] == {"matchNames": ["models-a", "models-b"]}
    assert workers["endpoints"][0]["port"] == "http"


def _rules(r: Rendered) -> None:
    rules = r.get("PrometheusRule", FULL)["spec"]["groups"][0]["rules"]
    by_name = {rule["alert"]: rule for rule in rules}
    assert sorted(by_name) == [
        "TesseraBacklogGrowing",
        "TesseraJobsFailing",
        "TesseraModelUnschedulable",
        "TesseraNoReadyWorker",
    ]
    assert by_name["TesseraBacklogGrowing"]["for"] == "30m"
    assert by_name["TesseraNoReadyWorker"]["for"] == "20m"
    assert by_name["TesseraJobsFailing"]["expr"].rstrip().endswith("> 25")
    # Prometheus's own template syntax reaches it untouched by Helm's.
    assert "{{ $labels.model }}" in by_name["TesseraNoReadyWorker"]["annotations"]["summary"]


def _network_policies(r: Rendered) -> None:
    assert r.names("NetworkPolicy") == [
        f"{FULL}-gateway",
        f"{FULL}-operator",
        f"{FULL}-redis",
        f"{FULL}-workers",
    ]
    redis_pods = {
        "podSelector": {
            "matchLabels": r.get("StatefulSet", f"{FULL}-redis")["spec"]["selector"]["matchLabels"]
        }
    }
    api_ports = [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}]
    for name in ("gateway", "operator", "workers"):
        policy = r.get("NetworkPolicy", f"{FULL}-{name}")["spec"]
        assert policy["policyTypes"] == ["Ingress", "Egress"], name
        egress = policy["egress"]
        assert egress[0]["ports"] == [
            {"protocol": "UDP", "port": 53},
            {"protocol": "TCP", "port": 53},
        ], name
        assert {"to": [redis_pods], "ports": [{"protocol": "TCP", "port": 6379}]} in egress, name
        # file storage is a volume: no S3 rule; only the gateway and the operator watch.
        to_api = {"ports": api_ports} in egress
        assert to_api is (name != "workers"), name
        assert len(egress) == (3 if to_api else 2), name
    workers = r.get("NetworkPolicy", f"{FULL}-workers")["spec"]
    assert workers["podSelector"] == {"matchLabels": WORKER_LABELS}
    assert workers["ingress"] == [{"ports": [{"protocol": "TCP", "port": WORKER_PORT}]}]
    redis = r.get("NetworkPolicy", f"{FULL}-redis")["spec"]
    assert redis["egress"] == []
    allowed = redis["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": WORKER_LABELS}} in allowed
    for component in ("gateway", "operator"):
        pods = r.get("Deployment", f"{FULL}-{component}")["spec"]["selector"]
        assert {"podSelector": pods} in allowed, component


def _network_policies_elsewhere(r: Rendered) -> None:
    # An external Redis and S3 behind given CIDRs; callers and scrapers narrowed.
    gateway = r.get("NetworkPolicy", f"{FULL}-gateway")["spec"]
    assert {
        "ports": [{"protocol": "TCP", "port": 6380}],
        "to": [{"ipBlock": {"cidr": "10.1.0.0/16"}}],
    } in gateway["egress"]
    assert {
        "ports": [{"protocol": "TCP", "port": 8333}],
        "to": [{"ipBlock": {"cidr": "10.2.0.0/16"}}],
    } in gateway["egress"]
    assert {
        "ports": [{"protocol": "TCP", "port": 6443}],
        "to": [{"ipBlock": {"cidr": "10.96.0.1/32"}}],
    } in gateway["egress"]
    api, metrics = gateway["ingress"]
    ingress_ns = {"namespaceSelector": {"matchLabels": {"team": "ingress"}}}
    test_pod = r.get("Pod", f"{FULL}-test-generate")["metadata"]["labels"]
    assert api["from"][0] == ingress_ns
    assert api["from"][1]["podSelector"]["matchLabels"].items() <= test_pod.items()
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}]
    assert f"{FULL}-redis" not in r.names("NetworkPolicy")


def _priority_classes(r: Rendered) -> None:
    pods = r.pod_specs()
    assert pods[f"Deployment/{FULL}-operator"]["priorityClassName"] == "tessera-control"
    assert pods[f"Deployment/{FULL}-gateway"]["priorityClassName"] == "tessera-api"
    assert pods[f"StatefulSet/{FULL}-redis"]["priorityClassName"] == "tessera-queue"


def _test_hook(r: Rendered) -> None:
    pod = r.get("Pod", f"{FULL}-test-generate")
    env = env_of(pod["spec"]["containers"][0])
    assert env["TESSERA_BASE_URL"] == f"http://{FULL}-gateway.tessera.svc:80/v1"
    assert env["TESSERA_TEST_MODEL"] == "tessera-demo"
    assert env["TESSERA_API_KEY"] == {
        "secretKeyRef": {"name": f"{FULL}-initial-api-key", "key": "api-key"}
    }
    assert pod["spec"]["restartPolicy"] == "Never"


def _test_hook_given_key(r: Rendered) -> None:
    env = env_of(r.get("Pod", f"{FULL}-test-generate")["spec"]["containers"][0])
    assert env["TESSERA_API_KEY"] == {"secretKeyRef": {"name": "ci-key", "key": "key"}}
    assert env["TESSERA_TEST_MODEL"] == "sdxl"


def _no_test_hook(r: Rendered) -> None:
    # Keys given as hashes: there is no plain key to test with.
    assert r.names("Pod") == []


def _usage_exporter(r: Rendered) -> None:
    deployment = r.get("Deployment", f"{FULL}-usage-exporter")["spec"]
    assert deployment["replicas"] == 1
    assert deployment["strategy"] == {"type": "Recreate"}  # one pusher per store
    container = deployment["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["tessera", "usage", "push"]
    assert _flag(container["command"], "--to") == "https://meter.example.com/api/v1/events"
    env = env_of(container)
    assert env["TESSERA_QUEUE"] == f"redis://:$(REDIS_PASSWORD)@{FULL}-redis.tessera.svc:6379/0"
    assert env["TESSERA_PUSH_TOKEN"] == {"secretKeyRef": {"name": "meter", "key": "token"}}
    policy = r.get("NetworkPolicy", f"{FULL}-usage-exporter")["spec"]
    assert policy["ingress"] == []
    assert {"ports": [{"protocol": "TCP", "port": 443}]} in policy["egress"]
    redis_from = r.get("NetworkPolicy", f"{FULL}-redis")["spec"]["ingress"][0]["from"]
    assert {"podSelector": deployment["selector"]} in redis_from


def _no_usage_exporter(r: Rendered) -> None:
    assert f"{FULL}-usage-exporter" not in r.names("Deployment")


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
    "given admin key hashes": (
        {"apiKeys.sha256[0]": "ab" * 32, "apiKeys.adminSha256[0]": "cd" * 32},
        _given_admin_keys,
    ),
    "peering deleted before uninstall": ({}, _peering_deleted_before_uninstall),
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
    "monitoring defaults": ({}, _monitoring_defaults),
    "metrics off": (
        {"monitoring.metrics.enabled": "false", "monitoring.dashboard.enabled": "false"},
        _metrics_off,
    ),
    "service monitors": (
        {
            "monitoring.serviceMonitor.enabled": "true",
            "monitoring.serviceMonitor.interval": "15s",
            "monitoring.serviceMonitor.labels.release": "kps",
            "monitoring.serviceMonitor.workerNamespaces": "{models-a,models-b}",
        },
        _service_monitors,
    ),
    "rules": (
        {
            "monitoring.prometheusRule.enabled": "true",
            "monitoring.prometheusRule.backlogGrowingFor": "30m",
            "monitoring.prometheusRule.noReadyWorkerFor": "20m",
            "monitoring.prometheusRule.failedJobsPercent": "25",
        },
        _rules,
    ),
    "network policies": ({"networkPolicy.enabled": "true"}, _network_policies),
    "network policies elsewhere": (
        {
            "networkPolicy.enabled": "true",
            "redis.bundled.enabled": "false",
            "redis.external.url": "redis://redis.example.com:6380/0",
            "networkPolicy.externalRedisCidrs[0]": "10.1.0.0/16",
            "storage.type": "s3",
            "storage.s3.bucket": "images",
            "networkPolicy.s3Cidrs[0]": "10.2.0.0/16",
            "networkPolicy.s3Port": "8333",
            "networkPolicy.apiServerCidrs[0]": "10.96.0.1/32",
            "networkPolicy.apiServerPorts[0]": "6443",
            "networkPolicy.gatewayFrom[0].namespaceSelector.matchLabels.team": "ingress",
            "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team": "monitoring",
        },
        _network_policies_elsewhere,
    ),
    "priority classes": (
        {
            "operator.priorityClassName": "tessera-control",
            "gateway.priorityClassName": "tessera-api",
            "redis.bundled.priorityClassName": "tessera-queue",
        },
        _priority_classes,
    ),
    "usage exporter": (
        {
            "usageExporter.enabled": "true",
            "usageExporter.to": "https://meter.example.com/api/v1/events",
            "usageExporter.tokenSecret": "meter",
            "networkPolicy.enabled": "true",
        },
        _usage_exporter,
    ),
    "no usage exporter by default": ({}, _no_usage_exporter),
    "test hook": ({}, _test_hook),
    "test hook with a given key": (
        {
            "apiKeys.existingSecret": "keys",
            "helmTest.apiKeySecret": "ci-key",
            "helmTest.apiKeySecretKey": "key",
            "helmTest.model": "sdxl",
        },
        _test_hook_given_key,
    ),
    "no test hook without a plain key": ({"apiKeys.sha256[0]": "ab" * 32}, _no_test_hook),
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
        "apiKeys.existingSecret is set together with apiKeys.sha256 or apiKeys.adminSha256",
    ),
    "admin keys given twice": (
        {"apiKeys.existingSecret": "keys", "apiKeys.adminSha256[0]": "ab" * 32},
        "apiKeys.existingSecret is set together with apiKeys.sha256 or apiKeys.adminSha256",
    ),
    "key hash not hex": ({"apiKeys.sha256[0]": "zz"}, "'/apiKeys/sha256/0': 'zz' does not match"),
    # The gateways compare lower-case digests: an upper-case hash would never match a key.
    "upper-case key hash": (
        {"apiKeys.adminSha256[0]": "AB" * 32},
        f"'/apiKeys/adminSha256/0': '{'AB' * 32}' does not match pattern '^[0-9a-f]{{64}}$'",
    ),
    "key hash twice": (
        {"apiKeys.sha256[0]": "ab" * 32, "apiKeys.sha256[1]": "ab" * 32},
        "'/apiKeys/sha256': items at 0 and 1 are equal",
    ),
    "key both plain and admin": (
        {"apiKeys.sha256[0]": "ab" * 32, "apiKeys.adminSha256[0]": "ab" * 32},
        f"apiKeys.sha256 and apiKeys.adminSha256 both list {'ab' * 32}",
    ),
    "more keys than a Secret holds well": (
        {"apiKeys.sha256": "{" + ",".join(f"{n:064x}" for n in range(1001)) + "}"},
        "'/apiKeys/sha256': maxItems: got 1,001, want 1,000",
    ),
    "hpa bounds": (
        {"gateway.autoscaling.minReplicas": "5", "gateway.autoscaling.maxReplicas": "2"},
        "minReplicas (5) exceeds maxReplicas (2)",
    ),
    "ingress without host": ({"gateway.ingress.enabled": "true"}, "needs gateway.ingress.host"),
    "service monitors without metrics": (
        {"monitoring.serviceMonitor.enabled": "true", "monitoring.metrics.enabled": "false"},
        "monitoring.serviceMonitor.enabled needs monitoring.metrics.enabled",
    ),
    "rules without metrics": (
        {"monitoring.prometheusRule.enabled": "true", "monitoring.metrics.enabled": "false"},
        "monitoring.prometheusRule.enabled needs monitoring.metrics.enabled",
    ),
    "metrics on the API port": (
        {"monitoring.metrics.gatewayPort": "8000"},
        "monitoring.metrics.gatewayPort and gateway.port are both 8000",
    ),
    "metrics on the liveness port": (
        {"monitoring.metrics.operatorPort": "8081"},
        "8081 is the operator's liveness port",
    ),
    "duration in words": (
        {"monitoring.prometheusRule.backlogGrowingFor": "15 minutes"},
        "backlogGrowingFor",
    ),
    "percent over 100": ({"monitoring.prometheusRule.failedJobsPercent": "101"}, "maximum"),
    "exporter without receiver": (
        {"usageExporter.enabled": "true"},
        "usageExporter.enabled needs usageExporter.to",
    ),
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
    ring = KeyRing.from_file(key_file, id_secret=b"gateway signing secret")
    assert len(ring) == 1
    identity = ring.authenticate(key.decode())
    # Named under the gateway's secret as a plain-text key is, never from the hash alone,
    # which sits in the Secret and in the values.
    plain = KeyRing.from_keys([key.decode()], b"gateway signing secret")
    assert identity.id == plain.authenticate(key.decode()).id
    digest = hashlib.sha256(key).hexdigest()
    assert identity.id.startswith("key_") and digest[:10] not in identity.id
    # The installer's key: it may read everyone's usage (GET /v1/usage).
    assert identity.admin is True
    with pytest.raises(Unauthorized):
        ring.authenticate(key.decode() + "x")


def test_changed_keys_roll_the_gateways_and_nothing_else_does() -> None:
    """The gateway reads its key file once, at start: new keys must restart it, and a
    render with the same values (the generated key aside) must not."""

    def template(values: dict[str, str] | None = None) -> dict[str, Any]:
        return render(values).get("Deployment", f"{FULL}-gateway")["spec"]["template"]

    default = template()
    assert template() == default, "two renders of the same values differ"
    rotated = template({"apiKeys.sha256[0]": "ab" * 32})
    assert rotated["metadata"]["annotations"] != default["metadata"]["annotations"]
    assert {**rotated, "metadata": {}} == {**default, "metadata": {}}
