"""The chart's `helm test` script (files/helm-test.py) against a real `tessera serve --demo`,
run the way the test pod runs it (`python -c`), so the hook is known to pass before a
cluster ever starts it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.server import ServerProcess

from .render import CHART, render

SCRIPT = (CHART / "files" / "helm-test.py").read_text()


def run_script(server: ServerProcess, model: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "TESSERA_BASE_URL": server.api_url,
        "TESSERA_API_KEY": server.api_key,
        "TESSERA_TEST_MODEL": model,
        "TESSERA_TEST_TIMEOUT": "120",
    }
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_the_hook_runs_the_script_in_the_chart() -> None:
    pod = render().get("Pod", "tessera-test-generate")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["containers"][0]["command"] == ["python", "-c", SCRIPT]


def test_the_script_checks_the_image_and_the_patches(demo_server: ServerProcess) -> None:
    model = demo_server.client().get("/base_models").json()["models"][0]["model_name"]
    result = run_script(demo_server, model)
    assert result.returncode == 0, result.stdout + result.stderr
    # 128x96: 8 x 6 patches.
    assert f"PNG 128x96 from {model}, 48 patches billed" in result.stdout


def test_the_script_fails_on_a_model_not_served(demo_server: ServerProcess) -> None:
    result = run_script(demo_server, "no-such-model")
    assert result.returncode == 1
    assert "'no-such-model' is not served (apply its ImageModel first)" in result.stderr
