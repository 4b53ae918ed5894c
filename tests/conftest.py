"""Shared fixtures: a real demo server, built once per session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import GatewayDeployment, run_deployment
from tests.support.redis_server import RedisServer
from tests.support.s3_server import S3Server
from tests.support.server import ServerProcess, free_port

pytest_plugins = ["tests.cluster.fixtures"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server with append-only fsync-always persistence."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server (SeaweedFS) with one bucket and its own credentials."""
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def demo_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo pipelines, built once; servers copy them instead of building their own."""
    seed_dir = tmp_path_factory.mktemp("demo-seed")
    server = ServerProcess(seed_dir).start()
    server.stop()
    return seed_dir / "models"


def new_server(base: Path, models: Path, *extra: str, port: int | None = None) -> ServerProcess:
    """A server over a fresh data directory that already holds the demo pipelines."""
    base.mkdir(parents=True, exist_ok=True)
    shutil.copytree(models, base / "models", dirs_exist_ok=True)
    return ServerProcess(base, port=port or free_port(), extra_args=extra, metrics_port=free_port())


@pytest.fixture(scope="session")
def serve_server(
    tmp_path_factory: pytest.TempPathFactory, demo_models_dir: Path
) -> Iterator[ServerProcess]:
    """One ``tessera serve --demo`` for the whole session (keys: tests.support.server.KEYS)."""
    server = new_server(tmp_path_factory.mktemp("demo-server"), demo_models_dir).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def demo_server(serve_server: ServerProcess) -> ServerProcess:
    """The server most tests talk to; tests/api runs against the gateway as well."""
    return serve_server


@pytest.fixture(scope="session")
def gateway_deployment(
    tmp_path_factory: pytest.TempPathFactory, demo_models_dir: Path
) -> Iterator[GatewayDeployment]:
    """``tessera gateway`` + one ``tessera worker`` per demo model over their own redis-server
    and a shared folder (``file://``): the cluster's shape, for the whole session."""
    yield from run_deployment(tmp_path_factory.mktemp("gateway-deployment"), demo_models_dir)


@pytest.fixture(scope="session")
def gateway_s3_deployment(
    tmp_path_factory: pytest.TempPathFactory, demo_models_dir: Path, s3_server: S3Server
) -> Iterator[GatewayDeployment]:
    """The same, with results and uploads in a bucket of a real S3 server (SeaweedFS)."""
    directory = tmp_path_factory.mktemp("gateway-s3-deployment")
    yield from run_deployment(directory, demo_models_dir, s3_server)
