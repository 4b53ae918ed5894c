"""``tessera operator`` as a real subprocess, and the credentials it runs with.

Used by the cluster tests and by ``bench/operator_scale.py``. A test that needs the operator
gets one that runs the console script with a kubeconfig, exactly as a user would, so a
failure to start is a failure with the operator's own output, never a skip.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tessera.operator import render
from tests.cluster.harness import Cluster
from tests.support import waiting
from tests.support.server import free_port

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
TESSERA = Path(sys.executable).with_name("tessera")
OPERATOR_NAMESPACE = "tessera-system"
OPERATOR_ACCOUNT = "tessera-operator"

T = TypeVar("T")


class OperatorError(AssertionError):
    """The operator did not start, died, or never did what was waited for."""


def install_crds(cluster: Cluster) -> None:
    """The ImageModel CRD and the operator's RBAC, applied server-side and established."""
    for name in ("imagemodel.yaml", "operator-rbac.yaml"):
        cluster.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", str(CRDS / name), timeout=120
        )
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/imagemodels.tessera.dev", "--timeout=60s"
    )
    # Discovery can lag the Established condition by a moment.
    wait_until(
        "the imagemodels resource in discovery",
        lambda: cluster.kubectl("get", "imagemodels", "-A", check=False).returncode == 0,
        timeout=30,
    )


def host_path_volume(cluster: Cluster, name: str, claim: tuple[str, str], folder: Path) -> None:
    """A PersistentVolume on ``folder``, reserved for ``claim`` (namespace, name): there is
    no storage provisioner on the test control plane."""
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": "200Gi"},
                "accessModes": ["ReadWriteMany"],
                "claimRef": {"namespace": claim[0], "name": claim[1]},
                "hostPath": {"path": str(folder)},
            },
        }
    )


def create_results_claim(cluster: Cluster, namespace: str, folder: Path) -> Path:
    """The claim workers write results to (``tessera-results``), bound to a hostPath
    volume on ``folder``: what the chart provides.

    On local nodes the workers write into ``folder`` itself, so a test reads the images
    there. Returns ``folder``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    claim = render.DEFAULT_RESULTS_CLAIM
    host_path_volume(cluster, f"{namespace}-results", (namespace, claim), folder)
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "10Gi"}},
                "storageClassName": "",
                "volumeName": f"{namespace}-results",
            },
        }
    )
    # The scheduler reports an unbound claim as the reason a worker waits: bind it first.
    wait_until(
        f"claim {namespace}/{claim} to bind",
        lambda: (
            cluster.kubectl(
                "-n", namespace, "get", "pvc", claim, "-o", "jsonpath={.status.phase}"
            ).stdout
            == "Bound"
        ),
    )
    return folder


def service_account_kubeconfig(
    cluster: Cluster, path: Path, account: str = OPERATOR_ACCOUNT
) -> Path:
    """A kubeconfig that authenticates as a ServiceAccount of tessera-system (a bound token;
    the operator's by default), so the process has exactly its ClusterRole's permissions."""
    token = cluster.kubectl(
        "create", "token", account, "-n", OPERATOR_NAMESPACE, "--duration=2h"
    ).stdout.strip()
    admin = json.loads(cluster.kubectl("config", "view", "--raw", "-o", "json").stdout)
    server = admin["clusters"][0]["cluster"]
    ca = (
        server.get("certificate-authority-data")
        or base64.b64encode(Path(server["certificate-authority"]).read_bytes()).decode()
    )
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "c", "cluster": {"server": server["server"], "certificate-authority-data": ca}}
        ],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": "c", "user": account}}],
        "current-context": account,
    }
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def wait_until(
    what: str,
    probe: Callable[[], T | None],
    timeout: float = 60,
    explain: Callable[[], str] | None = None,
) -> T:
    """``tests.support.waiting.wait_until``, failing with ``OperatorError``."""
    return waiting.wait_until(what, probe, timeout, explain, failure=OperatorError)


class OperatorProcess:
    """One ``tessera operator`` subprocess with its output in a file."""

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        namespaces: list[str] | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.namespaces = namespaces or []
        self.extra_args = extra_args or ["--standalone"]
        self.env = env or {}
        # e.g. [python, -m, cProfile, -o, FILE]: what runs the console script.
        self.prefix = prefix or []
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60) -> OperatorProcess:
        if not TESSERA.exists():
            raise OperatorError(f"{TESSERA} is missing: run scripts/bootstrap --test")
        args = [*self.prefix, str(TESSERA), "operator", *self.extra_args]
        args += [f"--namespace={ns}" for ns in self.namespaces]
        args += ["--liveness", f"http://127.0.0.1:{self.port}/healthz"]
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), PYTHONUNBUFFERED="1", **self.env)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_until(
            f"the operator's liveness endpoint on port {self.port}", self._live, timeout, self.tail
        )
        return self

    def _live(self) -> bool:
        self.check_alive()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise OperatorError(f"the operator exited with {self.proc.returncode}:\n{self.tail()}")

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def output(self, since_start: bool = True) -> str:
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_offset if since_start else 0)
            return log.read().decode(errors="replace")

    def tail(self, lines: int = 60) -> str:
        text = "\n".join(self.output().splitlines()[-lines:])
        return f"--- operator output ({self.log_path}) ---\n{text}"

    def wait_for_log(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        regex = re.compile(pattern)

        def probe() -> re.Match[str] | None:
            self.check_alive()
            return regex.search(self.output())

        return wait_until(f"operator output matching {pattern!r}", probe, timeout, self.tail)

    def usage(self) -> dict[str, Any]:
        """CPU seconds (user + system) and peak resident memory (MiB) so far, from /proc."""
        stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(stat[11]) + int(stat[12])) / ticks
        status = Path(f"/proc/{self.pid}/status").read_text()
        peak = next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")
        )
        return {"cpu_seconds": cpu, "peak_rss_mib": peak / 1024}


@contextlib.contextmanager
def running_operator(
    cluster: Cluster, namespace: str, work: Path, env: dict[str, str] | None = None
) -> Iterator[OperatorProcess]:
    """``tessera operator`` for ``namespace`` as its own ServiceAccount, stopped afterwards;
    a start that fails fails the test with the operator's output, and so does any
    Forbidden in it (the ClusterRole must be enough)."""
    process = OperatorProcess(
        service_account_kubeconfig(cluster, work / "kubeconfig.json"),
        work / "operator.log",
        namespaces=[namespace],
        env=env,
    )
    try:
        process.start()
    except OperatorError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield process
    finally:
        process.stop()
    assert "Forbidden" not in process.output(since_start=False), process.tail()
