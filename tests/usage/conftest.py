"""A deployment of its own for the usage tests: its counters and its ledger start together,
so whatever one counts the other must hold."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import GatewayDeployment
from tests.support.redis_server import RedisServer


@pytest.fixture(scope="module")
def usage_deployment(
    tmp_path_factory: pytest.TempPathFactory, demo_models_dir: Path
) -> Iterator[GatewayDeployment]:
    directory = tmp_path_factory.mktemp("usage-deployment")
    redis = RedisServer(directory / "redis").start()
    deployment = GatewayDeployment(directory, demo_models_dir, redis)
    try:
        yield deployment.start()
    finally:
        deployment.stop()
        redis.stop()
