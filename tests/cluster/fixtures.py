"""pytest fixtures for a real control plane: one cluster per session, one namespace per test.

Registered from tests/conftest.py with ``pytest_plugins = ["tests.cluster.fixtures"]``.
A missing binary or a cluster that does not start fails the test with the reason (build
output or component logs): a skipped cluster test would hide exactly what it exists to
catch.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from .harness import (
    Cluster,
    ClusterError,
    _cluster_by_name,
    _kwok_workdir,
    start_cluster,
    stop_cluster,
)

_SESSION_CLUSTER = re.compile(r"^pytest-(?:[a-z]+-)?(\d+)$")


def _reap_orphans() -> None:
    """Stop clusters left by test sessions that died without their teardown (kill -9, CI
    timeouts): their processes would otherwise hold memory and ports until reboot."""
    clusters = _kwok_workdir() / "clusters"
    if not clusters.is_dir():
        return
    for entry in clusters.iterdir():
        match = _SESSION_CLUSTER.match(entry.name)
        if not match or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            with contextlib.suppress(ClusterError):
                stop_cluster(_cluster_by_name(entry.name))
        except PermissionError:
            pass  # alive, another user's


def _session_cluster(name: str, **nodes: Any) -> Iterator[Cluster]:
    """Start a cluster for the session (reaping orphans first) and stop it afterwards."""
    _reap_orphans()
    try:
        cluster = start_cluster(name, **nodes)
    except ClusterError as exc:
        pytest.fail(f"cannot start the test control plane {name}: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[Cluster]:
    """A control plane with 2 simulated H100 nodes and 1 CPU node, shared by the session.

    The name carries the process id so that parallel sessions get clusters of their own,
    and so that a later session can tell an orphan from a live one.
    """
    yield from _session_cluster(f"pytest-{os.getpid()}", gpu_nodes=2, cpu_nodes=1)


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[Cluster]:
    """A control plane whose pods really run: one CPU-shaped and one H100-shaped local node.

    No KWOK nodes, so every pod lands on a local node. The crash-loop backoff starts at
    1 s instead of the kubelet's 10 s, so restart tests take seconds.
    """
    yield from _session_cluster(
        f"pytest-local-{os.getpid()}",
        gpu_nodes=0,
        cpu_nodes=0,
        local_nodes=1,
        local_h100_nodes=1,
        backoff_seconds=1.0,
    )


@contextlib.contextmanager
def fresh_namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace, deleted afterwards (without waiting for its contents to go).

    It is yielded only once its ``default`` service account exists: before that the
    ServiceAccount admission plugin rejects pods, and a Deployment would look stuck.
    """
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 30
    while cluster.kubectl("-n", name, "get", "serviceaccount", "default", check=False).returncode:
        if time.monotonic() > deadline:
            pytest.fail(f"namespace {name} got no default service account in 30 s", pytrace=False)
        time.sleep(0.2)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def kube_namespace(kube_cluster: Cluster) -> Iterator[str]:
    """A fresh namespace on ``kube_cluster``."""
    with fresh_namespace(kube_cluster) as name:
        yield name


@pytest.fixture
def local_namespace(local_cluster: Cluster) -> Iterator[str]:
    """A fresh namespace on ``local_cluster``."""
    with fresh_namespace(local_cluster) as name:
        yield name
