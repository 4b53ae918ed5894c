"""helm and kubectl against a test cluster, for the tests that install the chart."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.cluster.harness import Cluster


def helm(cluster: Cluster, *args: str, timeout: float = 360) -> str:
    """Run the cluster's helm; a failure fails the test with helm's stderr."""
    result = subprocess.run(
        ["helm", *args],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def get(cluster: Cluster, *args: str) -> Any:
    """``kubectl get ARGS -o json``, parsed."""
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
