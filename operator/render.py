"""Desired objects as pure functions of an ImageModel.

Nothing here talks to the API server: each function takes the parsed model (and the
operator's settings) and returns plain dicts, so every rendering decision is a unit test
away. The handlers add owner references (``kopf.adopt``) and apply the result.

What a model becomes:

- a worker ``Deployment`` running ``tessera worker`` on H100 nodes (GPU requests and limits,
  the product node selector and the GPU taint's toleration, probes on the worker's health
  endpoints, a memory-backed /dev/shm, weights mounted read-only, results written to the
  shared results claim, its health port on the pod's own address, non-root, read-only root
  filesystem, no privilege escalation, a grace period that lets the job in flight finish);
- a ``Service`` in front of the workers' health and metrics port;
- for Hub weights, a ``PersistentVolumeClaim`` and a loader ``Job`` that fills it once; the
  Deployment stays at zero replicas until the Job has finished.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tessera.operator.spec import ImageModel

# Labels and annotations that the operator puts on what it owns.
LABEL_MODEL = "tessera.dev/imagemodel"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "tessera-operator"
COMPONENT_WORKER = "worker"
COMPONENT_LOADER = "weights-loader"
COMPONENT_CACHE = "weights-cache"
ANNOTATION_MODEL_NAME = "tessera.dev/model-name"
ANNOTATION_APPLIED_HASH = "tessera.dev/applied-hash"

WORKER_PORT = 8080
WEIGHTS_MOUNT = "/weights"
RESULTS_MOUNT = "/results"
RUN_AS = 1000
DEFAULT_QUEUE_URL = "redis://tessera-redis:6379/0"
DEFAULT_WORKER_IMAGE = "ghcr.io/tessera-dev/tessera:0.1.0"
# Where workers write result images and the gateway reads them: one ReadWriteMany claim
# per namespace, shared by every model's workers.
DEFAULT_RESULTS_CLAIM = "tessera-results"

# Per GPU: an H100 node (p5.48xlarge) has 192 CPUs and 2 TiB for 8 GPUs; FLUX.1-dev in bf16
# peaks near 36 GB of host memory while loading.
GPU_CPU_PER_DEVICE = 4
GPU_MEMORY_GI_PER_DEVICE = 48
CPU_ONLY_RESOURCES = {"cpu": "2", "memory": "4Gi"}
GPU_SHM = "16Gi"
CPU_SHM = "1Gi"
PROBE_PERIOD = 10
# Paths inside the containers (not this machine's temporary files).
TMP = "/tmp"  # noqa: S108
SHM = "/dev/shm"  # noqa: S108
HF_HOME = f"{TMP}/huggingface"


# The variable a queue URL names its password by, ``redis://:$(REDIS_PASSWORD)@host``: the
# kubelet expands it in a worker's command from the Secret the Deployment refers to, so no
# password is written into a Deployment.
QUEUE_PASSWORD_VARIABLE = "REDIS_PASSWORD"  # noqa: S105 - a variable name, not a password
_VARIABLE_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@dataclass(frozen=True)
class RenderConfig:
    """Operator-wide settings that shape every model's objects."""

    # What workers are given; it may name $(REDIS_PASSWORD), see queue_password_secret.
    queue_url: str = DEFAULT_QUEUE_URL
    worker_image: str = DEFAULT_WORKER_IMAGE
    results_claim: str = DEFAULT_RESULTS_CLAIM
    # The image that downloads Hub weights; it needs the `hf` command (huggingface_hub),
    # which the worker image has.
    loader_image: str | None = None
    # The Secret (in each model's namespace) and key holding the queue's password, which
    # workers get as $(REDIS_PASSWORD); None when the URL needs no password.
    queue_password_secret: tuple[str, str] | None = None
    # s3://BUCKET[/PREFIX]: workers write results there instead of the results claim, with
    # the endpoint and region given and the keys from a Secret (AWS_ACCESS_KEY_ID,
    # AWS_SECRET_ACCESS_KEY; None: the pod's own identity, IRSA or EKS Pod Identity).
    results_url: str | None = None
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_credentials_secret: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RenderConfig:
        env = os.environ if env is None else env
        return cls(
            queue_url=env.get("TESSERA_QUEUE_URL") or DEFAULT_QUEUE_URL,
            worker_image=env.get("TESSERA_WORKER_IMAGE") or DEFAULT_WORKER_IMAGE,
            results_claim=env.get("TESSERA_RESULTS_CLAIM") or DEFAULT_RESULTS_CLAIM,
            loader_image=env.get("TESSERA_LOADER_IMAGE") or None,
            queue_password_secret=(
                (secret, env.get("TESSERA_QUEUE_PASSWORD_KEY") or "password")
                if (secret := env.get("TESSERA_QUEUE_PASSWORD_SECRET"))
                else None
            ),
            results_url=env.get("TESSERA_RESULTS_URL") or None,
            s3_endpoint=env.get("TESSERA_S3_ENDPOINT") or None,
            s3_region=env.get("TESSERA_S3_REGION") or None,
            s3_credentials_secret=env.get("TESSERA_S3_CREDENTIALS_SECRET") or None,
        )

    def own_queue_url(self, env: Mapping[str, str] | None = None) -> str:
        """The queue URL the operator itself connects with: each $(VAR) replaced from its
        own environment, where the chart puts the same Secret's value."""
        env = os.environ if env is None else env
        return _VARIABLE_REFERENCE.sub(
            lambda match: env.get(match.group(1), match.group(0)), self.queue_url
        )


