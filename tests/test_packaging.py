"""The distribution: a wheel holds every module and asset, and imports without the checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
