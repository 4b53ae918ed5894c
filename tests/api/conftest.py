"""The API contract runs against both deployments: ``tessera serve`` (one process, SQLite,
local files) and ``tessera gateway`` + ``tessera worker`` processes over Redis and a real S3
server (tests/gateway covers the gateway over a shared folder). A test that holds for one
and not the other is a bug in one of them."""

from __future__ import annotations

import pytest

from tests.support.gateway import GatewayDeployment
from tests.support.server import ServerProcess


@pytest.fixture(scope="session", params=["serve", "gateway"])
def demo_server(request: pytest.FixtureRequest) -> ServerProcess | GatewayDeployment:
    name = "serve_server" if request.param == "serve" else "gateway_s3_deployment"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]
