"""The cluster's shape on loopback: ``tessera gateway`` replicas over a real redis-server and
shared ``file://`` storage, with one ``tessera worker`` per demo model.

It answers like ``ServerProcess`` (``client``, ``api_url``, ``keys`` ...), so the API contract
tests run unchanged against either deployment.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tessera.runtime.config import DEMO_DESCRIPTION, DEMO_LIMITS, DEMO_MODELS
from tessera.runtime.imagemodel import API_VERSION, KIND
from tests.support.redis_server import RedisServer
from tests.support.s3_server import S3Server
from tests.support.server import KEYS, ServerProcess, folder_files, free_port
from tests.support.worker import WorkerProcess


def demo_image_models(**spec: Any) -> list[dict[str, Any]]:
    """The demo models as ImageModel documents, with the limits ``serve --demo`` gives them."""
    return [
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name},
            "spec": {
                "modelName": name,
                "description": DEMO_DESCRIPTION,
                "task": task.value,
                "weights": {"demo": {}},
                "gpu": {"count": 0},
                "parameters": DEMO_LIMITS.model_dump(mode="json", by_alias=True),
                **spec,
            },
        }
        for name, task in DEMO_MODELS.items()
    ]


def write_models(path: Path, documents: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(documents))
    return path


@dataclass
class GatewayDeployment:
    directory: Path
    pipelines: Path  # the demo pipelines, one folder per model
    redis: RedisServer
    # Shared storage: a folder by default, or a bucket of this S3 server.
    s3: S3Server | None = None
    keys: tuple[str, ...] = KEYS
    models_file: Path | None = None
    signing_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    gateways: list[ServerProcess] = field(default_factory=list)
    # Flags every gateway of this deployment gets.
    gateway_args: tuple[str, ...] = ()
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def storage(self) -> str:
        if self.s3 is not None:
            return f"s3://{self.s3.bucket}/{self.directory.name}"
        return f"file://{self.directory / 'storage'}"

    @property
    def storage_env(self) -> dict[str, str]:
        """What processes need to reach the storage: S3's AWS_* variables."""
        return self.s3.environ if self.s3 is not None else {}

    def stored(self, prefix: str) -> dict[str, bytes]:
        """The files of the shared storage under ``prefix``, read past the gateway."""
        if self.s3 is None:
            return folder_files(self.directory / "storage", prefix)
        base = f"{self.directory.name}/"
        return {key.removeprefix(base): self.s3.read(key) for key in self.s3.objects(base + prefix)}

    def gateway(self, models: Path, *extra: str) -> ServerProcess:
        """A gateway replica (not started) over this deployment's queue, storage and secret."""
        command = ("gateway", "--queue", self.redis.url, "--storage", self.storage)
        return ServerProcess(
            self.directory / f"gateway-{len(self.gateways)}-{secrets.token_hex(3)}",
            keys=self.keys,
            command=(*command, "--models", str(models)),
            extra_args=(*self.gateway_args, *extra),
            metrics_port=free_port(),
            env={"TESSERA_SIGNING_SECRET": self.signing_secret, **self.storage_env},
        )

    def start(self) -> GatewayDeployment:
        models = self.models_file or write_models(
            self.directory / "models.yaml", demo_image_models()
        )
        self.models_file = models
        self.gateways = [self.gateway(models)]
        self.workers = [
            WorkerProcess(
                name,
                self.pipelines / name,
                self.redis.url,
                self.storage,
                self.directory / f"worker-{name}.log",
                task=task.value,
                env=self.storage_env,
            )
            for name, task in DEMO_MODELS.items()
        ]
        processes: list[ServerProcess | WorkerProcess] = [*self.gateways, *self.workers]
        # Started together, waited for together: the workers' torch import is the long part.
        for process in processes:
            process.spawn()
        try:
            for process in processes:
                process.wait_ready()
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in [*self.gateways, *self.workers]:
            process.stop()

    # -- what ServerProcess offers ---------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.gateways[0].base_url

    @property
    def api_url(self) -> str:
        return self.gateways[0].api_url

    @property
    def api_key(self) -> str:
        return self.keys[0]

    @property
    def metrics_urls(self) -> list[str]:
        """The gateways count submissions; the workers count what they ran and billed."""
        workers = [worker.base_url + "/metrics/" for worker in self.workers]
        return [url for gateway in self.gateways for url in gateway.metrics_urls] + workers

    @property
    def results_url(self) -> str:
        """Where result URLs point: the S3 store itself (presigned), or the gateway."""
        if self.s3 is not None:
            return f"{self.s3.endpoint}/{self.s3.bucket}/{self.directory.name}/results/"
        return self.gateways[0].results_url

    def client(self, key: str | None = None, timeout: float = 30) -> httpx.Client:
        return self.gateways[0].client(key, timeout)

    def log(self) -> str:
        return "\n".join(p.log() for p in [*self.gateways, *self.workers])


def run_deployment(
    directory: Path,
    pipelines: Path,
    s3: S3Server | None = None,
    gateway_args: tuple[str, ...] = (),
) -> Iterator[GatewayDeployment]:
    """A started deployment over its own redis-server, stopped (both) when resumed: the body
    of a fixture."""
    redis = RedisServer(directory / "redis").start()
    deployment = GatewayDeployment(directory, pipelines, redis, s3=s3, gateway_args=gateway_args)
    try:
        yield deployment.start()
    finally:
        deployment.stop()
        redis.stop()
