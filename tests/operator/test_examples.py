"""Every ``examples/`` ImageModel is one a user can apply and a worker can run.

Locally: each parses, renders a Deployment whose worker command ``tessera worker``'s own
parser and settings accept (with the rendered environment), with the GPUs it declares. On
the test control plane: the API server accepts each against the CRD (a server-side dry run,
so defaulting, the schema and the CEL rules all apply).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tessera.operator import render
from tessera.runtime.cli import build_parser
from tessera.runtime.imagemodel import ImageModel, InvalidImageModel, load_documents, parse
from tessera.runtime.settings import WorkerSettings, settings_from
from tests.cluster.harness import Cluster
from tests.operator.process import install_crds

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
# The seed's line-up, by public name: every model Hyperstack serves has an example.
LINE_UP = {
    "FLUX.1-schnell",
    "FLUX.1-dev",
    "FLUX.1-Krea-dev",
    "SRPO",
    "Qwen-Image",
    "Qwen-Image-2512",
    "stable-diffusion-3.5-large",
    "stable-diffusion-3.5-medium",
    "Z-Image-Turbo",
    "HunyuanImage-2.1",
    "FLUX.1-Kontext-dev",
    "FLUX.2-dev",
    "Qwen-Image-Edit",
    "Qwen-Image-Edit-Plus",
    "LongCat-Image-Edit",
}
CONFIG = render.RenderConfig(queue_url="redis://tessera-redis:6379/0")


def document(path: Path) -> dict[str, Any]:
    body = yaml.safe_load(path.read_text())
    assert isinstance(body, dict)
    return body


def example(path: Path) -> ImageModel:
    return parse(document(path))


def test_the_whole_line_up_has_examples() -> None:
    names = {example(path).model_name for path in EXAMPLES}
    assert names >= LINE_UP, sorted(LINE_UP - names)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_renders_a_worker_its_parser_accepts(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = example(path)
    deployment = render.deployment(model, CONFIG)
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    for variable in container["env"]:
        if "value" in variable:
            monkeypatch.setenv(variable["name"], variable["value"])
    args = build_parser().parse_args(container["command"][1:])
    settings = settings_from(WorkerSettings, args)
    assert settings.model == model.model_name
    assert settings.task is model.spec.task
    assert settings.pipeline == model.spec.pipeline
    assert settings.model_parameters == model.spec.parameters
    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    assert gpus == (str(model.spec.gpu.count) if model.spec.gpu.count else None)
    if model.spec.pipeline.device_map:
        # A model spread over GPUs by device_map has more than one to spread over.
        assert model.spec.gpu.count > 1


def test_flux2_is_placed_over_two_gpus_and_refuses_a_negative_prompt() -> None:
    model = example(next(p for p in EXAMPLES if p.stem == "flux2-dev"))
    [container] = render.deployment(model, CONFIG)["spec"]["template"]["spec"]["containers"]
    pipeline = json.loads({e["name"]: e.get("value") for e in container["env"]}["TESSERA_PIPELINE"])
    assert pipeline["deviceMap"] == "balanced"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    record = model.model_spec().public_record()
    assert record["modalities"] == ["image-to-image", "text-to-image"]
    assert record["parameters"]["properties"]["image_urls"]["maxItems"] == 4
    assert "negative_prompt" not in record["parameters"]["properties"]
    assert record["parameters"]["x-unsupported"] == ["negative_prompt"]


def test_examples_pass_the_api_servers_validation(
    kube_cluster: Cluster, kube_namespace: str
) -> None:
    install_crds(kube_cluster)
    listing = {"apiVersion": "v1", "kind": "List", "items": [document(p) for p in EXAMPLES]}
    result = kube_cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        kube_namespace,
        "-o",
        "json",
        "-f",
        "-",
        input=json.dumps(listing),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    accepted = json.loads(result.stdout)["items"]
    assert len(accepted) == len(EXAMPLES)
    # What the API server stored, its defaults filled in, means what the file means here.
    local = {example(path).name: example(path).spec for path in EXAMPLES}
    assert {body["metadata"]["name"]: parse(body).spec for body in accepted} == local


# Values of the wrong JSON type, each where the CRD says another: the API server refuses
# every one, and a models file read without a cluster must not quietly coerce them.
WRONG_TYPES = [
    ({"gpu": {"count": "2"}}, "spec.gpu.count"),
    ({"queue": {"timeoutSeconds": 1.5}}, "spec.queue.timeoutSeconds"),
    ({"replicas": True}, "spec.replicas"),
    (
        {"parameters": {"numInferenceSteps": {"default": "4"}}},
        "spec.parameters.numInferenceSteps.default",
    ),
    ({"pricePerPatch": 0.0001}, "spec.pricePerPatch"),
]


def _with(change: dict[str, Any]) -> dict[str, Any]:
    body = document(EXAMPLES_BY_NAME["demo-cpu.yaml"])
    body["spec"] = {**body["spec"], **change}
    return body


EXAMPLES_BY_NAME = {path.name: path for path in EXAMPLES}


@pytest.mark.parametrize(("change", "field"), WRONG_TYPES)
def test_a_models_file_refuses_what_the_api_server_refuses(
    change: dict[str, Any], field: str, tmp_path: Path
) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump(_with(change)))
    with pytest.raises(InvalidImageModel, match=re.escape(field)):
        load_documents(models)


# A range given in part (its other ends are the CRD's defaults), with an integer where the
# CRD says number (JSON has one number type): both mean what the API server stores.
PARTIAL = {
    "parameters": {"guidanceScale": {"default": 5}, "numInferenceSteps": {"min": 2, "default": 10}}
}


def test_a_partial_range_takes_the_apis_other_ends(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump(_with(PARTIAL)))
    (model,) = load_documents(models)
    limits = model.spec.parameters
    assert (limits.guidance_scale.min, limits.guidance_scale.max) == (1.0, 20.0)
    assert limits.guidance_scale.default == 5.0
    assert (limits.num_inference_steps.min, limits.num_inference_steps.max) == (2, 50)


def test_the_api_server_stores_a_partial_range_as_a_file_means_it(
    kube_cluster: Cluster, kube_namespace: str, tmp_path: Path
) -> None:
    install_crds(kube_cluster)
    body = _with(PARTIAL)
    result = kube_cluster.kubectl(
        "apply", "--dry-run=server", "-n", kube_namespace, "-o", "json", "-f", "-",
        input=json.dumps(body),
    )  # fmt: skip
    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump(body))
    (local,) = load_documents(models)
    assert parse(json.loads(result.stdout)).spec == local.spec


def test_the_api_server_refuses_the_same_wrong_types(
    kube_cluster: Cluster, kube_namespace: str
) -> None:
    install_crds(kube_cluster)
    for change, field in WRONG_TYPES:
        result = kube_cluster.kubectl(
            "apply", "--dry-run=server", "-n", kube_namespace, "-f", "-",
            input=json.dumps(_with(change)),
            check=False,
        )  # fmt: skip
        assert result.returncode != 0, (change, result.stdout)
        assert field in result.stderr, (field, result.stderr)
