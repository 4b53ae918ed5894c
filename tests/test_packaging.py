"""The distribution: a wheel holds every module and asset, and imports without the checkout."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.gateway import demo_image_models, write_models
from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("TESSERA_CACHE_DIR", Path.home() / ".cache" / "tessera"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    [built] = out.glob("tessera-*.whl")
    return built


def test_wheel_holds_every_module_and_asset(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, package in (("runtime", "tessera/runtime"), ("operator", "tessera/operator")):
        for source in (ROOT / folder).rglob("*"):
            if source.is_file() and "__pycache__" not in source.parts:
                relative = source.relative_to(ROOT / folder).as_posix()
                assert f"{package}/{relative}" in names, (
                    f"{package}/{relative} missing from the wheel"
                )
    assert not any(name.startswith(("operator/", "runtime/")) for name in names), (
        "no top-level operator package"
    )


def test_wheel_imports_in_a_clean_environment(wheel: Path, tmp_path: Path) -> None:
    """Installed alone (no checkout on the path), the packages import under their real names."""
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--quiet",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    probe = (
        "import sys, operator; sys.path.insert(0, sys.argv[1]); "
        "import tessera.runtime.params as p, tessera.runtime.billing as b; "
        "assert p.__file__.startswith(sys.argv[1]), p.__file__; "
        "assert b.patches_per_image(1024, 1024) == 4096; "
        "assert operator.add(1, 2) == 3; print('ok')"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            f"import site; site.addsitedir({str(_site_packages())!r}); " + probe,
            str(target),
        ],
        capture_output=True,
        text=True,
        # Not the checkout: from there `operator/` would shadow the standard library's.
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def _site_packages() -> Path:
    """The venv's third-party packages, without the editable install's finder hooks."""
    import pydantic

    return Path(pydantic.__file__).parents[1]


def test_editable_install_maps_both_folders() -> None:
    import tessera.operator
    import tessera.runtime

    assert Path(tessera.runtime.__file__).parent == ROOT / "runtime"
    assert Path(tessera.operator.__file__).parent == ROOT / "operator"


def _clean_install(wheel: Path, extras: str, venv: Path) -> Path:
    """The wheel with ``extras`` in an empty environment, from uv's cache; its bin folder."""
    uv = CACHE / "tools" / "bin" / "uv"
    assert uv.exists(), f"{uv} missing: run scripts/bootstrap first"
    env = {
        **os.environ,
        "UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR", str(CACHE / "uv")),
        # Hard links from the cache keep torch's gigabytes from being copied again.
        "UV_LINK_MODE": "hardlink",
    }
    subprocess.run(
        [str(uv), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, env=env
    )
    python = str(venv / "bin" / "python")
    subprocess.run(
        [str(uv), "pip", "install", "--quiet", "--python", python, f"{wheel}[{extras}]"],
        check=True,
        env=env,
        timeout=600,
    )
    return venv / "bin"


def test_the_image_install_line_provides_every_command_the_operator_runs(
    wheel: Path, tmp_path: Path
) -> None:
    """No container engine here, so install what the Dockerfile installs (this wheel with its
    extras) into an empty environment, and run each command that rendered objects start."""
    line = re.search(r"tessera-\*\.whl\)\[([\w,]+)\]", (ROOT / "Dockerfile").read_text())
    assert line is not None, "the Dockerfile installs the wheel with its extras"
    venv = tmp_path / "image"
    _clean_install(wheel, line.group(1), venv)
    for command in (
        ["tessera", "worker", "--help"],
        ["tessera", "operator", "--help"],
        ["tessera", "serve", "--help"],
        ["hf", "download", "--help"],
    ):
        result = subprocess.run(
            [str(venv / "bin" / command[0]), *command[1:]],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert result.returncode == 0, (command, result.stderr[-2000:])


def test_the_gateway_installs_and_serves_without_torch_or_kopf(
    wheel: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    """``tessera[gateway]`` alone: no worker extra (torch, diffusers), no operator extra (kopf),
    and the gateway still starts, lists its models and queues a job in Redis."""
    bin_dir = _clean_install(wheel, "gateway", tmp_path / "gateway")
    missing = subprocess.run(
        [str(bin_dir / "python"), "-c", "import torch"], capture_output=True, cwd=tmp_path
    )
    assert missing.returncode != 0, "torch came with the gateway extra"
    models = write_models(tmp_path / "models.yaml", demo_image_models())
    storage = f"file://{tmp_path / 'storage'}"
    gateway = ServerProcess(
        tmp_path / "run",
        command=(
            "gateway",
            "--queue",
            redis_server.url,
            "--storage",
            storage,
            "--models",
            str(models),
        ),
        env={"TESSERA_SIGNING_SECRET": "packaging-test", "PATH": f"{bin_dir}:/usr/bin:/bin"},
        executable=str(bin_dir / "tessera"),
    ).start(ready_timeout=60)
    try:
        with gateway.client() as client:
            listed = client.get("/base_models").json()["models"]
            queued = client.post(
                "/images/generations", json={"model": "tessera-demo", "prompt": "p"}
            )
    finally:
        gateway.stop()
    assert {m["model_name"] for m in listed} == {"tessera-demo", "tessera-demo-edit"}
    assert queued.status_code == 200 and queued.json()["status"] == "queued", queued.text
    # The same image exports and pushes usage.
    exported = subprocess.run(
        [str(bin_dir / "tessera"), "usage", "export", "--queue", redis_server.url, "--format",
         "cloudevents"],
        capture_output=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert exported.returncode == 0 and isinstance(json.loads(exported.stdout), list), exported
    assert exported.stderr.decode().splitlines()[-1].startswith("cursor: ")
    libraries = subprocess.run(
        [str(bin_dir / "python"), "-c", "import cloudevents, stamina"], cwd=tmp_path
    )
    assert libraries.returncode == 0, "the usage extra came with the gateway"
