"""The ImageModel resource as typed, validated models: the one description of a model.

The CRD (``crds/imagemodel.yaml``) is the source of truth; these models mirror it field for
field, with the same defaults, so that an object the API server accepted parses here and a
bare dict in a unit test means the same as the defaulted object. ``spec.parameters`` *is*
the runtime's ``ParameterLimits``, so the gateway and the workers enforce exactly what the
resource says.

They live in the runtime, not the operator, because the gateway reads the same documents
(from the cluster, or from YAML files when there is none) and must not need kopf.
``parse`` turns a resource body into an ``ImageModel`` or raises ``InvalidImageModel``; the
operator turns that into a ``kopf.PermanentError``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from tessera.runtime.models import DEFAULT_PRICE_PER_PATCH, ModelSpec, queue_name_of
from tessera.runtime.params import ParameterLimits, Task
from tessera.runtime.worker.options import BatchOptions, PipelineOptions

GROUP = "tessera.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ImageModel"
PLURAL = "imagemodels"

H100_PRODUCT = "NVIDIA-H100-80GB-HBM3"
GPU_RESOURCE = "nvidia.com/gpu"

PullPolicy = Literal["Always", "IfNotPresent", "Never"]
WeightsSource = Literal["huggingFace", "pvc", "image", "demo"]

_DECIMAL = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,18})?$")


class InvalidImageModel(ValueError):
    """The resource cannot be served as written; the message names the field and the rule."""


class _Spec(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class SecretKeyRef(_Spec):
    name: str = Field(min_length=1, max_length=253)
    key: str = Field(default="token", min_length=1, max_length=253)


class WeightsCache(_Spec):
    size: str = "200Gi"
    storage_class_name: str | None = None
    access_modes: tuple[str, ...] = ("ReadWriteMany",)


class HuggingFaceWeights(_Spec):
    repo: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+$")
    revision: str = Field(default="main", min_length=1, max_length=200)
    token_secret_ref: SecretKeyRef | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    cache: WeightsCache = WeightsCache()


class PVCWeights(_Spec):
    claim_name: str = Field(min_length=1, max_length=253)
    path: str = Field(default="", pattern=r"^([^/.][^:]*)?$")


class ImageWeights(_Spec):
    reference: str = Field(min_length=1, max_length=512)
    path: str = Field(default="/weights", pattern=r"^/")
    mode: Literal["copy", "volume"] = "copy"
    pull_policy: PullPolicy = "IfNotPresent"


class DemoWeights(_Spec):
    pass


class Weights(_Spec):
    hugging_face: HuggingFaceWeights | None = None
    pvc: PVCWeights | None = None
    image: ImageWeights | None = None
    demo: DemoWeights | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [name for name in ("hugging_face", "pvc", "image", "demo") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(
                "spec.weights must name exactly one source: huggingFace, pvc, image or demo"
            )
        return self

    @property
    def source(self) -> WeightsSource:
        if self.hugging_face is not None:
            return "huggingFace"
        if self.pvc is not None:
            return "pvc"
        if self.image is not None:
            return "image"
        return "demo"


# Shared with the worker, which reads it back from TESSERA_PIPELINE.
Pipeline = PipelineOptions
# Shared with the worker, which takes it as --batch-max-size and --batch-max-wait-ms.
Batch = BatchOptions


class Toleration(_Spec):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class GPU(_Spec):
    count: int = Field(default=1, ge=0, le=16)
    product: str = H100_PRODUCT
    resource_name: str = GPU_RESOURCE
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    runtime_class_name: str | None = None


class EnvVar(_Spec):
    name: str = Field(min_length=1)
    value: str | None = None
    value_from: dict[str, Any] | None = None


def _quantities(value: Mapping[str, Any]) -> dict[str, str]:
    return {key: str(amount) for key, amount in value.items()}


class Resources(_Spec):
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)

    @field_validator("requests", "limits", mode="before")
    @classmethod
    def _as_strings(cls, value: Any) -> Any:
        # The CRD says int-or-string: `cpu: 4` arrives as an int.
        return _quantities(value) if isinstance(value, Mapping) else value


class LocalObjectReference(_Spec):
    name: str


class Worker(_Spec):
    image: str | None = None
    image_pull_policy: PullPolicy = "IfNotPresent"
    image_pull_secrets: tuple[LocalObjectReference, ...] = ()
    resources: Resources = Resources()
    env: tuple[EnvVar, ...] = ()
    args: tuple[str, ...] = ()
    shm_size: str | None = None
    termination_grace_period_seconds: int = Field(default=120, ge=0, le=3600)
    startup_timeout_seconds: int = Field(default=1800, ge=10, le=86400)
    service_account_name: str | None = None
    pod_labels: dict[str, str] = Field(default_factory=dict)
    pod_annotations: dict[str, str] = Field(default_factory=dict)


class Scaling(_Spec):
    mode: Literal["Auto", "Manual"] = "Auto"
    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(default=1, ge=1, le=1000)
    target_queue_per_replica: int = Field(default=4, ge=1, le=10000)
    scale_down_delay_seconds: int = Field(default=60, ge=0, le=86400)
    scale_up_step: int = Field(default=10, ge=1, le=1000)
    capacity_wait_seconds: int = Field(default=600, ge=0, le=86400)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"spec.scaling.minReplicas ({self.min_replicas}) must not exceed "
                f"maxReplicas ({self.max_replicas})"
            )
        return self


class Queue(_Spec):
    timeout_seconds: int = Field(default=1800, ge=1, le=86400)
    max_queued: int = Field(default=1000, ge=1, le=1_000_000)


class ImageModelSpec(_Spec):
    model_name: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$"
    )
    description: str = Field(default="", max_length=1024)
    task: Task = Task.TEXT_TO_IMAGE
    replicas: int | None = Field(default=None, ge=0)
    weights: Weights
    pipeline: Pipeline = Pipeline()
    parameters: ParameterLimits = ParameterLimits()
    price_per_patch: Decimal = DEFAULT_PRICE_PER_PATCH
    gpu: GPU = GPU()
    worker: Worker = Worker()
    queue: Queue = Queue()
    batch: Batch = Batch()
    scaling: Scaling = Scaling()

    @field_validator("price_per_patch", mode="before")
    @classmethod
    def _exact_decimal(cls, value: Any) -> Any:
        # A float would already have lost digits; the CRD types this field as a string.
        if not isinstance(value, str | Decimal) or not _DECIMAL.match(str(value)):
            raise ValueError(
                f"pricePerPatch must be a decimal string such as '0.00000079', not {value!r}"
            )
        return Decimal(str(value))

    @model_validator(mode="after")
    def _spread_over_gpus(self) -> Self:
        # diffusers' "balanced" map puts whole components on the GPUs it sees and what does
        # not fit on the CPU: with fewer than two there is nothing to spread.
        if self.pipeline.device_map is not None and self.gpu.count < 2:
            raise ValueError(
                f"spec.pipeline.deviceMap spreads the pipeline over several GPUs: "
                f"set gpu.count to 2 or more, not {self.gpu.count}"
            )
        return self


@dataclass(frozen=True)
class ImageModel:
    """One parsed ImageModel: identity from metadata, everything else from spec."""

    name: str
    namespace: str
    spec: ImageModelSpec
    uid: str = ""
    generation: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    # metadata.creationTimestamp (RFC 3339, so strings sort by time): the older of two
    # resources that claim one public name keeps it.
    created: str = ""
    # The autoscaler's last decision (status.autoscaling.desiredReplicas), read in mode Auto.
    autoscaled_replicas: int | None = None
    # Whether metadata named a namespace: every resource of a cluster does; a YAML document
    # for ``tessera gateway --models`` may not.
    namespaced: bool = True

    @property
    def model_name(self) -> str:
        """The public name: ``spec.modelName`` or, by default, ``metadata.name``."""
        return self.spec.model_name or self.name

    @property
    def desired_replicas(self) -> int:
        """The autoscaler's decision (mode Auto) or ``spec.replicas`` (mode Manual, the scale
        subresource), else ``minReplicas``; clamped to the bounds."""
        scaling = self.spec.scaling
        chosen = self.autoscaled_replicas if scaling.mode == "Auto" else self.spec.replicas
        wanted = scaling.min_replicas if chosen is None else chosen
        return max(scaling.min_replicas, min(scaling.max_replicas, wanted))

    @property
    def device(self) -> Literal["cuda", "cpu"]:
        return "cuda" if self.spec.gpu.count > 0 else "cpu"

    @property
    def reference(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def queue_name(self) -> str:
        """Where this resource's jobs wait in the job store: ``namespace/name``, unique in
        the cluster; a document without a namespace (no cluster) keys by its public name,
        as ``tessera worker --model NAME`` does when not told otherwise."""
        return queue_name_of(self.namespace, self.name) if self.namespaced else self.model_name

    def model_spec(self) -> ModelSpec:
        """What the gateway serves for this resource (weights are the workers' business)."""
        spec = self.spec
        return ModelSpec(
            name=self.model_name,
            namespace=self.namespace,
            task=spec.task,
            limits=spec.parameters,
            pipeline=spec.pipeline,
            price_per_patch=spec.price_per_patch,
            description=spec.description,
            queue_timeout_seconds=spec.queue.timeout_seconds,
            max_queued=spec.queue.max_queued,
            queue_name=self.queue_name,
        )


def _where(location: tuple[int | str, ...]) -> str:
    path = "spec"
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def describe(error: ValidationError) -> str:
    """Pydantic's errors as one line per field: ``spec.a.b: message``."""
    lines = []
    for item in error.errors():
        # Union members and validator wrappers add noise to the location; keep field names.
        location = tuple(p for p in item["loc"] if not (isinstance(p, str) and "[" in p))
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{_where(location)}: {message}" if location else message)
    return "; ".join(lines)


def parse_spec(spec: Mapping[str, Any]) -> ImageModelSpec:
    """Validate a ``spec`` mapping (camelCase, as stored) or raise ``InvalidImageModel``.

    Strictly, as JSON: the API server refuses ``count: "2"`` for an integer, so a models file
    read without a cluster must refuse it too, rather than coerce it and serve what
    ``kubectl apply`` would not.
    """
    try:
        return ImageModelSpec.model_validate_json(json.dumps(dict(spec), default=str), strict=True)
    except ValidationError as error:
        raise InvalidImageModel(describe(error)) from None


def parse(body: Mapping[str, Any]) -> ImageModel:
    """An ImageModel from a resource body (a kopf Body or a plain dict)."""
    metadata = body.get("metadata") or {}
    if not metadata.get("name"):
        raise InvalidImageModel("metadata.name: an ImageModel needs a name")
    return ImageModel(
        name=metadata["name"],
        namespace=metadata.get("namespace") or "default",
        namespaced=bool(metadata.get("namespace")),
        uid=metadata.get("uid", ""),
        generation=int(metadata.get("generation") or 0),
        labels=dict(metadata.get("labels") or {}),
        created=str(metadata.get("creationTimestamp") or ""),
        spec=parse_spec(body.get("spec") or {}),
        autoscaled_replicas=_autoscaled(body),
    )


def _autoscaled(body: Mapping[str, Any]) -> int | None:
    decided = ((body.get("status") or {}).get("autoscaling") or {}).get("desiredReplicas")
    return decided if isinstance(decided, int) else None


def load_documents(path: Path) -> list[ImageModel]:
    """The ImageModels in a YAML file, or in every ``*.yaml``/``*.yml`` file of a folder.

    The same documents ``kubectl apply`` takes, so a gateway without a cluster serves what a
    cluster would. Any other kind, or an invalid spec, is an error that names the file.
    """
    import yaml

    path = Path(path)
    files = (
        sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        if path.is_dir()
        else [path]
    )
    models = []
    for file in files:
        try:
            documents = list(yaml.safe_load_all(file.read_text()))
        except (OSError, yaml.YAMLError) as error:
            raise InvalidImageModel(f"{file}: cannot read it as YAML: {error}") from None
        for index, document in enumerate(documents):
            if document is None:
                continue
            where = f"{file} (document {index + 1})"
            if not isinstance(document, dict) or document.get("kind") != KIND:
                raise InvalidImageModel(f"{where}: not an {KIND} (kind: {API_VERSION}/{KIND})")
            try:
                models.append(parse(document))
            except InvalidImageModel as error:
                raise InvalidImageModel(f"{where}: {error}") from None
    if not models:
        raise InvalidImageModel(f"{path}: holds no {KIND} documents")
    return models


@dataclass(frozen=True)
class NameConflict:
    """``loser`` claims the public name that ``holder``, the older resource, serves."""

    loser: ImageModel
    holder: ImageModel

    @property
    def message(self) -> str:
        return (
            f"model name {self.loser.model_name!r} is already served by ImageModel "
            f"{self.holder.reference}, created earlier; this one is not served"
        )


def assign_names(models: Iterable[ImageModel]) -> tuple[dict[str, ImageModel], list[NameConflict]]:
    """Which resource serves each public name: the oldest claim (then the lowest uid) wins,
    so every gateway replica and every restart decides the same way."""
    served: dict[str, ImageModel] = {}
    conflicts = []
    for model in sorted(models, key=lambda m: (m.created, m.uid, m.reference)):
        holder = served.get(model.model_name)
        if holder is None:
            served[model.model_name] = model
        else:
            conflicts.append(NameConflict(model, holder))
    return served, conflicts
