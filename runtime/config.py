"""How a server is put together, in one place: from settings to URLs, secrets and models.

``tessera serve`` and ``tessera gateway`` are one server (``create_app``) assembled from a
``ServerConfig``: a job store URL, a storage URL, a catalogue of models, keys, a public URL
and a signing secret. ``serve_config`` and ``gateway_config`` make one from each command's
settings; the commands only print and run it.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import math
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from tessera.runtime.api.protocol import ClientDeadlines
from tessera.runtime.jobs.base import StorePolicy
from tessera.runtime.keys import KeyRing, new_key, write_key_file
from tessera.runtime.models import ModelSpec
from tessera.runtime.openai.settings import OpenAISettings
from tessera.runtime.params import IntRange, ParameterLimits, Task
from tessera.runtime.ratelimit import RateLimits
from tessera.runtime.settings import (
    DEFAULT_MAX_JSON_BYTES,
    ApiSettings,
    GatewaySettings,
    ServeSettings,
)
from tessera.runtime.sources import SourceLimits
from tessera.runtime.storage import InvalidStorageUrl, PublicDownloads, open_storage
from tessera.runtime.webhooks import WebhookPolicy
from tessera.runtime.worker.options import PipelineOptions, introspected_arguments, pipeline_class

DEMO_MODELS = {"tessera-demo": Task.TEXT_TO_IMAGE, "tessera-demo-edit": Task.IMAGE_TO_IMAGE}
# The demo pipelines make a 1024x1024 image in well under a second on one CPU core at four
# steps; they publish limits that keep every request within a few seconds.
DEMO_LIMITS = ParameterLimits(
    max_side=2048,
    num_inference_steps=IntRange(min=1, max=50, default=4),
)
DEMO_DESCRIPTION = (
    "A tiny random-weight Flux pipeline for trying the API on a CPU; its images are coloured noise."
)


class ConfigError(ValueError):
    """The settings cannot make a server; the message says which and why."""


@dataclass
class ServerConfig:
    queue: str
    storage: str
    signing_secret: bytes
    models: list[ModelSpec]
    keys: KeyRing
    public_url: str
    url_ttl_seconds: int = 3600
    public_downloads: PublicDownloads = "presigned"
    sources: SourceLimits = field(default_factory=SourceLimits)
    store: StorePolicy = field(default_factory=StorePolicy)
    # Run a worker inside the API process (``tessera serve``); the gateway has none.
    embedded_worker: bool = True
    # Serve the ImageModel resources of the cluster this process runs in, kept current.
    watch_cluster: bool = False
    device: str | None = None
    # Origins whose pages may call the API from a browser (CORS); "*" for any. Empty: only
    # pages this server serves (the Playground) can, as browsers enforce by default.
    cors_origins: tuple[str, ...] = ()
    openai: OpenAISettings = field(default_factory=OpenAISettings)
    # Bodies of JSON requests, capped as they stream in (uploads have the source limit).
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES
    rate_limits: RateLimits = field(default_factory=RateLimits)
    client_deadlines: ClientDeadlines = field(default_factory=ClientDeadlines)
    # An uploaded source image is deleted this long after its PUT (jobs keep their own copy).
    upload_ttl_seconds: float = 3600.0
    # Prometheus metrics on their own listener, for scrapers only; None: not served at all.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    webhooks: WebhookPolicy = field(default_factory=WebhookPolicy)

    @property
    def max_edit_json_bytes(self) -> int:
        """An edit's body may also carry one source image inline, as a base64 data URL."""
        return self.max_json_bytes + 4 * math.ceil(self.sources.max_bytes / 3)


@dataclass(frozen=True)
class Assembled:
    config: ServerConfig
    # A key made for this data directory on first use, to show once.
    created_key: str | None = None


