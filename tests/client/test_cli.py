"""``tessera generate``, ``edit`` and ``models`` run as a user runs them, against a real server."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.support.server import ServerProcess


def tessera(
    server: ServerProcess, *args: str, key: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The real command in a subprocess; the server and key come from the environment."""
    env = {
        **os.environ,
        "TESSERA_BASE_URL": server.api_url,
        "TESSERA_API_KEY": server.api_key if key is None else key,
    }
    return subprocess.run(
        [sys.executable, "-m", "tessera.runtime.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """A failure is one `error: ...` line on stderr and a non-zero exit, never a traceback."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


def patches_billed(stdout: str) -> int:
    match = re.search(r"^([\d,]+) patches billed \(job \d+", stdout, re.MULTILINE)
    assert match, stdout
    return int(match.group(1).replace(",", ""))


def write_png(path: Path, width: int = 80, height: int = 64) -> Path:
    Image.new("RGB", (width, height), "orange").save(path)
    return path


def test_models_lists_every_model_with_its_task(demo_server: ServerProcess) -> None:
    out = ok(tessera(demo_server, "models"))
    assert re.search(r"^tessera-demo\s+text-to-image\s+Tessera\s+4\s+\$0\.79$", out, re.M), out
    assert re.search(r"^tessera-demo-edit\s+image-to-image\s", out, re.M), out
    only_edit = ok(tessera(demo_server, "models", "--task", "image-to-image"))
    assert "tessera-demo-edit" in only_edit
    assert not re.search(r"^tessera-demo\s", only_edit, re.M)


def test_generate_saves_the_image_and_prints_the_patches(
    demo_server: ServerProcess, tmp_path: Path
) -> None:
    command = ("generate", "a lighthouse at dusk", "--model", "tessera-demo")
    command += ("--size", "64x48", "--steps", "2", "--seed", "11")
    out = ok(tessera(demo_server, *command, "-o", "first.png", cwd=tmp_path))
    assert out.splitlines()[0] == "first.png"
    assert patches_billed(out) == 4 * 3
    assert "seed 11" in out
    assert "2 steps" in out
    with Image.open(tmp_path / "first.png") as image:
        assert (image.format, image.size) == ("PNG", (64, 48))

    # The same seed and settings make the same image.
    ok(tessera(demo_server, *command, "-o", str(tmp_path / "again.png")))
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "first.png").read_bytes()


def test_generate_several_images_into_a_folder(demo_server: ServerProcess, tmp_path: Path) -> None:
    out = ok(
        tessera(
            demo_server,
            "generate",
            "tiles",
            "--size",
            "square",
            "--steps",
            "1",
            "-n",
            "2",
            "--format",
            "webp",
            "--guidance",
            "7.5",
            "-o",
            str(tmp_path / "shots") + "/",
        )
    )
    saved = [Path(line) for line in out.splitlines() if line.endswith(".webp")]
    assert len(saved) == 2, out
    assert all(p.parent == tmp_path / "shots" for p in saved), out
    for path in saved:
        with Image.open(path) as image:
            assert (image.format, image.size) == ("WEBP", (512, 512))
    assert patches_billed(out) == 2 * 32 * 32


def test_edit_uploads_a_local_image(demo_server: ServerProcess, tmp_path: Path) -> None:
    source = write_png(tmp_path / "source.png")
    out = ok(
        tessera(
            demo_server,
            "edit",
            "make it teal",
            "--image",
            str(source),
            "--model",
            "tessera-demo-edit",
            "--size",
            "64x64",
            "--steps",
            "1",
            "-o",
            str(tmp_path / "edited"),
        )
    )
    saved = Path(out.splitlines()[0])
    assert saved.parent == tmp_path / "edited"
    with Image.open(saved) as image:
        assert image.size == (64, 64)
    assert patches_billed(out) == 16


def test_edit_takes_a_url(demo_server: ServerProcess, tmp_path: Path) -> None:
    """An image URL is passed through (here one of the server's own signed result URLs)."""
    with demo_server.client() as client:
        job = client.post(
            "/images/generations",
            json={
                "model": "tessera-demo",
                "prompt": "a source",
                "image_size": "64x64",
                "num_inference_steps": 1,
            },
        ).json()["job_id"]
        task = client.get(f"/images/tasks/{job}", params={"wait": 30}).json()
        while task["status"] not in ("completed", "failed"):
            task = client.get(f"/images/tasks/{job}", params={"wait": 30}).json()
    url = task["result"]["data"][0]["url"]
    out = ok(
        tessera(
            demo_server,
            "edit",
            "now in blue",
            "-i",
            url,
            "--size",
            "32x32",
            "--steps",
            "1",
            "-o",
            str(tmp_path / "from-url.png"),
        )
    )
    with Image.open(io.BytesIO((tmp_path / "from-url.png").read_bytes())) as image:
        assert image.size == (32, 32)
    assert patches_billed(out) == 4


@pytest.mark.parametrize(
    ("args", "key", "expected"),
    [
        pytest.param(
            ["models"], "not-a-key", r"invalid API key \(HTTP 401 auth\.invalid_key\)", id="bad-key"
        ),
        pytest.param(
            ["generate", "x", "--model", "no-such-model"],
            None,
            r"model 'no-such-model' does not exist; available models: tessera-demo, "
            r"tessera-demo-edit \(HTTP 404 model\.not_found\)",
            id="unknown-model",
        ),
        pytest.param(
            ["generate", "x", "--model", "tessera-demo", "--size", "5000x64"],
            None,
            r"image_size\.width must be between 16 and 2048 .* \(HTTP 422 "
            r"parameter\.invalid\)",
            id="size-too-large",
        ),
        pytest.param(
            ["generate", "x", "--model", "tessera-demo", "--size", "huge"],
            None,
            r"image_size must be one of .*not 'huge' \(HTTP 422",
            id="unknown-size",
        ),
        pytest.param(
            ["generate", "x", "--model", "tessera-demo", "--steps", "99"],
            None,
            r"num_inference_steps must be between 1 and 50",
            id="too-many-steps",
        ),
        pytest.param(
            ["edit", "x", "--model", "tessera-demo", "-i", "https://example.com/a.png"],
            None,
            r"cannot edit images.*\(HTTP 400 modality\.incompatible\)",
            id="edit-with-text-model",
        ),
    ],
)
def test_api_errors_are_one_clear_line(
    demo_server: ServerProcess, args: list[str], key: str | None, expected: str
) -> None:
    line = one_error_line(tessera(demo_server, *args, key=key))
    assert re.search(expected, line), line


def test_local_problems_are_reported_before_anything_is_sent(
    demo_server: ServerProcess, tmp_path: Path
) -> None:
    missing = tessera(demo_server, "edit", "x", "-i", str(tmp_path / "nope.png"))
    assert "no such image file" in one_error_line(missing)
    assert missing.returncode == 2

    no_key = tessera(demo_server, "models", key="")
    assert "no API key" in one_error_line(no_key)
    assert no_key.returncode == 2


def test_an_unreachable_server_is_one_line(demo_server: ServerProcess) -> None:
    result = tessera(demo_server, "models", "--base-url", "http://127.0.0.1:9/v1")
    assert "cannot reach http://127.0.0.1:9/v1" in one_error_line(result)
    assert result.returncode == 1


def test_help_never_shows_the_key(demo_server: ServerProcess) -> None:
    out = ok(tessera(demo_server, "generate", "--help", key="secret-key-in-env"))
    assert "secret-key-in-env" not in out
    assert "--api-key" in out
    assert "--base-url" in out
