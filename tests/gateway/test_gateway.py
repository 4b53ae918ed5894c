"""``tessera gateway`` as a cluster runs it: stateless replicas over one redis-server and
shared storage, no pipeline in-process, per-model queue limits and timeouts."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.helpers import FAST, assert_error, download, image_of, png_bytes, submit, wait
from tests.support import seed_client
from tests.support.gateway import GatewayDeployment, demo_image_models, write_models
from tests.support.server import ServerProcess

HEAVY_MODULES = ("torch", "diffusers", "transformers", "kopf")


@pytest.fixture(scope="module")
def second_gateway(gateway_deployment: GatewayDeployment) -> Iterator[ServerProcess]:
    """Another replica of the session's gateway, started under ``python -X importtime`` so
    its log lists every module it ever imported."""
    assert gateway_deployment.models_file is not None
    replica = gateway_deployment.gateway(gateway_deployment.models_file)
    replica.env["PYTHONPROFILEIMPORTTIME"] = "1"
    yield replica.start()
    replica.stop()


def test_any_replica_answers_for_any_job(
    gateway_deployment: GatewayDeployment, second_gateway: ServerProcess
) -> None:
    body = {"model": "tessera-demo", "prompt": "a harbour", "image_size": "square", **FAST}
    with gateway_deployment.client() as first, second_gateway.client() as second:
        job_id = submit(first, body)
        task = wait(second, job_id)
        assert task["status"] == "completed", task
        [item] = task["result"]["data"]
        # The URL names the replica that answered; the other replica serves it just as well.
        assert item["url"].startswith(second_gateway.api_url)
        elsewhere = item["url"].replace(second_gateway.base_url, gateway_deployment.base_url)
        assert download(elsewhere) == download(item["url"])
        assert image_of(download(item["url"])).size == (512, 512)
        # An upload granted by one replica is usable through the other.
        grant = second.get("/images/signed-url").json()
        assert httpx.put(grant["signed_url"], content=png_bytes()).status_code == 204
        edit = {
            "model": "tessera-demo-edit",
            "prompt": "blue",
            "image_url": grant["filename"],
            "image_size": "64x48",
            **FAST,
        }
        edited = wait(second, submit(first, edit, "/images/edits"))
        assert edited["status"] == "completed", edited


def test_the_gateway_never_imports_a_pipeline_library(
    gateway_deployment: GatewayDeployment, second_gateway: ServerProcess
) -> None:
    with second_gateway.client() as client:
        # Every path a request takes: list, submit, long-poll a result, download it.
        assert client.get("/base_models").status_code == 200
        task = wait(client, submit(client, {"model": "tessera-demo", "prompt": "x", **FAST}))
        download(task["result"]["data"][0]["url"])
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in second_gateway.log().splitlines()
        if line.startswith("import time:")
    }
    assert "fastapi" in imported and "redis" in imported, "the import log was not written"
    assert imported.isdisjoint(HEAVY_MODULES), imported & set(HEAVY_MODULES)


@pytest.fixture(scope="module")
def workerless_gateway(
    gateway_deployment: GatewayDeployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A gateway serving two models that no worker runs: one that gives up on a job after a
    second, one whose queue holds two jobs."""
    lonely, full = demo_image_models()
    lonely["metadata"]["name"] = lonely["spec"]["modelName"] = "lonely"
    lonely["spec"]["queue"] = {"timeoutSeconds": 1}
    full["metadata"]["name"] = full["spec"]["modelName"] = "full"
    full["spec"].update(task="text-to-image", queue={"maxQueued": 2})
    models = write_models(tmp_path_factory.mktemp("workerless") / "models.yaml", [lonely, full])
    server = gateway_deployment.gateway(models).start()
    yield server
    server.stop()


def test_a_job_no_worker_takes_fails_after_the_queue_timeout(
    workerless_gateway: ServerProcess,
) -> None:
    with workerless_gateway.client() as client:
        started = time.monotonic()
        job_id = submit(client, {"model": "lonely", "prompt": "anyone?", **FAST})
        task = wait(client, job_id, timeout=30)
        waited = time.monotonic() - started
    assert task["status"] == "failed"
    assert (
        "no worker for model 'lonely' became ready within its queue timeout of 1 s"
        in (task["error"]["message"])
    )
    assert "result" not in task
    assert 1 <= waited < 10, waited


def test_a_full_queue_answers_429_with_retry_after(workerless_gateway: ServerProcess) -> None:
    body = {"model": "full", "prompt": "wait for me", **FAST}
    with workerless_gateway.client() as client:
        accepted = [submit(client, body) for _ in range(2)]
        refused = client.post("/images/generations", json=body)
        error = assert_error(refused, 429, "model")
        assert refused.headers["Retry-After"] == "5"
        assert error["rule"] == "max_queued" and "is full (2 jobs waiting)" in error["message"]
        assert [client.get(f"/images/tasks/{i}").json()["status"] for i in accepted] == [
            "queued",
            "queued",
        ]


def test_the_seed_articles_client_works_against_a_gateway(
    gateway_deployment: GatewayDeployment, tmp_path: Path
) -> None:
    """The reference client as the seed article writes it: submit, poll every few seconds
    with no ``wait``, then fetch the url or decode the base64."""
    payload = {
        "model": "tessera-demo",
        "prompt": "a lighthouse at dusk",
        "image_size": "square",
        "num_images": 2,
        "response_format": "b64_json",
        **FAST,
    }
    status = seed_client.generate(gateway_deployment.api_url, gateway_deployment.api_key, payload)
    assert status["status"] == "completed", status
    assert status["result"]["usage"]["output_tokens"] == 2 * 1024
    for index, item in enumerate(status["result"]["data"]):
        fetched = seed_client.fetch(item["url"])
        (tmp_path / f"image_{index}.png").write_bytes(fetched)
        assert base64.b64decode(item["b64_json"]) == fetched
        assert image_of(fetched).size == (512, 512)


def test_with_s3_downloads_and_uploads_go_to_the_store(
    gateway_s3_deployment: GatewayDeployment,
) -> None:
    """Presigned by default; ``--public-downloads gateway`` for a store clients cannot reach."""
    assert gateway_s3_deployment.s3 is not None and gateway_s3_deployment.models_file
    endpoint = gateway_s3_deployment.s3.endpoint
    relay = gateway_s3_deployment.gateway(
        gateway_s3_deployment.models_file, "--public-downloads", "gateway"
    ).start()
    body = {"model": "tessera-demo", "prompt": "a quay", "image_size": "64x48", **FAST}
    try:
        with gateway_s3_deployment.client() as direct, relay.client() as relayed:
            grant = direct.get("/images/signed-url").json()
            assert grant["signed_url"].startswith(endpoint)
            assert httpx.put(grant["signed_url"], content=png_bytes()).is_success
            [item] = wait(direct, submit(direct, body))["result"]["data"]
            assert item["url"].startswith(endpoint)
            relayed_grant = relayed.get("/images/signed-url").json()
            assert relayed_grant["signed_url"].startswith(relay.api_url)
            [relayed_item] = wait(relayed, submit(relayed, body))["result"]["data"]
            assert relayed_item["url"].startswith(relay.api_url)
            assert image_of(download(relayed_item["url"])).size == (64, 48)
            # Either replica reads the store's presigned URL from the store, as the default
            # rules would refuse to fetch from a loopback address.
            edit = {**body, "model": "tessera-demo-edit", "image_url": item["url"]}
            edited = wait(relayed, submit(relayed, edit, "/images/edits"))
            assert edited["status"] == "completed", edited
    finally:
        relay.stop()
