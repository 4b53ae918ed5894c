"""A deployment of its own for the usage tests: its counters and its ledger start together,
so whatever one counts the other must hold."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import GatewayDeployment, run_deployment


@pytest.fixture(scope="module")
def usage_deployment(
    tmp_path_factory: pytest.TempPathFactory, demo_models_dir: Path
) -> Iterator[GatewayDeployment]:
    yield from run_deployment(tmp_path_factory.mktemp("usage-deployment"), demo_models_dir)
