"""The seed's line-up, one tiny random-weight pipeline per family, served as its example says.

Each family (Flux2, Qwen-Image, Qwen-Image-Edit and Edit-Plus, SD3, Z-Image, HunyuanImage,
LongCat-Image-Edit) is built offline by ``tests.support.families`` and served by one
``tessera serve`` with ``--image-model examples/<model>.yaml=<tiny pipeline>``: the
example's task, parameters, renamed arguments and refusals, on a CPU (its dtype, compile,
device map and VAE tiling are the GPU's business and are dropped here). Each model is then
driven through the API with every parameter its family takes, a size off the 16-pixel grid
and several references where it takes them; what it refuses is a 4xx at submit.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.api.helpers import download, image_of, png_bytes, submit, wait
from tests.conftest import new_server
from tests.support.families import BUILDERS
from tests.support.server import ServerProcess

EXAMPLES = Path(__file__).parents[2] / "examples"
# The example each family is served as.
SERVED = {
    "qwen-image": "QwenImagePipeline",
    "qwen-image-edit": "QwenImageEditPipeline",
    "qwen-image-edit-plus": "QwenImageEditPlusPipeline",
    "flux2-dev": "Flux2Pipeline",
    "sd35-large": "StableDiffusion3Pipeline",
    "z-image-turbo": "ZImagePipeline",
    "hunyuan-image": "HunyuanImagePipeline",
    "longcat-image-edit": "LongCatImageEditPipeline",
}
GPU_ONLY = ("dtype", "compile", "deviceMap", "vaeTiling", "attention")
SIZE = {"width": 100, "height": 72}  # neither side on the 16-pixel grid


def on_cpu(example: Path, target: Path) -> Path:
    """The example with its GPU-only loading options dropped and sides down to 16 pixels."""
    body = yaml.safe_load(example.read_text())
    pipeline = body["spec"]["pipeline"]
    for name in GPU_ONLY:
        pipeline.pop(name, None)
    body["spec"]["parameters"]["minSide"] = 16
    body["spec"]["gpu"] = {"count": 0}
    target.write_text(yaml.safe_dump(body))
    return target


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, demo_models_dir: Path
) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    base = tmp_path_factory.mktemp("line-up")
    arguments: list[str] = []
    names = {}
    for stem, family in SERVED.items():
        pipeline = BUILDERS[family](base / "pipelines" / stem)
        spec = on_cpu(EXAMPLES / f"{stem}.yaml", base / f"{stem}.yaml")
        arguments += ["--image-model", f"{spec}={pipeline}"]
        names[stem] = yaml.safe_load(spec.read_text())["spec"]["modelName"]
    server = new_server(base / "server", demo_models_dir, *arguments).start(ready_timeout=600)
    yield server, names
    server.stop()


def source(width: int = 120, height: int = 90, colour: str = "orange") -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(width, height, colour)).decode()


# What each model is sent: every parameter its family takes (refused ones left out).
REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen-image": (
        "/images/generations",
        {"negative_prompt": "blurry", "guidance_scale": 4.0, "num_images": 2},
    ),
    "sd35-large": ("/images/generations", {"negative_prompt": "blurry", "guidance_scale": 5.0}),
    "z-image-turbo": ("/images/generations", {}),
    "hunyuan-image": ("/images/generations", {"negative_prompt": "blurry"}),
    "flux2-dev": ("/images/generations", {"guidance_scale": 4.0}),
    "flux2-dev edit": (
        "/images/edits",
        {"guidance_scale": 4.0, "image_urls": [source(), source(80, 80, "blue")]},
    ),
    "qwen-image-edit": (
        "/images/edits",
        {"negative_prompt": "blurry", "guidance_scale": 4.0, "image_url": source()},
    ),
    "qwen-image-edit-plus": (
        "/images/edits",
        {"guidance_scale": 4.0, "image_urls": [source(), source(80, 80, "blue")]},
    ),
    "longcat-image-edit": (
        "/images/edits",
        {"negative_prompt": "blurry", "guidance_scale": 4.5, "image_url": source()},
    ),
}
# What each refuses, and why: the example declares it.
REFUSED: dict[str, tuple[str, dict[str, Any], str]] = {
    "flux2-dev": ("/images/generations", {"negative_prompt": "blurry"}, "negative_prompt"),
    "z-image-turbo": ("/images/generations", {"guidance_scale": 1.0}, "guidance_scale"),
    "hunyuan-image": ("/images/generations", {"guidance_scale": 4.0}, "guidance_scale"),
    "longcat-image-edit": (
        "/images/edits",
        {"image_url": source(), "image_size": SIZE},
        "image_size",
    ),
    "qwen-image-edit": (
        "/images/edits",
        {"image_urls": [source(), source()]},
        "image_urls",
    ),
}


@pytest.mark.parametrize("case", REQUESTS)
def test_every_parameter_the_family_takes(
    served: tuple[ServerProcess, dict[str, str]], case: str
) -> None:
    server, names = served
    stem = case.split()[0]
    path, extra = REQUESTS[case]
    body = {
        "model": names[stem],
        "prompt": "a red kite over the sea",
        "num_inference_steps": 2,
        "seed": 11,
        "output_format": "webp",
        **({} if stem == "longcat-image-edit" else {"image_size": SIZE}),
        **extra,
    }
    with server.client(timeout=60) as client:
        task = wait(client, submit(client, body, path), timeout=300)
    assert task["status"] == "completed", task
    images = [image_of(download(item["url"])) for item in task["result"]["data"]]
    # LongCat takes no size: it makes its default, square_hd, and is billed for that.
    expected = (1024, 1024) if stem == "longcat-image-edit" else (100, 72)
    assert [image.size for image in images] == [expected] * body.get("num_images", 1)
    assert {image.format for image in images} == {"WEBP"}
    width, height = expected
    patches = -(-width // 16) * -(-height // 16) * len(images)
    assert task["result"]["usage"]["output_tokens"] == patches


@pytest.mark.parametrize("stem", REFUSED)
def test_what_the_model_cannot_honour_is_refused_at_submit(
    served: tuple[ServerProcess, dict[str, str]], stem: str
) -> None:
    server, names = served
    path, extra, field = REFUSED[stem]
    body = {"model": names[stem], "prompt": "a kite", "num_inference_steps": 1, **extra}
    with server.client() as client:
        response = client.post(path, json=body)
        models = {m["model_name"]: m for m in client.get("/base_models").json()["models"]}
    assert response.status_code == 422, response.text
    assert field in response.text
    schema = models[names[stem]]["parameters"]
    if field == "image_urls":
        assert schema["properties"]["image_urls"]["maxItems"] == 1
    else:
        assert names[stem] in response.json()["message"]
        assert field not in schema["properties"]
        assert field in schema["x-unsupported"]


def test_a_worker_whose_spec_hides_a_gap_refuses_to_start(tmp_path: Path) -> None:
    # Flux2Pipeline takes no negative_prompt: a spec that does not say so would let the
    # gateway accept jobs that fail, so the worker will not load it; a renamed argument
    # the pipeline lacks is refused the same way.
    from tessera.runtime.worker.options import PipelineOptions
    from tessera.runtime.worker.pipeline import LoadedPipeline

    path = BUILDERS["Flux2Pipeline"](tmp_path / "flux2")
    with pytest.raises(ValueError, match=r"spec.pipeline.unsupported: \[negative_prompt\]"):
        LoadedPipeline.load(path, "cpu", None, PipelineOptions())
    with pytest.raises(ValueError, match="names 'true_cfg_scale', which Flux2Pipeline"):
        LoadedPipeline.load(
            path,
            "cpu",
            None,
            PipelineOptions(
                arguments={"guidance_scale": "true_cfg_scale"}, unsupported=("negative_prompt",)
            ),
        )
    loaded = LoadedPipeline.load(
        path, "cpu", None, PipelineOptions(unsupported=("negative_prompt",))
    )
    assert loaded.targets == {
        "guidance_scale": "guidance_scale",
        "negative_prompt": None,
        "image_size": "width,height",
    }


def test_z_image_turbo_runs_without_cfg_at_the_guidance_its_spec_fixes(tmp_path: Path) -> None:
    # ZImagePipeline runs CFG at any guidance above 0; the model card's 0 is below the API's
    # range, so the example refuses guidance_scale and fixes the pipeline's argument at 0.
    from tessera.runtime.worker.options import PipelineOptions
    from tessera.runtime.worker.pipeline import LoadedPipeline
    from tests.support.params import job_params

    path = BUILDERS["ZImagePipeline"](tmp_path / "z-image")
    spec = yaml.safe_load(on_cpu(EXAMPLES / "z-image-turbo.yaml", tmp_path / "z.yaml").read_text())
    loaded = LoadedPipeline.load(
        path, "cpu", None, PipelineOptions.model_validate(spec["spec"]["pipeline"])
    )
    params = job_params(prompt="a kite", width=64, height=48, seed=3, num_inference_steps=2)
    assert loaded.arguments(params, [])["guidance_scale"] == 0.0
    [image] = loaded.generate(params)
    assert image.size == (64, 48)
    assert loaded.pipeline.do_classifier_free_guidance is False
    # A fixed argument the pipeline lacks, or one a request also sets, stops the worker.
    with pytest.raises(ValueError, match="fixedArguments names true_cfg_scale, which ZImage"):
        LoadedPipeline.load(
            path,
            "cpu",
            None,
            PipelineOptions(
                unsupported=("guidance_scale", "negative_prompt"),
                fixed_arguments={"true_cfg_scale": 1.0},
            ),
        )
    with pytest.raises(ValueError, match="guidance_scale would also carry a request's value"):
        LoadedPipeline.load(
            path,
            "cpu",
            None,
            PipelineOptions(
                unsupported=("negative_prompt",), fixed_arguments={"guidance_scale": 0}
            ),
        )
