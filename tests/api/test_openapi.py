"""The OpenAPI document is generated from the validating models, and fuzzing it finds no 5xx."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import new_server
from tests.support.server import ServerProcess


def test_openapi_and_docs(demo_server: ServerProcess) -> None:
    document = httpx.get(demo_server.base_url + "/openapi.json").json()
    for path in [
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/images/tasks/{job_id}",
        "/v1/images/signed-url",
        "/v1/base_models",
    ]:
        assert path in document["paths"], path
    schemas = document["components"]["schemas"]
    (generation,) = schemas["GenerationRequest"]["oneOf"]
    (edit,) = schemas["EditRequest"]["oneOf"]
    assert "image_size" in generation["properties"] and "image_url" not in generation["properties"]
    # Each model's own limits and name, so every body the schema allows is accepted.
    assert generation["properties"]["model"] == {"const": "tessera-demo"}
    assert edit["properties"]["model"] == {"const": "tessera-demo-edit"}
    assert generation["properties"]["num_inference_steps"]["anyOf"][0]["maximum"] == 50
    # Exact integers, not floats that round 2**64 - 1 up to 2**64.
    raw = httpx.get(demo_server.base_url + "/openapi.json").text
    assert '"maximum":18446744073709551615' in raw.replace(" ", "") and "e+" not in raw
    submit = document["paths"]["/v1/images/generations"]["post"]["responses"]
    assert {"400", "401", "404", "413", "422", "429"} <= set(submit)
    assert "Retry-After" in submit["429"]["headers"]
    assert document["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "api_key"
    docs = httpx.get(demo_server.base_url + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_fuzzing_the_openapi_document_finds_no_nonconformance(
    tmp_path: Path, demo_models_dir: Path
) -> None:
    """Schemathesis sends valid and invalid requests to every operation, with every check it
    has: no 5xx, every status and header declared, bodies matching their schemas, invalid data
    refused and valid data accepted.

    Its own server, because fuzzed jobs queue up work that must not slow the other tests. The
    seed is fixed so a run is reproducible and CI cannot fail by chance; explore further with
    other seeds and more examples by hand (the command is in the README).
    """
    # Limits no fuzzer's burst meets: a 429 for valid data would read as refusing it.
    server = new_server(
        tmp_path / "fuzz",
        demo_models_dir,
        "--rate-limit-submit",
        "100000/second",
        "--rate-limit-poll",
        "100000/second",
        "--rate-limit-b64",
        "100000/second",
    ).start()
    try:
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"),
                "--config-file",
                str(Path(__file__).with_name("schemathesis.toml")),
                "run",
                server.base_url + "/openapi.json",
                "--checks",
                "all",
                "--header",
                f"api_key: {server.api_key}",
                "--max-examples",
                "30",
                "--workers",
                "1",
                "--seed",
                "20261125",
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        server.kill()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    generated = re.search(r"(\d+) generated", result.stdout)
    assert generated is not None and int(generated.group(1)) >= 100, result.stdout[-3000:]