# -- names and labels ---------------------------------------------------------------------


def selector_labels(model: ImageModel) -> dict[str, str]:
    """The worker pods' selector; both keys are immutable, as a Deployment selector must be."""
    return {LABEL_MODEL: model.name, LABEL_COMPONENT: COMPONENT_WORKER}


def labels(model: ImageModel, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tessera",
        "app.kubernetes.io/instance": model.name,
        "app.kubernetes.io/part-of": "tessera",
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_MODEL: model.name,
    }


def selector_string(model: ImageModel) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(model).items()))


def weights_claim_name(model: ImageModel) -> str | None:
    """The claim the workers mount, if the weights live in one."""
    weights = model.spec.weights
    if weights.hugging_face is not None:
        return f"{model.name}-weights"
    if weights.pvc is not None:
        return str(weights.pvc.claim_name)
    return None


def _short_hash(value: Any, length: int = 8) -> str:
    data = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:length]


def weights_job_name(model: ImageModel) -> str | None:
    """``<name>-weights-<hash>``: a new download (repo, revision, files) gets a new Job,
    because a Job's pod template cannot change."""
    hub = model.spec.weights.hugging_face
    if hub is None:
        return None
    key = hub.model_dump(mode="json", include={"repo", "revision", "include", "exclude"})
    return f"{model.name}-weights-{_short_hash(key)}"


def _revision_folder(revision: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", revision)


def weights_path(model: ImageModel) -> str:
    """The pipeline folder (the one holding model_index.json) inside a worker pod."""
    weights = model.spec.weights
    if weights.hugging_face is not None:
        hub = weights.hugging_face
        return f"{WEIGHTS_MOUNT}/{hub.repo}/{_revision_folder(hub.revision)}"
    if weights.pvc is not None:
        return f"{WEIGHTS_MOUNT}/{weights.pvc.path}".rstrip("/") or WEIGHTS_MOUNT
    if weights.image is not None and weights.image.mode == "volume":
        return f"{WEIGHTS_MOUNT}{weights.image.path}".rstrip("/")
    if weights.demo is not None:
        return f"{WEIGHTS_MOUNT}/pipeline"
    return WEIGHTS_MOUNT


def endpoint(model: ImageModel) -> str:
    return f"http://{model.name}.{model.namespace}.svc:{WORKER_PORT}"


# -- the worker ---------------------------------------------------------------------------


def worker_command(model: ImageModel, config: RenderConfig) -> list[str]:
    spec = model.spec
    command = [
        "tessera",
        "worker",
        "--model",
        model.model_name,
        "--weights",
        weights_path(model),
        "--queue",
        config.queue_url,
        "--queue-name",
        model.queue_name,
        "--storage",
        config.results_url or RESULTS_MOUNT,
        "--task",
        spec.task.value,
        "--host",
        "$(POD_IP)",
        "--port",
        str(WORKER_PORT),
        "--device",
        model.device,
    ]
    if spec.pipeline.dtype != "auto":
        command += ["--dtype", spec.pipeline.dtype]
    if spec.batch.max_size > 1:  # one job per call is the worker's default
        command += [
            "--batch-max-size",
            str(spec.batch.max_size),
            "--batch-max-wait-ms",
            str(spec.batch.max_wait_ms),
        ]
    return command + list(spec.worker.args)


def pipeline_options(model: ImageModel) -> dict[str, Any]:
    """What ``TESSERA_PIPELINE`` carries: the loading options beyond the worker's flags."""
    options: dict[str, Any] = model.spec.pipeline.model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    return options


def worker_env(model: ImageModel, config: RenderConfig) -> list[dict[str, Any]]:
    """The operator's variables, then the spec's; a name in the spec replaces ours."""
    spec = model.spec
    ours: list[dict[str, Any]] = []
    if config.queue_password_secret is not None:
        name, key = config.queue_password_secret
        reference = {"secretKeyRef": {"name": name, "key": key}}
        ours.append({"name": QUEUE_PASSWORD_VARIABLE, "valueFrom": reference})
    ours += _s3_env(config)
    ours += [
        # The health port listens on the pod's own address (``--host $(POD_IP)``).
        {
            "name": "POD_IP",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}},
        },
        {
            "name": "TESSERA_MODEL_PARAMETERS",
            "value": spec.parameters.model_dump_json(by_alias=True),
        },
        {"name": "TESSERA_PRICE_PER_PATCH", "value": str(spec.price_per_patch)},
        {"name": "TESSERA_PIPELINE", "value": _compact(pipeline_options(model))},
        {"name": "TESSERA_NAMESPACE", "value": model.namespace},
        {
            "name": "TESSERA_WORKER_ID",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
        },
        # The root filesystem is read-only: caches go to /tmp, and the Hub is never asked.
        {"name": "HOME", "value": TMP},
        {"name": "HF_HOME", "value": HF_HOME},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
    ]
    given = {env.name: env.model_dump(by_alias=True, exclude_none=True) for env in spec.worker.env}
    merged = [given.pop(item["name"], item) for item in ours]
    return merged + list(given.values())


