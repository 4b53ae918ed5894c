"""A model's declared differences, served with ``tessera serve --image-model FILE=PATH``.

The ImageModel document says what its pipeline family takes (a renamed argument, the
parameters it refuses, how many references); the server publishes exactly that schema and
refuses what the model cannot honour at submit, naming the model and the parameter, so no
job is created that would fail later.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.api.helpers import download, image_of, png_bytes, submit, wait
from tests.conftest import new_server
from tests.support.server import ServerProcess

# A distilled FLUX that takes no negative prompt, on the demo's tiny FluxPipeline.
SPEC = {
    "apiVersion": "tessera.dev/v1alpha1",
    "kind": "ImageModel",
    "metadata": {"name": "no-negative"},
    "spec": {
        "task": "text-to-image",
        "weights": {"demo": {}},
        "pipeline": {"className": "FluxPipeline", "unsupported": ["negative_prompt"]},
        "parameters": {"numInferenceSteps": {"min": 1, "max": 4, "default": 2}},
        "gpu": {"count": 0},
    },
}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, demo_models_dir: Path
) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("capabilities")
    spec = base / "no-negative.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    started = new_server(
        base, demo_models_dir, "--image-model", f"{spec}={base / 'models' / 'tessera-demo'}"
    ).start()
    yield started
    started.stop()


def test_the_published_schema_is_the_models(server: ServerProcess) -> None:
    with server.client() as client:
        models = {m["model_name"]: m for m in client.get("/base_models").json()["models"]}
    schema = models["no-negative"]["parameters"]
    assert "negative_prompt" not in schema["properties"]
    assert schema["x-unsupported"] == ["negative_prompt"]
    edit = models["tessera-demo-edit"]["parameters"]
    assert edit["properties"]["image_urls"]["maxItems"] == 1  # Kontext takes one reference


def test_a_refused_parameter_is_a_4xx_at_submit_and_no_job(server: ServerProcess) -> None:
    body = {"model": "no-negative", "prompt": "a kite", "num_inference_steps": 1}
    with server.client() as client:
        before = submit(client, body)
        refused = client.post("/images/generations", json={**body, "negative_prompt": "blur"})
        assert refused.status_code == 422, refused.text
        message = refused.json()["message"]
        assert "no-negative" in message
        assert "negative_prompt" in message
        # No job was written for it: the next id follows the last accepted one.
        after = submit(client, body)
        assert after == before + 1
        two = "data:image/png;base64," + base64.b64encode(png_bytes(64, 48)).decode()
        too_many = client.post(
            "/images/edits",
            json={"model": "tessera-demo-edit", "prompt": "x", "image_urls": [two, two]},
        )
        assert too_many.status_code == 422, too_many.text
        assert "image_urls" in too_many.text


def test_every_parameter_it_takes_off_the_16_pixel_grid(server: ServerProcess) -> None:
    with server.client() as client:
        task = wait(
            client,
            submit(
                client,
                {
                    "model": "no-negative",
                    "prompt": "a kite",
                    "image_size": "100x72",
                    "num_images": 2,
                    "num_inference_steps": 2,
                    "guidance_scale": 3.0,
                    "seed": 7,
                    "output_format": "webp",
                },
            ),
        )
    assert task["status"] == "completed", task
    assert [image_of(download(d["url"])).size for d in task["result"]["data"]] == [(100, 72)] * 2
