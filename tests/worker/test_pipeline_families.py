"""A second diffusers family, Stable Diffusion, served with no code of its own.

The worker maps API parameters by introspecting ``__call__``: Stable Diffusion takes a size
and a negative prompt like Flux; its image-to-image pipeline takes no size at all, so the
source is handed over at the requested size instead.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tessera.runtime.worker.options import PipelineOptions
from tessera.runtime.worker.pipeline import LoadedPipeline, UnsupportedParameter
from tests.api.helpers import download, image_of, png_bytes, submit, wait
from tests.conftest import new_server
from tests.support.params import job_params
from tests.support.pipelines import build_stable_diffusion
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stable-diffusion")
    build_stable_diffusion(root / "sd")
    build_stable_diffusion(root / "sd-img2img", image_to_image=True)
    return root


def test_text_to_image_takes_size_seed_and_negative_prompt(sd_dir: Path) -> None:
    loaded = LoadedPipeline.load(sd_dir / "sd", "cpu")
    assert type(loaded.pipeline).__name__ == "StableDiffusionPipeline"
    params = job_params(width=72, height=40, seed=3, negative_prompt="blurry", num_images=2)
    first = loaded.generate(params)
    assert [image.size for image in first] == [(72, 40), (72, 40)]
    again = loaded.generate(params)
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again, strict=True)
    )


def test_image_to_image_without_a_size_gets_its_source_at_the_size_asked(sd_dir: Path) -> None:
    loaded = LoadedPipeline.load(sd_dir / "sd-img2img", "cpu")
    assert "width" not in loaded.accepted
    source = Image.new("RGB", (100, 80), "red")
    [image] = loaded.generate(job_params(width=64, height=48, num_inference_steps=2), [source])
    assert image.size == (64, 48)
    with pytest.raises(UnsupportedParameter, match="takes no image size"):
        loaded.generate(job_params())
    # Its default strength, 0.8, leaves no step of one to denoise: a clear error, not torch's.
    with pytest.raises(UnsupportedParameter, match="ask for at least 2 steps"):
        loaded.generate(job_params(num_inference_steps=1), [source])


def test_a_fixed_strength_is_the_one_the_worker_counts_steps_with(sd_dir: Path) -> None:
    options = PipelineOptions(fixed_arguments={"strength": 0.25})
    loaded = LoadedPipeline.load(sd_dir / "sd-img2img", "cpu", options=options)
    source = Image.new("RGB", (64, 48), "red")
    with pytest.raises(UnsupportedParameter, match="ask for at least 4 steps"):
        loaded.generate(job_params(num_inference_steps=3), [source])
    [image] = loaded.generate(job_params(width=64, height=48, num_inference_steps=4), [source])
    assert image.size == (64, 48)
    # No step at all to denoise, or more than all of them: every job would fail.
    for strength in (0, 1.5):
        with pytest.raises(ValueError, match=r"fixedArguments\.strength: .* above 0 and at most 1"):
            LoadedPipeline.load(
                sd_dir / "sd-img2img",
                "cpu",
                options=PipelineOptions(fixed_arguments={"strength": strength}),
            )


@pytest.fixture(scope="module")
def sd_server(
    tmp_path_factory: pytest.TempPathFactory, demo_models_dir: Path, sd_dir: Path
) -> Iterator[ServerProcess]:
    server = new_server(
        tmp_path_factory.mktemp("sd-server"),
        demo_models_dir,
        "--model",
        f"sd={sd_dir / 'sd'}",
        "--model",
        f"sd-edit={sd_dir / 'sd-img2img'}:image-to-image",
    ).start()
    yield server
    server.stop()


def test_served_through_the_api(sd_server: ServerProcess) -> None:
    with sd_server.client() as client:
        models = {m["model_name"]: m for m in client.get("/base_models").json()["models"]}
        assert {"sd", "sd-edit"} <= set(models)
        generation = wait(
            client,
            submit(
                client,
                {
                    "model": "sd",
                    "prompt": "a kite",
                    "image_size": {"width": 80, "height": 48},
                    "num_inference_steps": 2,
                },
            ),
        )
        assert generation["status"] == "completed", generation
        source = "data:image/png;base64," + base64.b64encode(png_bytes(120, 90)).decode()
        edit = wait(
            client,
            submit(
                client,
                {
                    "model": "sd-edit",
                    "prompt": "make it blue",
                    "image_url": source,
                    "image_size": "square",
                    "num_inference_steps": 2,
                },
                "/images/edits",
            ),
        )
        assert edit["status"] == "completed", edit
    assert image_of(download(generation["result"]["data"][0]["url"])).size == (80, 48)
    assert image_of(download(edit["result"]["data"][0]["url"])).size == (512, 512)