def _s3_env(config: RenderConfig) -> list[dict[str, Any]]:
    """What a worker writing results to S3 needs: the endpoint, the region, the keys."""
    if config.results_url is None:
        return []
    env: list[dict[str, Any]] = []
    if config.s3_endpoint:
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": config.s3_endpoint})
    if config.s3_region:
        env.append({"name": "AWS_REGION", "value": config.s3_region})
    if config.s3_credentials_secret:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            reference = {"secretKeyRef": {"name": config.s3_credentials_secret, "key": key}}
            env.append({"name": key, "valueFrom": reference})
    return env


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def worker_resources(model: ImageModel) -> dict[str, dict[str, str]]:
    gpu = model.spec.gpu
    if gpu.count > 0:
        memory = f"{GPU_MEMORY_GI_PER_DEVICE * gpu.count}Gi"
        requests = {"cpu": str(GPU_CPU_PER_DEVICE * gpu.count), "memory": memory}
        limits = {"memory": memory}
    else:
        requests = dict(CPU_ONLY_RESOURCES)
        limits = {"memory": CPU_ONLY_RESOURCES["memory"]}
    requests |= model.spec.worker.resources.requests
    limits |= model.spec.worker.resources.limits
    if gpu.count > 0:
        # Extended resources: requests must equal limits; the count is the spec's alone.
        requests[gpu.resource_name] = limits[gpu.resource_name] = str(gpu.count)
    return {"requests": dict(sorted(requests.items())), "limits": dict(sorted(limits.items()))}