def prepare_data_dir(path: Path) -> Path:
    """The data directory, created or narrowed to its owner alone (0700): it holds the job
    database, key hashes, secrets and every image."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def key_id_secret(signing_secret: bytes) -> bytes:
    """The secret that keys given in plain text get their ids from, for a gateway: derived
    from the signing secret every replica already shares, so a key has one id everywhere."""
    return hmac.new(signing_secret, b"tessera api key ids", hashlib.sha256).digest()


def load_or_create_secret(path: Path) -> bytes:
    """The URL-signing secret, made once and kept, so signed URLs survive a restart."""
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(secret)
    return secret


def _given_keys(settings: ApiSettings, id_secret: bytes) -> KeyRing | None:
    if settings.api_keys_file is not None:
        return KeyRing.from_file(settings.api_keys_file, id_secret)
    if settings.api_keys or settings.admin_api_keys:
        return KeyRing.from_keys(
            (key.get_secret_value() for key in settings.api_keys),
            id_secret,
            (key.get_secret_value() for key in settings.admin_api_keys),
        )
    return None


def _server_config(
    settings: ApiSettings,
    *,
    queue: str,
    storage: str,
    secret: bytes,
    models: list[ModelSpec],
    keys: KeyRing,
    embedded_worker: bool,
    device: str | None = None,
    watch_cluster: bool = False,
    public_downloads: PublicDownloads = "presigned",
) -> ServerConfig:
    return ServerConfig(
        queue=queue,
        storage=storage,
        signing_secret=secret,
        models=models,
        keys=keys,
        public_url=settings.base_url,
        url_ttl_seconds=settings.url_ttl_seconds,
        public_downloads=public_downloads,
        store=StorePolicy(retention_seconds=settings.retention_seconds),
        sources=SourceLimits(
            allow_private_addresses=settings.allow_private_image_urls,
            allowed_networks=settings.allow_image_network,
        ),
        embedded_worker=embedded_worker,
        device=device,
        cors_origins=settings.cors_origin,
        watch_cluster=watch_cluster,
        openai=OpenAISettings(
            wait_seconds=settings.openai_wait_seconds,
            max_waiting_per_key=settings.openai_max_waiting,
        ),
        max_json_bytes=settings.max_json_bytes,
        rate_limits=RateLimits(
            submit=settings.rate_limit_submit,
            poll=settings.rate_limit_poll,
            b64_mib=settings.rate_limit_b64,
        ),
        upload_ttl_seconds=settings.upload_ttl,
        client_deadlines=ClientDeadlines(
            header_seconds=settings.header_timeout,
            body_grace_seconds=settings.header_timeout,
            min_body_bytes_per_second=settings.min_body_rate,
        ),
        metrics_port=settings.metrics_port,
        metrics_host=settings.metrics_host,
        webhooks=WebhookPolicy(
            allow_private_addresses=settings.allow_private_webhook_urls,
            allowed_networks=settings.allow_webhook_network,
            first_retry_seconds=settings.webhook_retry_seconds,
            max_attempts=settings.webhook_max_attempts,
        ),
    )


def demo_models(data_dir: Path) -> list[ModelSpec]:
    """The two demo pipelines, built into ``data_dir`` once."""
    from tessera.runtime.demo import ensure_demo_pipeline

    models = []
    for name, task in DEMO_MODELS.items():
        path = ensure_demo_pipeline(data_dir / "models" / name, task)
        models.append(
            ModelSpec(
                name=name,
                task=task,
                weights=str(path),
                limits=DEMO_LIMITS,
                description=DEMO_DESCRIPTION,
            )
        )
    return models


def _check_pipeline_folder(path: Path) -> None:
    if not (path / "model_index.json").exists():
        raise ConfigError(f"{path} holds no diffusers pipeline (model_index.json)")


def introspected_options(path: Path) -> PipelineOptions:
    """Loading options that refuse what the pipeline class in ``path`` cannot take, learnt
    from its ``__call__``, so that ``serve --model`` refuses it at submit as a cluster does
    from a spec."""
    import diffusers

    class_name = json.loads((path / "model_index.json").read_text()).get("_class_name", "")
    try:
        loader = pipeline_class(diffusers, class_name)
    except LookupError as error:
        raise ConfigError(f"{path}: {error}") from None
    accepted = inspect.signature(loader.__call__).parameters
    targets = introspected_arguments(accepted)
    lacking = tuple(name for name, target in targets.items() if not target)
    return PipelineOptions(unsupported=lacking)


def _image_models(file: Path, path: Path) -> list[ModelSpec]:
    """The ImageModels in ``file``, served from the pipeline in ``path``."""
    from tessera.runtime.imagemodel import InvalidImageModel, load_documents

    try:
        resources = load_documents(file)
    except InvalidImageModel as error:
        raise ConfigError(str(error)) from None
    return [
        resource.model_spec().model_copy(update={"weights": str(path)}) for resource in resources
    ]


def serve_config(settings: ServeSettings) -> Assembled:
    """One process: SQLite and files in the data directory, a worker for every model."""
    data_dir = prepare_data_dir(settings.data_dir)
    models = demo_models(data_dir) if settings.demo else []
    for name, path, task in settings.model_arguments():
        _check_pipeline_folder(path)
        models.append(
            ModelSpec(name=name, task=task, weights=str(path), pipeline=introspected_options(path))
        )
    for file, path in settings.image_model_arguments():
        _check_pipeline_folder(path)
        models.extend(_image_models(file, path))
    if not models:
        raise ConfigError("nothing to serve: pass --demo or --model NAME=PATH")

    created_key = None
    id_secret = load_or_create_secret(data_dir / "key-id.key")
    keys = _given_keys(settings, id_secret)
    if keys is None:
        key_file = data_dir / "api-keys.json"
        if not key_file.exists():
            created_key = new_key()
            # The one key of a server nobody gave keys to is its owner's: it also reads
            # usage (GET /v1/usage), like the chart's generated key.
            write_key_file(key_file, [created_key], admin=True)
        # Read back, so the key gets the random id its file stores.
        keys = KeyRing.from_file(key_file, id_secret)
    if not len(keys):
        raise ConfigError("no API keys configured")
    secret = settings.secret_bytes() or load_or_create_secret(data_dir / "url-signing.key")
    config = _server_config(
        settings,
        queue=f"sqlite://{data_dir / 'jobs.db'}",
        storage=f"file://{data_dir / 'files'}",
        secret=secret,
        models=models,
        keys=keys,
        embedded_worker=True,
        device=settings.device,
    )
    return Assembled(config, created_key)


def gateway_config(settings: GatewaySettings) -> Assembled:
    """The API alone: every replica shares the queue, the storage, the keys and the secret."""
    from tessera.runtime.imagemodel import InvalidImageModel, load_documents

    secret = settings.secret_bytes()
    if not secret:
        raise ConfigError(
            "the gateway needs a URL-signing secret shared by every replica: set "
            "TESSERA_SIGNING_SECRET or --signing-secret-file"
        )
    keys = _given_keys(settings, key_id_secret(secret))
    if keys is None or not len(keys):
        raise ConfigError("no API keys configured: set TESSERA_API_KEYS or --api-keys-file")
    models = []
    if settings.models is not None:
        try:
            models = [resource.model_spec() for resource in load_documents(settings.models)]
        except (InvalidImageModel, OSError, ValueError) as error:
            raise ConfigError(str(error)) from None
    try:
        open_storage(settings.storage)  # refuse a bad URL now, not at the first request
    except InvalidStorageUrl as error:
        raise ConfigError(str(error)) from None
    config = _server_config(
        settings,
        queue=settings.queue,
        storage=settings.storage,
        secret=secret,
        models=models,
        keys=keys,
        embedded_worker=False,
        watch_cluster=settings.models is None,
        public_downloads=settings.public_downloads,
    )
    if config.watch_cluster:
        from kubernetes.config import ConfigException

        from tessera.runtime.cluster import load_kube_configuration

        try:
            load_kube_configuration()
        except ConfigException as error:
            raise ConfigError(
                f"no --models given and no cluster to learn them from: {error}"
            ) from None
    return Assembled(config)
