"""The operator's pure parts, without a cluster: CRD <-> models, rendering, diffing, status.

Table-driven: each case names one decision and the smallest spec that exercises it.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import re
import typing
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from tessera.operator import apply, cli, render, status
from tessera.operator.reasons import Condition, Phase, Reason
from tessera.operator.spec import (
    H100_PRODUCT,
    ImageModel,
    ImageModelSpec,
    InvalidSpec,
    parse,
    parse_spec,
)
from tessera.runtime import conditions
from tessera.runtime.cli import build_parser
from tessera.runtime.models import DEFAULT_PRICE_PER_PATCH
from tessera.runtime.params import ParameterLimits
from tessera.runtime.settings import WorkerSettings, settings_from
from tessera.runtime.worker.options import (
    FIXED_ARGUMENT_NAME,
    LARGEST_FIXED,
    MAX_FIXED_ARGUMENTS,
    WORKER_ARGUMENTS,
    BatchOptions,
    PipelineOptions,
)

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "imagemodel.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
SPEC_SCHEMA = SCHEMA["properties"]["spec"]
CONFIG = render.RenderConfig(queue_url="redis://q:6379/0", worker_image="example/worker:1")
NOW = datetime.datetime(2026, 1, 15, 9, 30, tzinfo=datetime.UTC)
LATER = NOW + datetime.timedelta(minutes=5)
DEMO = {"weights": {"demo": {}}}
HUB = {"weights": {"huggingFace": {"repo": "black-forest-labs/FLUX.1-schnell"}}}


def model(
    spec: dict[str, Any] | None = None, name: str = "flux", generation: int = 1
) -> ImageModel:
    body = {
        "apiVersion": "tessera.dev/v1alpha1",
        "kind": "ImageModel",
        "metadata": {"name": name, "namespace": "ml", "uid": "uid-1", "generation": generation},
        "spec": spec if spec is not None else copy.deepcopy(HUB),
    }
    return parse(body)


def merged(*parts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def worker(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["worker"]
    return containers[0]  # type: ignore[no-any-return]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# -- the CRD and the models agree ---------------------------------------------------------


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """The API server's structural defaulting, enough for this schema."""
    if value is None:
        if "default" not in schema:
            return None
        value = copy.deepcopy(schema["default"])
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            filled = apply_defaults(value.get(key), sub)
            if filled is not None:
                value[key] = filled
    if isinstance(value, list) and "items" in schema:
        value = [apply_defaults(v, schema["items"]) for v in value]
    return value


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def test_crd_names_and_subresources() -> None:
    names = CRD["spec"]["names"]
    assert (CRD["spec"]["group"], names["kind"], names["plural"]) == (
        "tessera.dev",
        "ImageModel",
        "imagemodels",
    )
    assert names["shortNames"] == ["im"]
    assert names["categories"] == ["tessera"]
    version = CRD["spec"]["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["served"]
    assert version["storage"]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = {c["name"].lower() for c in version["additionalPrinterColumns"]}
    assert {"model", "task", "ready", "replicas", "queue", "desired", "pending", "age"} <= columns


def test_every_field_has_a_description() -> None:
    missing = [
        path or "(root)"
        for path, node in walk(SCHEMA)
        if path != ".metadata" and not path.endswith("{}") and not node.get("description")
    ]
    assert missing == []


def _model_fields(model_class: type[BaseModel]) -> dict[str, Any]:
    return {info.alias or name: info for name, info in model_class.model_fields.items()}


# ParameterLimits.defaultImageSize is a preset, a "WxH" string or {width, height}; a
# structural schema cannot say "string or object", so the CRD takes the string forms only.
STRING_IN_THE_CRD = {"defaultImageSize"}


def _nested_models(
    annotation: Any, in_list: bool = False
) -> Iterator[tuple[type[BaseModel], bool]]:
    """The pydantic models inside an annotation, and whether they sit in a list/tuple."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, in_list
        return
    origin = typing.get_origin(annotation)
    for arg in typing.get_args(annotation):
        yield from _nested_models(arg, in_list or origin in (list, tuple))


def _compare_fields(model_class: type[BaseModel], schema: dict[str, Any], path: str) -> list[str]:
    """Field names that only one side knows, recursively through nested models."""
    fields = _model_fields(model_class)
    props = schema.get("properties", {})
    problems = [f"{path}.{k}: only in the models" for k in fields.keys() - props.keys()]
    problems += [f"{path}.{k}: only in the CRD" for k in props.keys() - fields.keys()]
    for key in fields.keys() & props.keys():
        if key in STRING_IN_THE_CRD:
            continue
        for nested, is_list in _nested_models(fields[key].annotation):
            sub = props[key].get("items", {}) if is_list else props[key]
            problems += _compare_fields(nested, sub, f"{path}.{key}{'[]' if is_list else ''}")
    return problems


def test_crd_spec_fields_match_the_models() -> None:
    assert _compare_fields(ImageModelSpec, SPEC_SCHEMA, "spec") == []


def test_crd_fixed_arguments_rules_are_the_models() -> None:
    """The CRD refuses at apply what the model refuses: the same name pattern, bounds and
    worker arguments."""
    schema = SPEC_SCHEMA["properties"]["pipeline"]["properties"]["fixedArguments"]
    values = schema["additionalProperties"]
    assert (values["minimum"], values["maximum"]) == (-LARGEST_FIXED, LARGEST_FIXED)
    assert schema["maxProperties"] == MAX_FIXED_ARGUMENTS
    names, reserved = (rule["rule"] for rule in schema["x-kubernetes-validations"])
    class_name = SPEC_SCHEMA["properties"]["pipeline"]["properties"]["className"]
    model = PipelineOptions.model_json_schema(by_alias=True)["properties"]["className"]
    assert class_name["pattern"] == model["anyOf"][0]["pattern"]
    assert f"k.matches('{FIXED_ARGUMENT_NAME}')" in names
    assert set(re.findall(r"'(\w+)'", reserved)) == WORKER_ARGUMENTS


def test_parameters_schema_is_the_runtimes_parameter_limits() -> None:
    schema = SPEC_SCHEMA["properties"]["parameters"]
    assert _compare_fields(ParameterLimits, schema, "spec.parameters") == []
    defaulted = apply_defaults({}, schema)
    assert ParameterLimits.model_validate(defaulted) == ParameterLimits()
    explicit = ParameterLimits.model_validate({**defaulted, "defaultImageSize": "1536x640"})
    assert explicit.default_image_size == "1536x640"
    # Every bound the API sets is the schema's bound too.
    for field, limits in (("numImages", (1, 4)), ("numInferenceSteps", (1, 50))):
        for part in ("min", "max", "default"):
            node = schema["properties"][field]["properties"][part]
            assert (node["minimum"], node["maximum"]) == limits


@pytest.mark.parametrize(
    "spec",
    [
        DEMO,
        HUB,
        {"weights": {"pvc": {"claimName": "models"}}, "gpu": {"count": 0}},
        {"weights": {"image": {"reference": "example/flux:1"}}, "task": "image-to-image"},
    ],
    ids=["demo", "hub", "pvc", "image"],
)
def test_crd_defaults_equal_model_defaults(spec: dict[str, Any]) -> None:
    defaulted = apply_defaults(copy.deepcopy(spec), SPEC_SCHEMA)
    assert parse_spec(defaulted) == parse_spec(spec)


def test_crd_price_default_is_the_runtimes() -> None:
    price = SPEC_SCHEMA["properties"]["pricePerPatch"]["default"]
    assert Decimal(price) == DEFAULT_PRICE_PER_PATCH


INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "no weights source": ({"weights": {}}, "exactly one source"),
    "two weights sources": (
        {"weights": {"demo": {}, "pvc": {"claimName": "x"}}},
        "exactly one source",
    ),
    "min above max replicas": (
        merged(DEMO, {"scaling": {"minReplicas": 3, "maxReplicas": 2}}),
        "minReplicas (3) must not exceed maxReplicas (2)",
    ),
    "default outside steps": (
        merged(DEMO, {"parameters": {"numInferenceSteps": {"min": 1, "max": 8, "default": 28}}}),
        "numInferenceSteps: default 28 is outside [1, 8]",
    ),
    "default format not offered": (
        merged(DEMO, {"parameters": {"outputFormats": ["png"], "defaultOutputFormat": "webp"}}),
        "defaultOutputFormat webp is not in outputFormats",
    ),
    "float price": (merged(DEMO, {"pricePerPatch": 0.1}), "pricePerPatch must be a decimal"),
    "unknown field": (merged(DEMO, {"gpus": 2}), "spec.gpus"),
    "bad task": (merged(DEMO, {"task": "text-to-video"}), "spec.task"),
    "empty batch": (merged(DEMO, {"batch": {"maxSize": 0}}), "spec.batch.maxSize"),
    "long batch wait": (merged(DEMO, {"batch": {"maxWaitMs": 60000}}), "spec.batch.maxWaitMs"),
    "device map on one GPU": (
        merged(DEMO, {"pipeline": {"deviceMap": "balanced"}}),
        "deviceMap spreads the pipeline over several GPUs: set gpu.count to 2 or more, not 1",
    ),
    "device map with offload": (
        merged(DEMO, {"pipeline": {"deviceMap": "balanced", "cpuOffload": "model"}}),
        "deviceMap places the components itself",
    ),
    "fixed argument not a name": (
        merged(DEMO, {"pipeline": {"fixedArguments": {"max length": 256}}}),
        "spec.pipeline.fixedArguments",
    ),
    "fixed argument NaN": (
        merged(DEMO, {"pipeline": {"fixedArguments": {"guidance_scale": math.nan}}}),
        "spec.pipeline.fixedArguments.guidance_scale: must be a finite number",
    ),
    "fixed argument infinite": (
        merged(DEMO, {"pipeline": {"fixedArguments": {"guidance_scale": -math.inf}}}),
        "spec.pipeline.fixedArguments.guidance_scale: must be a finite number",
    ),
    "fixed argument huge": (
        merged(DEMO, {"pipeline": {"fixedArguments": {"max_sequence_length": 10**400}}}),
        "spec.pipeline.fixedArguments.max_sequence_length: must be a finite number between",
    ),
    # A YAML file of models is not typed as the CRD is: "0" or true must not become 0 or 1.
    "fixed argument a string": (
        merged(DEMO, {"pipeline": {"fixedArguments": {"guidance_scale": "0"}}}),
        "spec.pipeline.fixedArguments.guidance_scale: must be a number, not '0'",
    ),
    "fixed argument a boolean": (
        merged(DEMO, {"pipeline": {"fixedArguments": {"guidance_scale": True}}}),
        "spec.pipeline.fixedArguments.guidance_scale: must be a number, not True",
    ),
    "fixed argument an object": (
        merged(DEMO, {"pipeline": {"fixedArguments": {"sigmas": {"a": 1}}}}),
        "spec.pipeline.fixedArguments.sigmas: must be a number",
    ),
    "fixed argument a dunder": (
        merged(DEMO, {"pipeline": {"fixedArguments": {"__class__": 1}}}),
        "spec.pipeline.fixedArguments.__class__: String should match pattern",
    ),
    "fixed argument private": (
        merged(DEMO, {"pipeline": {"fixedArguments": {"_auto_resize": 1}}}),
        "spec.pipeline.fixedArguments._auto_resize: String should match pattern",
    ),
    "fixed argument name too long": (
        merged(DEMO, {"pipeline": {"fixedArguments": {"a" * 65: 1}}}),
        "String should match pattern",
    ),
    "too many fixed arguments": (
        merged(DEMO, {"pipeline": {"fixedArguments": {f"a{n}": n for n in range(9)}}}),
        "spec.pipeline.fixedArguments: Dictionary should have at most 8 items",
    ),
    "fixed arguments the worker sets": (
        merged(
            DEMO,
            {
                "pipeline": {
                    "fixedArguments": {"num_inference_steps": 4, "return_dict": 0, "eta": 0}
                }
            },
        ),
        "spec.pipeline.fixedArguments: num_inference_steps, return_dict: the worker sets these",
    ),
    "class name private": (
        merged(DEMO, {"pipeline": {"className": "__class__"}}),
        "spec.pipeline.className: String should match pattern",
    ),
    # A YAML file of models is not typed as the CRD is: "0.2" or true must not become a number.
    "first-block-cache a string": (
        merged(DEMO, {"pipeline": {"firstBlockCache": "0.2"}}),
        "spec.pipeline.firstBlockCache: Input should be a valid number",
    ),
    "first-block-cache a boolean": (
        merged(DEMO, {"pipeline": {"firstBlockCache": True}}),
        "spec.pipeline.firstBlockCache: Input should be a valid number",
    ),
    "first-block-cache NaN": (
        merged(DEMO, {"pipeline": {"firstBlockCache": math.nan}}),
        "spec.pipeline.firstBlockCache",
    ),
    "first-block-cache zero": (
        merged(DEMO, {"pipeline": {"firstBlockCache": 0}}),
        "spec.pipeline.firstBlockCache: Input should be greater than 0",
    ),
    "device map in capitals": (
        merged(DEMO, {"pipeline": {"deviceMap": "Balanced"}, "gpu": {"count": 2}}),
        "spec.pipeline.deviceMap: Input should be 'balanced'",
    ),
    "first-block-cache on a loop without cache contexts": (
        merged(DEMO, {"pipeline": {"className": "FluxKontextPipeline", "firstBlockCache": 0.12}}),
        "spec.pipeline.firstBlockCache: FluxKontextPipeline sets no cache context",
    ),
}


@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_invalid_specs_are_permanent_errors_naming_the_rule(case: str) -> None:
    spec, message = INVALID[case]
    with pytest.raises(InvalidSpec) as error:
        parse_spec(spec)
    assert message in str(error.value)


# -- rendering ----------------------------------------------------------------------------

Check = Callable[[dict[str, Any]], None]


def _has_gpu_placement(dep: dict[str, Any], count: int) -> None:
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": H100_PRODUCT}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    resources = worker(dep)["resources"]
    assert (
        resources["requests"]["nvidia.com/gpu"]
        == resources["limits"]["nvidia.com/gpu"]
        == str(count)
    )
    assert resources["requests"]["memory"] == f"{48 * count}Gi" == resources["limits"]["memory"]
    assert "--device" in worker(dep)["command"]
    assert "cuda" in worker(dep)["command"]


def _cpu_only(dep: dict[str, Any]) -> None:
    pod = dep["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod
    assert "tolerations" not in pod
    container = worker(dep)
    assert "nvidia.com/gpu" not in container["resources"]["requests"]
    assert container["command"][container["command"].index("--device") + 1] == "cpu"
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}


def _extra_placement(dep: dict[str, Any]) -> None:
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": H100_PRODUCT, "pool": "inference"}
    assert pod["tolerations"][-1] == {"key": "dedicated", "operator": "Equal", "value": "ml"}
    assert pod["priorityClassName"] == "serving"
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["affinity"]["nodeAffinity"]


def _any_gpu_product(dep: dict[str, Any]) -> None:
    assert "nodeSelector" not in dep["spec"]["template"]["spec"]


def _pvc_weights(dep: dict[str, Any]) -> None:
    pod = dep["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "weights")
    assert volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    command = worker(dep)["command"]
    assert command[command.index("--weights") + 1] == "/weights/flux/schnell"


def _image_copy(dep: dict[str, Any]) -> None:
    pod = dep["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == "example/flux:1"
    assert init["command"] == ["cp", "-R", "/models/flux/.", "/weights/"]
    assert next(v for v in pod["volumes"] if v["name"] == "weights") == {
        "name": "weights",
        "emptyDir": {},
    }


def _image_volume(dep: dict[str, Any]) -> None:
    pod = dep["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    volume = next(v for v in pod["volumes"] if v["name"] == "weights")
    assert volume["image"] == {"reference": "example/flux:1", "pullPolicy": "IfNotPresent"}
    command = worker(dep)["command"]
    assert command[command.index("--weights") + 1] == "/weights/models/flux"


def _demo(dep: dict[str, Any]) -> None:
    (init,) = dep["spec"]["template"]["spec"]["initContainers"]
    assert init["command"] == [
        "tessera",
        "demo-model",
        "/weights/pipeline",
        "--task",
        "text-to-image",
    ]
    assert init["image"] == "example/worker:1"


def _replicas(count: int) -> Check:
    def check(dep: dict[str, Any]) -> None:
        assert dep["spec"]["replicas"] == count

    return check


def _dtype(dep: dict[str, Any]) -> None:
    command = worker(dep)["command"]
    assert command[command.index("--dtype") + 1] == "bfloat16"
    assert command[-2:] == ["--batch", "4"]
    options = json.loads(env_of(worker(dep))["TESSERA_PIPELINE"])
    assert options["compile"] is True
    assert options["attention"] == "_flash_3"


def _env_override(dep: dict[str, Any]) -> None:
    container = worker(dep)
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), "duplicate names break server-side apply"
    env = env_of(container)
    assert env["HF_HUB_OFFLINE"] == "0"
    assert env["EXTRA"] == "1"


def _resources_merge(dep: dict[str, Any]) -> None:
    resources = worker(dep)["resources"]
    assert resources["requests"] == {"cpu": "16", "memory": "48Gi", "nvidia.com/gpu": "1"}
    assert resources["limits"]["memory"] == "100Gi"
    assert resources["limits"]["nvidia.com/gpu"] == "1"


def _startup_probe(dep: dict[str, Any]) -> None:
    container = worker(dep)
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["failureThreshold"] * 10 >= 600
    assert container["startupProbe"]["failureThreshold"] == math.ceil(600 / 10)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 300


def _shm_custom(dep: dict[str, Any]) -> None:
    volumes = dep["spec"]["template"]["spec"]["volumes"]
    assert next(v for v in volumes if v["name"] == "dshm")["emptyDir"]["sizeLimit"] == "64Gi"


RENDER_CASES: dict[str, tuple[dict[str, Any], bool, Check]] = {
    "one H100 by default": (HUB, True, lambda d: _has_gpu_placement(d, 1)),
    "eight H100s": (merged(HUB, {"gpu": {"count": 8}}), True, lambda d: _has_gpu_placement(d, 8)),
    "CPU only": (merged(DEMO, {"gpu": {"count": 0}}), True, _cpu_only),
    "extra placement": (
        merged(
            HUB,
            {
                "gpu": {
                    "nodeSelector": {"pool": "inference"},
                    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml"}],
                    "priorityClassName": "serving",
                    "runtimeClassName": "nvidia",
                    "affinity": {
                        "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}
                    },
                }
            },
        ),
        True,
        _extra_placement,
    ),
    "any GPU product": (merged(HUB, {"gpu": {"product": ""}}), True, _any_gpu_product),
    "weights from a claim": (
        {"weights": {"pvc": {"claimName": "models", "path": "flux/schnell"}}},
        True,
        _pvc_weights,
    ),
    "weights copied from an image": (
        {"weights": {"image": {"reference": "example/flux:1", "path": "/models/flux/"}}},
        True,
        _image_copy,
    ),
    "weights as an image volume": (
        {
            "weights": {
                "image": {"reference": "example/flux:1", "path": "/models/flux", "mode": "volume"}
            }
        },
        True,
        _image_volume,
    ),
    "demo pipeline": (DEMO, True, _demo),
    "held at zero while downloading": (
        merged(HUB, {"scaling": {"minReplicas": 2, "maxReplicas": 4}}),
        False,
        _replicas(0),
    ),
    "minReplicas when replicas unset": (
        merged(HUB, {"scaling": {"minReplicas": 2, "maxReplicas": 4}}),
        True,
        _replicas(2),
    ),
    "spec.replicas from the scale subresource, in mode Manual": (
        merged(
            HUB, {"replicas": 3, "scaling": {"mode": "Manual", "minReplicas": 1, "maxReplicas": 4}}
        ),
        True,
        _replicas(3),
    ),
    "spec.replicas is not read in mode Auto": (
        merged(HUB, {"replicas": 3, "scaling": {"minReplicas": 1, "maxReplicas": 4}}),
        True,
        _replicas(1),
    ),
    "replicas clamped to maxReplicas": (
        merged(HUB, {"replicas": 9, "scaling": {"mode": "Manual", "maxReplicas": 2}}),
        True,
        _replicas(2),
    ),
    "scaled to zero": (
        merged(HUB, {"replicas": 0, "scaling": {"mode": "Manual", "minReplicas": 0}}),
        True,
        _replicas(0),
    ),
    "dtype, pipeline options and extra args": (
        merged(
            HUB,
            {
                "pipeline": {"dtype": "bfloat16", "compile": True, "attention": "_flash_3"},
                "worker": {"args": ["--batch", "4"]},
            },
        ),
        True,
        _dtype,
    ),
    "spec env overrides the operator's": (
        merged(
            HUB,
            {
                "worker": {
                    "env": [
                        {"name": "HF_HUB_OFFLINE", "value": "0"},
                        {"name": "EXTRA", "value": "1"},
                    ]
                }
            },
        ),
        True,
        _env_override,
    ),
    "resources merge over defaults": (
        merged(
            HUB,
            {
                "worker": {
                    "resources": {
                        "requests": {"cpu": 16},
                        "limits": {"memory": "100Gi", "nvidia.com/gpu": "4"},
                    }
                }
            },
        ),
        True,
        _resources_merge,
    ),
    "startup probe covers slow loads": (
        merged(
            HUB, {"worker": {"startupTimeoutSeconds": 600, "terminationGracePeriodSeconds": 300}}
        ),
        True,
        _startup_probe,
    ),
    "custom /dev/shm": (merged(HUB, {"worker": {"shmSize": "64Gi"}}), True, _shm_custom),
}


@pytest.mark.parametrize("case", RENDER_CASES, ids=list(RENDER_CASES))
def test_deployment(case: str) -> None:
    spec, weights_ready, check = RENDER_CASES[case]
    check(render.deployment(model(copy.deepcopy(spec)), CONFIG, weights_ready=weights_ready))


@pytest.mark.parametrize(
    ("mode", "decided", "replicas"),
    [("Auto", 3, 3), ("Auto", 9, 4), ("Auto", None, 0), ("Manual", 3, 2)],
    ids=["decided", "clamped", "undecided: minReplicas", "manual ignores the decision"],
)
def test_the_autoscalers_decision_renders_in_mode_auto(
    mode: str, decided: int | None, replicas: int
) -> None:
    """The reconciler renders what the autoscaler decided, so the two never pull apart."""
    body = {
        "metadata": {"name": "flux", "namespace": "ml"},
        "spec": merged(
            HUB, {"replicas": 2, "scaling": {"mode": mode, "minReplicas": 0, "maxReplicas": 4}}
        ),
        "status": {"autoscaling": {"desiredReplicas": decided}},
    }
    dep = render.deployment(parse(body), CONFIG, weights_ready=True)
    assert dep["spec"]["replicas"] == replicas


@pytest.mark.parametrize(
    "spec", [HUB, DEMO, {"weights": {"pvc": {"claimName": "m"}}}], ids=["hub", "demo", "pvc"]
)
def test_every_container_is_locked_down(spec: dict[str, Any]) -> None:
    m = model(copy.deepcopy(spec))
    objects = render.desired_objects(m, CONFIG, weights_ready=True)
    for obj in objects:
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod.get("initContainers", []) + pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            # The read-only root's one writable place (HOME, caches): an emptyDir.
            tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == render.TMP)
            assert "emptyDir" in volumes[tmp["name"]], container["name"]
    dep = render.deployment(m, CONFIG)
    mounts = {v["name"]: v for v in worker(dep)["volumeMounts"]}
    assert mounts["weights"]["readOnly"] is True
    assert mounts["dshm"]["mountPath"] == "/dev/shm"


def test_worker_command_and_environment() -> None:
    m = model(
        merged(
            HUB,
            {
                "modelName": "FLUX.1-schnell",
                "pricePerPatch": "0.0000012",
                "parameters": {
                    "numInferenceSteps": {"min": 1, "max": 8, "default": 4},
                    "maxSide": 2048,
                },
            },
        )
    )
    container = worker(render.deployment(m, CONFIG))
    assert container["command"] == [
        "tessera",
        "worker",
        "--model",
        "FLUX.1-schnell",
        "--weights",
        "/weights/black-forest-labs/FLUX.1-schnell/main",
        "--queue",
        "redis://q:6379/0",
        # The resource, not the public name: another namespace may claim that too.
        "--queue-name",
        "ml/flux",
        "--storage",
        "/results",
        "--task",
        "text-to-image",
        "--host",
        "$(POD_IP)",
        "--port",
        "8080",
        "--device",
        "cuda",
    ]
    env = env_of(container)
    assert env["POD_IP"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}
    mounts = {v["name"]: v["mountPath"] for v in container["volumeMounts"]}
    assert mounts["results"] == "/results"
    volumes = {
        v["name"]: v for v in render.deployment(m, CONFIG)["spec"]["template"]["spec"]["volumes"]
    }
    assert volumes["results"]["persistentVolumeClaim"] == {"claimName": "tessera-results"}
    assert (
        ParameterLimits.model_validate(json.loads(env["TESSERA_MODEL_PARAMETERS"]))
        == m.spec.parameters
    )
    assert Decimal(env["TESSERA_PRICE_PER_PATCH"]) == Decimal("0.0000012")
    assert env["TESSERA_WORKER_ID"] == {
        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}
    }
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


@pytest.mark.parametrize("queue", ["redis://q:6379/0", "sqlite:////data/jobs.db"])
def test_the_worker_command_is_one_tessera_worker_accepts(queue: str) -> None:
    # What the Deployment runs must get past the worker's own argument checks: a Redis
    # queue needs --storage, which renders once lacked while every test stayed green.
    container = worker(render.deployment(model(), render.RenderConfig(queue_url=queue)))
    command = container["command"]
    assert command[:2] == ["tessera", "worker"]
    args = build_parser().parse_args(command[1:])
    assert args.queue == queue
    assert str(args.storage) == render.RESULTS_MOUNT
    assert args.host == "$(POD_IP)"  # expanded by the kubelet from the POD_IP variable
    assert "POD_IP" in env_of(container)


def test_the_batch_reaches_the_worker_as_flags() -> None:
    assert "--batch-max-size" not in worker(render.deployment(model(), CONFIG))["command"]
    batched = model(merged(HUB, {"batch": {"maxSize": 8, "maxWaitMs": 20}}))
    command = worker(render.deployment(batched, CONFIG))["command"]
    settings = settings_from(WorkerSettings, build_parser().parse_args(command[1:]))
    assert settings.batch == batched.spec.batch == BatchOptions(max_size=8, max_wait_ms=20)


def test_service_selects_the_worker_pods() -> None:
    m = model()
    dep, svc = render.deployment(m, CONFIG), render.service(m)
    selector = dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["selector"] == selector
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert svc["spec"]["clusterIP"] == "None"  # headless: nothing load-balances to workers
    assert render.endpoint(m) == "http://flux.ml.svc:8080"


def test_pod_labels_cannot_break_the_selector() -> None:
    m = model(
        merged(HUB, {"worker": {"podLabels": {"tessera.dev/imagemodel": "other", "team": "a"}}})
    )
    labels = render.deployment(m, CONFIG)["spec"]["template"]["metadata"]["labels"]
    assert labels["tessera.dev/imagemodel"] == "flux"
    assert labels["team"] == "a"


def test_weights_cache_and_loader_job() -> None:
    spec = merged(
        HUB,
        {
            "weights": {
                "huggingFace": {
                    "revision": "refs/pr/1",
                    "tokenSecretRef": {"name": "hf"},
                    "include": ["*.json", "*/*.safetensors"],
                    "exclude": ["flux1-schnell.safetensors"],
                    "cache": {"size": "100Gi", "storageClassName": "nfs"},
                }
            }
        },
    )
    m = model(spec)
    claim = render.weights_claim(m)
    assert claim is not None
    assert claim["metadata"]["name"] == "flux-weights"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "100Gi"
    assert claim["spec"]["storageClassName"] == "nfs"
    job = render.weights_job(m, CONFIG)
    assert job is not None
    container = job["spec"]["template"]["spec"]["containers"][0]
    path = "/weights/black-forest-labs/FLUX.1-schnell/refs-pr-1"
    assert container["command"] == [
        "hf", "download", "black-forest-labs/FLUX.1-schnell", "--revision", "refs/pr/1",
        "--local-dir", path, "--include", "*.json", "*/*.safetensors",
        "--exclude", "flux1-schnell.safetensors",
    ]  # fmt: skip
    assert env_of(container)["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    mounts = {v["name"]: v for v in container["volumeMounts"]}
    assert not mounts["weights"].get("readOnly")
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    deployment_volume = next(
        v
        for v in render.deployment(m, CONFIG)["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "weights"
    )
    assert deployment_volume["persistentVolumeClaim"] == {
        "claimName": "flux-weights",
        "readOnly": True,
    }


def test_loader_job_name_follows_what_is_downloaded() -> None:
    base = render.weights_job_name(model())
    bigger_cache = merged(HUB, {"weights": {"huggingFace": {"cache": {"size": "500Gi"}}}})
    other_revision = merged(HUB, {"weights": {"huggingFace": {"revision": "v2"}}})
    assert render.weights_job_name(model(bigger_cache)) == base
    assert render.weights_job_name(model(other_revision)) != base
    assert base is not None
    assert len(base) <= 63
    assert render.weights_job_name(model(copy.deepcopy(DEMO))) is None


def test_desired_objects_per_source() -> None:
    kinds = [o["kind"] for o in render.desired_objects(model(), CONFIG, weights_ready=False)]
    assert kinds == ["PersistentVolumeClaim", "Job", "Deployment", "Service"]
    kinds = [
        o["kind"]
        for o in render.desired_objects(model(copy.deepcopy(DEMO)), CONFIG, weights_ready=True)
    ]
    assert kinds == ["Deployment", "Service"]


def test_rendering_is_deterministic() -> None:
    first = [
        render.content_hash(o) for o in render.desired_objects(model(), CONFIG, weights_ready=True)
    ]
    second = [
        render.content_hash(o) for o in render.desired_objects(model(), CONFIG, weights_ready=True)
    ]
    assert first == second
    changed = model(merged(HUB, {"worker": {"env": [{"name": "X", "value": "1"}]}}))
    third = [
        render.content_hash(o) for o in render.desired_objects(changed, CONFIG, weights_ready=True)
    ]
    assert third[2] != first[2]
    assert third[3] == first[3]


def test_the_queue_password_reaches_workers_from_its_secret_never_in_the_deployment() -> None:
    config = render.RenderConfig.from_env(
        {
            "TESSERA_QUEUE_URL": "redis://:$(REDIS_PASSWORD)@tessera-redis.tessera.svc:6379/0",
            "TESSERA_QUEUE_PASSWORD_SECRET": "tessera-redis",
        }
    )
    container = worker(render.deployment(model(), config))
    command = container["command"]
    # The kubelet expands it in the command from the variable the Secret fills.
    assert command[command.index("--queue") + 1] == config.queue_url
    assert env_of(container)["REDIS_PASSWORD"] == {
        "secretKeyRef": {"name": "tessera-redis", "key": "password"}
    }
    # The operator's own connection (the autoscaler's) uses its own copy of the password.
    own = config.own_queue_url({"REDIS_PASSWORD": "s3cret"})
    assert own == "redis://:s3cret@tessera-redis.tessera.svc:6379/0"
    assert "REDIS_PASSWORD" not in env_of(worker(render.deployment(model(), CONFIG)))
    assert CONFIG.own_queue_url({}) == CONFIG.queue_url


def test_workers_write_results_to_s3_when_the_operator_is_given_a_bucket() -> None:
    config = render.RenderConfig.from_env(
        {
            "TESSERA_RESULTS_URL": "s3://images/results",
            "TESSERA_S3_ENDPOINT": "http://s3.example:8333",
            "TESSERA_S3_REGION": "eu-west-1",
            "TESSERA_S3_CREDENTIALS_SECRET": "s3-keys",
        }
    )
    dep = render.deployment(model(), config)
    container = worker(dep)
    command = container["command"]
    assert command[command.index("--storage") + 1] == "s3://images/results"
    env = env_of(container)
    assert env["AWS_ENDPOINT_URL_S3"] == "http://s3.example:8333"
    assert env["AWS_REGION"] == "eu-west-1"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key] == {"secretKeyRef": {"name": "s3-keys", "key": key}}
    # No results claim to mount: a bucket needs none.
    assert "results" not in {m["name"] for m in container["volumeMounts"]}
    assert "results" not in {v["name"] for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert not {"AWS_REGION", "AWS_ENDPOINT_URL_S3"} & set(
        env_of(worker(render.deployment(model(), CONFIG)))
    )


def test_render_config_from_env() -> None:
    config = render.RenderConfig.from_env({"TESSERA_QUEUE_URL": "redis://r:1/2"})
    assert config.queue_url == "redis://r:1/2"
    assert config.worker_image == render.DEFAULT_WORKER_IMAGE
    assert render.RenderConfig.from_env({}).queue_url == render.DEFAULT_QUEUE_URL


# -- compare-then-apply -------------------------------------------------------------------


def _live(obj: dict[str, Any]) -> dict[str, Any]:
    """What the API server would return: defaults added, quantities canonical."""
    live = apply.stamped(obj)
    live["metadata"] |= {"resourceVersion": "42", "uid": "u", "generation": 1}
    live["spec"]["progressDeadlineSeconds"] = live["spec"].get("progressDeadlineSeconds", 600)
    container = live["spec"]["template"]["spec"]["containers"][0]
    container["terminationMessagePath"] = "/dev/termination-log"
    live["status"] = {"replicas": 1}
    return live


def test_no_write_when_live_matches() -> None:
    desired = apply.stamped(render.deployment(model(), CONFIG))
    assert apply.needs_write(desired, _live(render.deployment(model(), CONFIG))) == []


def test_write_when_absent_changed_or_drifted() -> None:
    dep = render.deployment(model(), CONFIG)
    desired = apply.stamped(dep)
    assert apply.needs_write(desired, None) == ["(absent)"]
    drifted = _live(dep)
    drifted["spec"]["replicas"] = 5
    assert apply.needs_write(desired, drifted) == [".spec.replicas"]
    # A field removed from the spec leaves live a superset: only the digest tells.
    fewer = copy.deepcopy(dep)
    del fewer["spec"]["revisionHistoryLimit"]
    assert apply.needs_write(apply.stamped(fewer), _live(dep)) == [
        ".metadata.annotations.tessera.dev/applied-hash"
    ]


@pytest.mark.parametrize(
    ("want", "have", "same"),
    [
        ("500m", "0.5", True),
        ("48Gi", "51539607552", True),
        ("8", 8, True),
        ("1Gi", "1G", False),
        ("http", "http", True),
        ("http", "https", False),
    ],
)
def test_quantities_compare_by_value(want: Any, have: Any, same: bool) -> None:
    assert (apply.differences({"x": want}, {"x": have}) == []) is same


# -- status -------------------------------------------------------------------------------


def _deployment(
    want: int,
    ready: int = 0,
    updated: int | None = None,
    total: int | None = None,
    generation: int = 1,
    seen: int = 1,
) -> dict[str, Any]:
    updated = want if updated is None else updated
    return {
        "metadata": {"name": "flux", "generation": generation},
        "spec": {"replicas": want},
        "status": {
            "observedGeneration": seen,
            "replicas": want if total is None else total,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
        },
    }


def _pod(name: str, scheduled: bool = True, waiting: str | None = None) -> dict[str, Any]:
    conditions = [{"type": "PodScheduled", "status": "True"}]
    if not scheduled:
        conditions = [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": (
                    "0/3 nodes are available: 1 node(s) didn't match Pod's node "
                    "affinity/selector, 2 Insufficient nvidia.com/gpu."
                ),
            }
        ]
    statuses = []
    if waiting:
        statuses = [
            {"name": "worker", "state": {"waiting": {"reason": waiting, "message": "back-off"}}}
        ]
    return {
        "metadata": {"name": name},
        "status": {"phase": "Pending", "conditions": conditions, "containerStatuses": statuses},
    }


def _job(condition: str | None, message: str = "") -> dict[str, Any]:
    conditions = [{"type": condition, "status": "True", "message": message}] if condition else []
    return {"metadata": {"name": "flux-weights-1"}, "status": {"conditions": conditions}}


BOUND = {"metadata": {"name": "flux-weights"}, "status": {"phase": "Bound"}}

STATUS_CASES: dict[str, tuple[dict[str, Any], status.Observed, str, dict[str, tuple[str, str]]]] = {
    "nothing yet": (
        DEMO,
        status.Observed(),
        Phase.PENDING,
        {
            Condition.READY: ("False", Reason.PENDING),
            Condition.PROGRESSING: ("True", Reason.CREATING),
        },
    ),
    "downloading weights": (
        HUB,
        status.Observed(deployment=_deployment(0), job=_job(None), claim=BOUND),
        Phase.DOWNLOADING_WEIGHTS,
        {
            Condition.WEIGHTS_READY: ("False", Reason.DOWNLOADING),
            Condition.READY: ("False", Reason.WEIGHTS_NOT_READY),
        },
    ),
    "download failed": (
        HUB,
        status.Observed(deployment=_deployment(0), job=_job("Failed", "BackoffLimitExceeded")),
        Phase.FAILED,
        {
            Condition.WEIGHTS_READY: ("False", Reason.WEIGHTS_DOWNLOAD_FAILED),
            Condition.DEGRADED: ("True", Reason.WEIGHTS_DOWNLOAD_FAILED),
        },
    ),
    "loading the pipeline": (
        HUB,
        status.Observed(
            deployment=_deployment(1), pods=[_pod("a")], job=_job("Complete"), claim=BOUND
        ),
        Phase.LOADING,
        {
            Condition.WEIGHTS_READY: ("True", Reason.WEIGHTS_CACHED),
            Condition.READY: ("False", Reason.LOADING),
            Condition.PROGRESSING: ("True", Reason.SCALING),
        },
    ),
    "ready": (
        DEMO,
        status.Observed(deployment=_deployment(1, ready=1), pods=[_pod("a")]),
        Phase.READY,
        {
            Condition.READY: ("True", Reason.AVAILABLE),
            Condition.PROGRESSING: ("False", Reason.ROLLOUT_COMPLETE),
            Condition.DEGRADED: ("False", Reason.AS_EXPECTED),
            Condition.UNSCHEDULABLE: ("False", Reason.SCHEDULED),
        },
    ),
    "no GPU for any replica": (
        DEMO,
        status.Observed(deployment=_deployment(1), pods=[_pod("a", scheduled=False)]),
        Phase.UNSCHEDULABLE,
        {
            Condition.UNSCHEDULABLE: ("True", Reason.UNSCHEDULABLE),
            Condition.READY: ("False", Reason.UNSCHEDULABLE),
            Condition.DEGRADED: ("True", Reason.UNSCHEDULABLE),
        },
    ),
    "one replica short of GPUs": (
        merged(DEMO, {"replicas": 2, "scaling": {"mode": "Manual", "maxReplicas": 2}}),
        status.Observed(
            deployment=_deployment(2, ready=1), pods=[_pod("a"), _pod("b", scheduled=False)]
        ),
        Phase.DEGRADED,
        {
            Condition.READY: ("True", Reason.AVAILABLE),
            Condition.UNSCHEDULABLE: ("True", Reason.UNSCHEDULABLE),
        },
    ),
    "crash looping": (
        DEMO,
        status.Observed(deployment=_deployment(1), pods=[_pod("a", waiting="CrashLoopBackOff")]),
        Phase.DEGRADED,
        {
            Condition.DEGRADED: ("True", Reason.POD_FAILING),
            Condition.READY: ("False", Reason.LOADING),
        },
    ),
    "rolling out a new spec": (
        DEMO,
        status.Observed(
            deployment=_deployment(1, ready=1, updated=1, total=2, generation=2, seen=2),
            pods=[_pod("a"), _pod("b")],
        ),
        Phase.READY,
        {
            Condition.PROGRESSING: ("True", Reason.ROLLING_OUT),
            Condition.READY: ("True", Reason.AVAILABLE),
        },
    ),
    "controller has not seen the spec": (
        DEMO,
        status.Observed(deployment=_deployment(1, ready=1, generation=3, seen=2)),
        Phase.READY,
        {Condition.PROGRESSING: ("True", Reason.ROLLING_OUT)},
    ),
    "scaled to zero": (
        merged(DEMO, {"replicas": 0, "scaling": {"mode": "Manual", "minReplicas": 0}}),
        status.Observed(deployment=_deployment(0)),
        Phase.SCALED_TO_ZERO,
        {Condition.READY: ("True", Reason.SCALED_TO_ZERO)},
    ),
    "refused by the API server": (
        DEMO,
        status.Observed(
            deployment=_deployment(1, ready=1),
            apply_error="the API server refused Deployment flux: bad",
        ),
        Phase.DEGRADED,
        {Condition.DEGRADED: ("True", Reason.APPLY_FAILED)},
    ),
}


@pytest.mark.parametrize("case", STATUS_CASES, ids=list(STATUS_CASES))
def test_status(case: str) -> None:
    spec, observed, phase, expected = STATUS_CASES[case]
    result = status.compute(model(copy.deepcopy(spec)), observed, None, 1, NOW)
    assert result["phase"] == phase
    found = {c["type"]: (c["status"], c["reason"]) for c in result["conditions"]}
    assert set(found) == set(Condition.ALL)
    for type, want in expected.items():
        assert found[type] == want, type
    assert all(c["observedGeneration"] == 1 for c in result["conditions"])


def test_unschedulable_quotes_the_scheduler() -> None:
    observed = status.Observed(
        deployment=_deployment(2), pods=[_pod("a", scheduled=False), _pod("b")]
    )
    result = status.compute(model(copy.deepcopy(DEMO)), observed, None, 1, NOW)
    condition = status.find_condition(result["conditions"], Condition.UNSCHEDULABLE)
    assert condition is not None
    assert condition["message"].startswith(
        "1 of 2 worker pods cannot be scheduled: 0/3 nodes are available"
    )
    assert "2 Insufficient nvidia.com/gpu" in condition["message"]


def test_set_condition_keeps_transition_time_unless_status_flips() -> None:
    first = status.set_condition(None, Condition.READY, False, Reason.LOADING, "loading", 1, NOW)
    same = status.set_condition(
        first, Condition.READY, False, Reason.UNSCHEDULABLE, "no GPU", 2, LATER
    )
    assert same[0]["lastTransitionTime"] == conditions.timestamp(NOW)
    assert same[0]["observedGeneration"] == 2
    assert same[0]["reason"] == Reason.UNSCHEDULABLE
    flipped = status.set_condition(
        same, Condition.READY, True, Reason.AVAILABLE, "1 of 1", 2, LATER
    )
    assert flipped[0]["lastTransitionTime"] == conditions.timestamp(LATER)
    assert status.is_current(flipped[0], 2)
    assert not status.is_current(flipped[0], 3)


def test_recomputing_the_same_state_changes_nothing() -> None:
    m = model(copy.deepcopy(DEMO))
    observed = status.Observed(deployment=_deployment(1, ready=1), pods=[_pod("a")])
    first = status.compute(m, observed, None, 1, NOW)
    again = status.compute(m, observed, {**first, "queueDepth": 7}, 1, LATER)
    assert again == status.owned(first)
    assert status.transitions(first, again) == []


def test_events_only_on_transitions() -> None:
    m = model(copy.deepcopy(DEMO))
    pending = status.compute(
        m,
        status.Observed(deployment=_deployment(1), pods=[_pod("a", scheduled=False)]),
        None,
        1,
        NOW,
    )
    reasons = [n.reason for n in status.transitions(None, pending)]
    assert reasons == [Reason.UNSCHEDULABLE]
    ready = status.compute(
        m, status.Observed(deployment=_deployment(1, ready=1), pods=[_pod("a")]), pending, 1, LATER
    )
    notices = status.transitions(pending, ready)
    assert [(n.type, n.reason) for n in notices] == [("Normal", "Recovered"), ("Normal", "Ready")]
    lost = status.compute(
        m,
        status.Observed(deployment=_deployment(1), pods=[_pod("a", waiting="CrashLoopBackOff")]),
        ready,
        1,
        LATER,
    )
    assert [(n.type, n.reason) for n in status.transitions(ready, lost)] == [
        ("Warning", Reason.POD_FAILING),
        ("Warning", "NotReady"),
    ]


def test_invalid_spec_status() -> None:
    result = status.invalid(None, "spec.weights: exactly one", 4, NOW)
    assert result["phase"] == Phase.FAILED
    assert result["observedGeneration"] == 4
    ready = status.find_condition(result["conditions"], Condition.READY)
    assert ready is not None
    assert ready["reason"] == Reason.INVALID_SPEC


# -- the command line ---------------------------------------------------------------------


def test_operator_subcommand_flags() -> None:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["operator", "-n", "a", "-n", "b", "--standalone", "-v"])
    assert args.namespace == ["a", "b"]
    assert args.standalone
    assert args.verbose == 1
    args = parser.parse_args(["operator", "-A", "--peering", "tessera", "--liveness", "none"])
    assert args.all_namespaces
    assert args.peering == "tessera"
    assert args.liveness == "none"
    with pytest.raises(SystemExit):
        parser.parse_args(["operator", "--standalone", "--peering", "x"])


# -- the examples -------------------------------------------------------------------------

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_examples_cover_the_promised_models() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"demo-cpu", "flux-schnell", "flux-dev", "qwen-image-edit"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_parse_and_render(path: Path) -> None:
    (body,) = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "ImageModel"]
    body["metadata"]["namespace"] = "ml"
    defaulted = apply_defaults(copy.deepcopy(body["spec"]), SPEC_SCHEMA)
    m = parse({**body, "spec": defaulted})
    assert m.spec == parse_spec(body["spec"])
    dep = render.deployment(m, CONFIG)
    container = worker(dep)
    if m.spec.gpu.count:
        assert dep["spec"]["template"]["spec"]["nodeSelector"] == {
            "nvidia.com/gpu.product": H100_PRODUCT
        }
    else:
        assert "nvidia.com/gpu" not in container["resources"]["limits"]
    if path.stem == "qwen-image-edit":
        assert m.spec.task.value == "image-to-image"
    if path.stem == "flux-dev":
        job = render.weights_job(m, CONFIG)
        assert job is not None
        env = env_of(job["spec"]["template"]["spec"]["containers"][0])
        assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
