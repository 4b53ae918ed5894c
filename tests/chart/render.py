"""``helm template`` of charts/tessera, parsed: the objects a set of values renders."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.harness import build_binaries

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tessera"
RELEASE = "tessera"
NAMESPACE = "tessera"


class RenderError(Exception):
    """helm refused the values; the message is helm's stderr."""


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(build_binaries() / "helm"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def flags(values: dict[str, str]) -> list[str]:
    """``--set`` (strings as ``--set-string`` would coerce "true") for each dotted value."""
    out: list[str] = []
    for key, value in values.items():
        out += ["--set", f"{key}={value}"]
    return out


@dataclass(frozen=True)
class Rendered:
    text: str
    objects: list[dict[str, Any]]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
        return found[0]

    def names(self, kind: str) -> list[str]:
        return sorted(o["metadata"]["name"] for o in self.objects if o["kind"] == kind)

    def pod_specs(self) -> dict[str, dict[str, Any]]:
        """Every pod template, by its owner's kind/name (a bare pod by its own)."""
        pods = {
            f"{o['kind']}/{o['metadata']['name']}": o["spec"]["template"]["spec"]
            for o in self.objects
            if o["kind"] in ("Deployment", "StatefulSet", "Job")
        }
        # Bare pods: the `helm test` hook.
        return pods | {
            f"Pod/{o['metadata']['name']}": o["spec"] for o in self.objects if o["kind"] == "Pod"
        }


def render(values: dict[str, str] | None = None, namespace: str = NAMESPACE) -> Rendered:
    result = helm("template", RELEASE, str(CHART), "-n", namespace, *flags(values or {}))
    if result.returncode != 0:
        raise RenderError(result.stderr)
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return Rendered(result.stdout, objects)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """A container's env as name -> value (or valueFrom)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
