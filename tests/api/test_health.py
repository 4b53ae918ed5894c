"""Health endpoints say whether jobs will run, and why not."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from tests.api.helpers import submit
from tests.conftest import new_server
from tests.support.server import ServerProcess


def test_ready_once_the_pipelines_are_loaded(demo_server: ServerProcess) -> None:
    assert httpx.get(demo_server.base_url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(demo_server.base_url + "/readyz").json() == {"status": "ready"}


def test_a_model_that_cannot_load_is_reported_and_loses_no_job(
    tmp_path: Path, demo_models_dir: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    # A real pipeline class (so the server starts: the class is read at start-up) whose
    # components are missing: loading fails in the worker.
    (broken / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    server = new_server(tmp_path / "data", demo_models_dir, "--model", f"broken={broken}")
    server.start(probe="/healthz")
    try:
        for _ in range(600):
            response = httpx.get(server.base_url + "/readyz")
            if response.json()["status"] == "failed":
                break
            time.sleep(0.2)
        assert response.status_code == 503
        assert "the worker stopped" in response.json()["error"]
        with server.client() as client:
            job_id = submit(
                client, {"model": "tessera-demo", "prompt": "kept", "num_inference_steps": 1}
            )
            assert client.get(f"/images/tasks/{job_id}").json()["status"] == "queued"
    finally:
        server.stop()
