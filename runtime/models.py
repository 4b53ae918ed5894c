"""The models a server offers: what each is called, does, accepts and costs."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tessera.runtime.billing import format_amount
from tessera.runtime.errors import ModelNotFound
from tessera.runtime.params import ParameterLimits, Task, generates_from_text, request_schema
from tessera.runtime.worker.options import PipelineOptions

# About 310 FLUX.1-schnell 1024x1024 images per dollar, Hyperstack's published price.
DEFAULT_PRICE_PER_PATCH = Decimal("0.00000079")


def queue_name_of(namespace: str, resource: str) -> str:
    """The job store's name for the queue (and leases, jobs, usage) of one ImageModel:
    its ``namespace/name``, unique in a cluster where public names may be claimed twice."""
    return f"{namespace}/{resource}"


_MODALITIES: dict[Task, tuple[list[str], list[str]]] = {
    Task.TEXT_TO_IMAGE: (["text"], ["image"]),
    Task.IMAGE_TO_IMAGE: (["text", "image"], ["image"]),
}


class ModelSpec(BaseModel):
    """One servable model. ``weights`` is where a worker finds it; clients never see it."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1, max_length=253)
    task: Task = Task.TEXT_TO_IMAGE
    weights: str = ""
    limits: ParameterLimits = ParameterLimits()
    # How a worker loads and calls it; the gateway reads only the parameters it refuses.
    pipeline: PipelineOptions = PipelineOptions()
    price_per_patch: Decimal = DEFAULT_PRICE_PER_PATCH
    provider: str = "Tessera"
    # The ImageModel's namespace, for usage records; empty outside a cluster.
    namespace: str = ""
    description: str = ""
    # Gateway queueing (None: unbounded, as in `tessera serve`, whose worker is built in): a
    # job still queued after the timeout fails unbilled; a full queue answers 429.
    queue_timeout_seconds: float | None = None
    max_queued: int | None = None
    # The store's name for this model's queue, leases and jobs: ``queue_name_of`` for an
    # ImageModel in a namespace; empty input means the public name (``tessera serve``'s
    # models, a YAML document without a namespace, a worker started without --queue-name).
    # Gateways, workers and the autoscaler all key by it.
    queue_name: str = ""

    @model_validator(mode="before")
    @classmethod
    def _default_queue_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("queue_name") and data.get("name"):
            return {**data, "queue_name": data["name"]}
        return data

    @property
    def refused(self) -> frozenset[str]:
        return self.pipeline.refused

    @property
    def tasks(self) -> list[Task]:
        """What it does: an image-to-image model that needs no source also generates."""
        if self.task is Task.IMAGE_TO_IMAGE and generates_from_text(self.limits, self.task):
            return [Task.IMAGE_TO_IMAGE, Task.TEXT_TO_IMAGE]
        return [self.task]

    def public_record(self) -> dict[str, Any]:
        """The ``/base_models`` record, Hyperstack's fields first."""
        inputs, outputs = _MODALITIES[self.task]
        return {
            "model_name": self.name,
            "model_type": "image_model",
            "task": self.task.value,
            "provider": self.provider,
            "description": self.description,
            "input_modalities": inputs,
            "output_modalities": outputs,
            "modalities": [task.value for task in self.tasks],
            "pricing": {
                "unit": "patch",
                "patch_size": "16x16",
                "currency": "USD",
                "price_per_patch": format_amount(self.price_per_patch),
                "price_per_million_patches": format_amount(self.price_per_patch * 1_000_000),
            },
            "parameters": request_schema(self.limits, self.task, self.refused),
        }


class ModelCatalog:
    """The models of one server, looked up by public name."""

    def __init__(self, models: Iterable[ModelSpec] = ()):
        self._models: dict[str, ModelSpec] = {}
        self.replace(models)

    def replace(self, models: Iterable[ModelSpec]) -> None:
        """Serve exactly ``models`` from now on (a gateway following its cluster)."""
        replacement: dict[str, ModelSpec] = {}
        for model in models:
            if model.name in replacement:
                raise ValueError(f"model {model.name!r} is declared twice")
            replacement[model.name] = model
        self._models = replacement

    def get(self, name: str) -> ModelSpec:
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFound(name, list(self._models)) from None

    def all(self) -> list[ModelSpec]:
        return sorted(self._models.values(), key=lambda m: m.name)

    def __contains__(self, name: object) -> bool:
        return name in self._models