def _security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        # A large weights volume is not re-chowned on every start.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def probes(model: ImageModel) -> dict[str, dict[str, Any]]:
    """Startup waits for the pipeline to load (readyz) for up to startupTimeoutSeconds;
    then liveness watches the process (healthz) and readiness the pipeline (readyz)."""
    startup_failures = max(1, math.ceil(model.spec.worker.startup_timeout_seconds / PROBE_PERIOD))

    def get(path: str) -> dict[str, Any]:
        return {"path": path, "port": "http", "scheme": "HTTP"}

    return {
        "startupProbe": {
            "httpGet": get("/readyz"),
            "periodSeconds": PROBE_PERIOD,
            "timeoutSeconds": 5,
            "failureThreshold": startup_failures,
        },
        "livenessProbe": {
            "httpGet": get("/healthz"),
            "periodSeconds": 20,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": get("/readyz"),
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
    }


def _weights_volume_and_init(
    model: ImageModel, config: RenderConfig
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``weights`` volume, and the init containers that fill it, per source."""
    weights = model.spec.weights
    image = model.spec.worker.image or config.worker_image
    if weights.hugging_face is not None or weights.pvc is not None:
        claim = weights_claim_name(model)
        volume = {
            "name": "weights",
            "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
        }
        return volume, []
    if weights.image is not None and weights.image.mode == "volume":
        source = {"reference": weights.image.reference, "pullPolicy": weights.image.pull_policy}
        return {"name": "weights", "image": source}, []
    volume = {"name": "weights", "emptyDir": {}}
    if weights.image is not None:
        init: dict[str, Any] = {
            "name": "copy-weights",
            "image": weights.image.reference,
            "imagePullPolicy": weights.image.pull_policy,
            "command": ["cp", "-R", f"{weights.image.path.rstrip('/')}/.", f"{WEIGHTS_MOUNT}/"],
        }
    else:
        init = {
            "name": "demo-weights",
            "image": image,
            "imagePullPolicy": model.spec.worker.image_pull_policy,
            "command": [
                "tessera",
                "demo-model",
                weights_path(model),
                "--task",
                model.spec.task.value,
            ],
            "env": [{"name": "HOME", "value": TMP}],
        }
    init |= {
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
        "securityContext": _security_context(),
        "volumeMounts": [
            {"name": "weights", "mountPath": WEIGHTS_MOUNT},
            {"name": "tmp", "mountPath": TMP},
        ],
    }
    return volume, [init]


def _scheduling(model: ImageModel) -> dict[str, Any]:
    gpu = model.spec.gpu
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    if gpu.count > 0:
        if gpu.product:
            node_selector["nvidia.com/gpu.product"] = gpu.product
        tolerations.append({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})
    node_selector |= gpu.node_selector
    tolerations += [t.model_dump(by_alias=True, exclude_none=True) for t in gpu.tolerations]
    scheduling: dict[str, Any] = {}
    if node_selector:
        scheduling["nodeSelector"] = dict(sorted(node_selector.items()))
    if tolerations:
        scheduling["tolerations"] = tolerations
    if gpu.affinity:
        scheduling["affinity"] = gpu.affinity
    if gpu.priority_class_name:
        scheduling["priorityClassName"] = gpu.priority_class_name
    if gpu.runtime_class_name:
        scheduling["runtimeClassName"] = gpu.runtime_class_name
    return scheduling


def deployment(
    model: ImageModel, config: RenderConfig, *, weights_ready: bool = True
) -> dict[str, Any]:
    """The worker Deployment; held at zero replicas while the weights are not ready."""
    spec = model.spec
    worker = spec.worker
    shm = worker.shm_size or (GPU_SHM if spec.gpu.count > 0 else CPU_SHM)
    weights_volume, init_containers = _weights_volume_and_init(model, config)
    container: dict[str, Any] = {
        "name": "worker",
        "image": worker.image or config.worker_image,
        "imagePullPolicy": worker.image_pull_policy,
        "command": worker_command(model, config),
        "env": worker_env(model, config),
        "ports": [{"name": "http", "containerPort": WORKER_PORT, "protocol": "TCP"}],
        "resources": worker_resources(model),
        **probes(model),
        "securityContext": _security_context(),
        "volumeMounts": [
            {"name": "weights", "mountPath": WEIGHTS_MOUNT, "readOnly": True},
            {"name": "dshm", "mountPath": SHM},
            {"name": "tmp", "mountPath": TMP},
        ],
    }
    volumes = [
        weights_volume,
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "32Gi"}},
    ]
    if config.results_url is None:
        container["volumeMounts"].insert(1, {"name": "results", "mountPath": RESULTS_MOUNT})
        claim = {"persistentVolumeClaim": {"claimName": config.results_claim}}
        volumes.insert(1, {"name": "results", **claim})
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": worker.termination_grace_period_seconds,
        "securityContext": _pod_security_context(),
        **_scheduling(model),
    }
    if worker.service_account_name:
        pod_spec["serviceAccountName"] = worker.service_account_name
    if worker.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in worker.image_pull_secrets]
    if init_containers:
        pod_spec["initContainers"] = init_containers
    pod_spec["containers"] = [container]
    pod_spec["volumes"] = volumes
    pod_annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(WORKER_PORT),
        "prometheus.io/path": "/metrics",
        ANNOTATION_MODEL_NAME: model.model_name,
    } | worker.pod_annotations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _worker_metadata(model),
        "spec": {
            "replicas": model.desired_replicas if weights_ready else 0,
            "selector": {"matchLabels": selector_labels(model)},
            "revisionHistoryLimit": 3,
            # Loading a large pipeline legitimately takes minutes.
            "progressDeadlineSeconds": worker.startup_timeout_seconds + 600,
            # No replica goes before its successor serves; in a full cluster the surge pod
            # waits (and status says so) instead of the model going dark.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": worker.pod_labels | labels(model, COMPONENT_WORKER),
                    "annotations": pod_annotations,
                },
                "spec": pod_spec,
            },
        },
    }


def _worker_metadata(model: ImageModel) -> dict[str, Any]:
    """The Deployment's and the Service's: both are named after the model and carry it."""
    return {
        "name": model.name,
        "namespace": model.namespace,
        "labels": labels(model, COMPONENT_WORKER),
        "annotations": {ANNOTATION_MODEL_NAME: model.model_name},
    }


def service(model: ImageModel) -> dict[str, Any]:
    """The workers' health and metrics endpoint (clients go through the gateway).

    Headless: workers pull jobs from the queue, so nothing load-balances to them; the name
    resolves to every ready worker (what a metrics scraper wants), and a fleet of models
    uses no cluster IPs (allocating hundreds of them at once also took seconds each).
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _worker_metadata(model),
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "None",
            "selector": selector_labels(model),
            "ports": [
                {"name": "http", "port": WORKER_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


# -- the weights cache --------------------------------------------------------------------


def weights_claim(model: ImageModel) -> dict[str, Any] | None:
    """The claim a loader Job fills with Hub weights; None for other sources."""
    hub = model.spec.weights.hugging_face
    if hub is None:
        return None
    spec: dict[str, Any] = {
        "accessModes": list(hub.cache.access_modes),
        "resources": {"requests": {"storage": hub.cache.size}},
        "volumeMode": "Filesystem",
    }
    if hub.cache.storage_class_name:
        spec["storageClassName"] = hub.cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": weights_claim_name(model),
            "namespace": model.namespace,
            "labels": labels(model, COMPONENT_CACHE),
        },
        "spec": spec,
    }


def loader_command(model: ImageModel) -> list[str]:
    hub = model.spec.weights.hugging_face
    assert hub is not None
    command = ["hf", "download", hub.repo, "--revision", hub.revision]
    command += ["--local-dir", weights_path(model)]
    if hub.include:
        command += ["--include", *hub.include]
    if hub.exclude:
        command += ["--exclude", *hub.exclude]
    return command


def weights_job(model: ImageModel, config: RenderConfig) -> dict[str, Any] | None:
    """A Job that downloads the repository into the claim once (retries resume)."""
    hub = model.spec.weights.hugging_face
    if hub is None:
        return None
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": TMP},
        {"name": "HF_HOME", "value": HF_HOME},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
    ]
    if hub.token_secret_ref is not None:
        ref = hub.token_secret_ref
        env.append(
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        )
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security_context(),
        "containers": [
            {
                "name": "download",
                "image": config.loader_image or model.spec.worker.image or config.worker_image,
                "imagePullPolicy": model.spec.worker.image_pull_policy,
                "command": loader_command(model),
                "env": env,
                "resources": {
                    "requests": {"cpu": "1", "memory": "2Gi"},
                    "limits": {"memory": "4Gi"},
                },
                "securityContext": _security_context(),
                "volumeMounts": [
                    {"name": "weights", "mountPath": WEIGHTS_MOUNT},
                    {"name": "tmp", "mountPath": TMP},
                ],
            }
        ],
        "volumes": [
            {"name": "weights", "persistentVolumeClaim": {"claimName": weights_claim_name(model)}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if model.spec.worker.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [
            {"name": s.name} for s in model.spec.worker.image_pull_secrets
        ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": weights_job_name(model),
            "namespace": model.namespace,
            "labels": labels(model, COMPONENT_LOADER),
            "annotations": {"tessera.dev/weights": f"{hub.repo}@{hub.revision}"},
        },
        "spec": {
            "backoffLimit": 6,
            "template": {
                "metadata": {"labels": labels(model, COMPONENT_LOADER)},
                "spec": pod_spec,
            },
        },
    }


def desired_objects(
    model: ImageModel, config: RenderConfig, *, weights_ready: bool
) -> list[dict[str, Any]]:
    """Everything the model should own, in the order to apply it."""
    objects = [weights_claim(model), weights_job(model, config)]
    objects += [deployment(model, config, weights_ready=weights_ready), service(model)]
    return [obj for obj in objects if obj is not None]


def content_hash(obj: Mapping[str, Any]) -> str:
    """A stable digest of a desired object, stamped on it so an unchanged spec is no write."""
    return _short_hash(obj, length=16)
