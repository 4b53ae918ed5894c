"""What each process is told, from flags and ``TESSERA_*`` environment variables.

One settings model per command (``serve``, ``gateway``, ``worker``). Every field is one flag
and one variable of the same name (``public_url``: ``--public-url``, ``TESSERA_PUBLIC_URL``),
so a chart's values map onto them one to one; a flag wins over the variable, which wins over
the default. Lists are repeated flags or comma-separated variables. Secrets (API keys, the
URL-signing secret) are variables or files only, never flags, which any local user can read
in the process list. ``tests/unit/test_settings.py`` holds the CLI to this.
"""

from __future__ import annotations

import argparse
import os
import sys
from decimal import Decimal
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tessera.runtime.api.protocol import ClientDeadlines
from tessera.runtime.jobs import queue_url
from tessera.runtime.jobs.base import DEFAULT_RETENTION_SECONDS
from tessera.runtime.models import DEFAULT_PRICE_PER_PATCH
from tessera.runtime.params import ParameterLimits, Task
from tessera.runtime.ratelimit import RateLimits
from tessera.runtime.storage.base import PublicDownloads
from tessera.runtime.usage.export import PushPolicy
from tessera.runtime.usage.formats import DEFAULT_SOURCE, Format, Rfc3339Time
from tessera.runtime.worker.options import BatchOptions, BatchSize, BatchWaitMs, PipelineOptions

DEFAULT_DATA_DIR = Path("~/.local/share/tessera")
# A prompt and its settings fit in a few kilobytes; edits' images travel as URLs, uploads
# or data URLs (the last within the source limit, so that is the body limit of /v1/images).
DEFAULT_MAX_JSON_BYTES = 1024 * 1024


def parse_origin(value: str) -> str:
    """``*`` or ``scheme://host[:port]``, as browsers send it in ``Origin``: a path or a
    trailing slash would never match, and CORS would fail without saying why."""
    origin = value.rstrip("/")
    if origin == "*":
        return origin
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
        raise ValueError(
            f"expected an origin such as https://app.example.com (or '*'), not {value!r}"
        )
    return origin


def parse_model_argument(value: str) -> tuple[str, Path, Task]:
    """``NAME=PATH[:TASK]``."""
    name, sep, location = value.partition("=")
    if not sep or not name or not location:
        raise ValueError(f"expected NAME=PATH[:TASK], not {value!r}")
    task = Task.TEXT_TO_IMAGE
    path, colon, suffix = location.rpartition(":")
    if colon and suffix in {t.value for t in Task}:
        location, task = path, Task(suffix)
    return name, Path(location).expanduser(), task


def parse_image_model_argument(value: str) -> tuple[Path, Path]:
    """``FILE=PATH``: an ImageModel document and the pipeline folder that serves it."""
    file, sep, location = value.partition("=")
    if not sep or not file or not location:
        raise ValueError(f"expected FILE=PATH (an ImageModel YAML file, a pipeline), not {value!r}")
    return Path(file).expanduser(), Path(location).expanduser()


def storage_url(value: str) -> str:
    """A storage URL; an absolute path is the folder's ``file://`` URL (a mounted volume)."""
    return f"file://{value}" if value.startswith("/") else value


def event_source(value: str) -> str:
    """A CloudEvents ``source``: a URI reference, so printable ASCII without spaces."""
    if not value or not all("!" <= character <= "~" for character in value):
        raise ValueError(
            "a CloudEvents source is a URI reference: printable ASCII without spaces, such as "
            f"tessera or //tessera.example/eu-1, not {value!r}"
        )
    return value


def parse_network(value: str) -> IPv4Network | IPv6Network:
    try:
        return ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"expected a network such as 10.20.0.0/16, not {value!r}") from None


def parse_rates(value: str) -> str:
    """A ``limits`` rate string (``20/second;600/minute``), checked now rather than at the
    first request."""
    from limits import parse_many

    parse_many(value)
    return value


def _networks(value: Any) -> Any:
    return tuple(
        parse_network(item) if isinstance(item, str) else item for item in _comma_separated(value)
    )


def _comma_separated(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


# Lists: a repeated flag, or one comma-separated variable.
_SPLIT = BeforeValidator(_comma_separated)
Strings = Annotated[tuple[str, ...], NoDecode, _SPLIT]
Secrets = Annotated[tuple[SecretStr, ...], NoDecode, _SPLIT]
Networks = Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode, BeforeValidator(_networks)]
StorageUrl = Annotated[str, AfterValidator(storage_url)]
QueueUrl = Annotated[str, AfterValidator(queue_url)]
EventSource = Annotated[str, AfterValidator(event_source)]
Rates = Annotated[str, AfterValidator(parse_rates)]


class _Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TESSERA_", extra="forbid", frozen=True)

    # Fields read from the environment (or a file) only; every other field is also a flag.
    ENV_ONLY: ClassVar[frozenset[str]] = frozenset()


class ApiSettings(_Settings):
    """What every process that answers the image API is told."""

    ENV_ONLY: ClassVar[frozenset[str]] = frozenset({"api_keys", "admin_api_keys", "signing_secret"})

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    public_url: str | None = None
    api_keys_file: Path | None = None
    api_keys: Secrets = ()
    # Keys that may also read everyone's usage (GET /v1/usage).
    admin_api_keys: Secrets = ()
    signing_secret_file: Path | None = None
    signing_secret: SecretStr | None = None
    url_ttl_seconds: int = Field(default=3600, ge=1)
    # How long a finished job, its images, inputs and uploads are kept.
    retention_seconds: float = Field(default=DEFAULT_RETENTION_SECONDS, gt=0)
    allow_private_image_urls: bool = False
    allow_image_network: Networks = ()
    # Webhooks: where they may go besides public addresses, and how failed ones are retried.
    allow_private_webhook_urls: bool = False
    allow_webhook_network: Networks = ()
    webhook_retry_seconds: float = Field(default=5.0, gt=0)
    webhook_max_attempts: int = Field(default=10, ge=1, le=100)
    cors_origin: Strings = ()
    # /openai/v1 answers synchronously: how long a request may hold for its job, and how
    # many such requests one key may hold open at once (per process).
    openai_wait_seconds: float = Field(default=300.0, gt=0)
    openai_max_waiting: int = Field(default=16, gt=0)
    # Largest JSON request body, counted as it streams in; an edit may add one source image
    # as a data URL on top.
    max_json_bytes: int = Field(default=DEFAULT_MAX_JSON_BYTES, ge=1)
    # Per-key limits (``limits`` strings); over them the answer is 429 with Retry-After.
    # Counted in each process: several gateway replicas each count on their own.
    rate_limit_submit: Rates = RateLimits.submit
    rate_limit_poll: Rates = RateLimits.poll
    rate_limit_b64: Rates = RateLimits.b64_mib
    # An uploaded source image is deleted this long after its upload (jobs keep a copy).
    upload_ttl: float = Field(default=3600.0, gt=0)
    # Cut a request whose headers take longer than this, or whose body then arrives slower
    # than ``min_body_rate`` bytes a second on average.
    header_timeout: float = Field(default=ClientDeadlines.header_seconds, gt=0)
    min_body_rate: int = Field(default=ClientDeadlines.min_body_bytes_per_second, ge=0)
    # Prometheus metrics on their own listener, apart from the API; None: not served.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    @field_validator("cors_origin", mode="after")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(parse_origin(origin) for origin in value)

    @property
    def base_url(self) -> str:
        """Where clients reach this server: ``public_url``, or the address it listens on."""
        if self.public_url:
            return self.public_url.rstrip("/")
        shown_host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host  # noqa: S104
        return f"http://{shown_host}:{self.port}"

    def secret_bytes(self) -> bytes | None:
        """The URL-signing secret, if one was given (replicas must share it)."""
        if self.signing_secret is not None:
            return self.signing_secret.get_secret_value().encode()
        if self.signing_secret_file is not None:
            return self.signing_secret_file.read_bytes().strip()
        return None


class ServeSettings(ApiSettings):
    """``tessera serve``: the API, a worker and an embedded store in one process."""

    demo: bool = False
    model: Strings = ()
    image_model: Strings = ()
    data_dir: Path = DEFAULT_DATA_DIR
    device: str | None = None

    @field_validator("model", mode="after")
    @classmethod
    def _models(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            parse_model_argument(entry)
        return value

    @field_validator("image_model", mode="after")
    @classmethod
    def _image_models(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            parse_image_model_argument(entry)
        return value

    @field_validator("data_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    def model_arguments(self) -> list[tuple[str, Path, Task]]:
        return [parse_model_argument(entry) for entry in self.model]

    def image_model_arguments(self) -> list[tuple[Path, Path]]:
        return [parse_image_model_argument(entry) for entry in self.image_model]


class GatewaySettings(ApiSettings):
    """``tessera gateway``: the API alone, over a Redis queue and shared storage."""

    queue: str
    storage: StorageUrl
    models: Path | None = None
    # With S3: clients GET results and PUT uploads through presigned URLs of the store
    # ("presigned"), or through the gateway when they cannot reach the store ("gateway").
    public_downloads: PublicDownloads = "presigned"

    @field_validator("queue", mode="after")
    @classmethod
    def _redis(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"the gateway's queue is Redis (redis://HOST:PORT/DB), not {value!r}: gateway "
                "replicas and workers in other processes must share it"
            )
        return value


class WorkerSettings(_Settings):
    """``tessera worker``: one model's pipeline, working a shared queue.

    The operator renders the model's flags and, for what flags do not carry, the variables
    ``TESSERA_MODEL_PARAMETERS``, ``TESSERA_PRICE_PER_PATCH``, ``TESSERA_PIPELINE``,
    ``TESSERA_WORKER_ID`` and ``TESSERA_NAMESPACE``.
    """

    model: str = Field(min_length=1)
    weights: Path
    queue: QueueUrl
    # The queue within it (the ImageModel's namespace/name, as the operator renders it);
    # empty: the model's public name, as a gateway keys a model no namespaced resource
    # declares.
    queue_name: str = ""
    # Results and edit sources; by default the folder beside a sqlite queue.
    storage: StorageUrl | None = None
    task: Task = Task.TEXT_TO_IMAGE
    # All interfaces by default; in a pod, its own address ($(POD_IP)), so that workers
    # sharing one network (local test nodes) can each take the same port.
    host: str = "0.0.0.0"  # noqa: S104 - a worker's probes come from outside its pod
    port: int = Field(default=8080, ge=0, le=65535)
    device: str | None = None
    dtype: str | None = None
    lease_seconds: float = Field(default=60.0, gt=0)
    model_parameters: ParameterLimits = ParameterLimits()
    price_per_patch: Decimal = DEFAULT_PRICE_PER_PATCH
    pipeline: PipelineOptions = PipelineOptions()
    batch_max_size: BatchSize = 1
    batch_max_wait_ms: BatchWaitMs = 0
    worker_id: str = Field(default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}")
    # The ImageModel's namespace (TESSERA_NAMESPACE, rendered by the operator), for usage.
    namespace: str = ""

    @property
    def batch(self) -> BatchOptions:
        return BatchOptions(max_size=self.batch_max_size, max_wait_ms=self.batch_max_wait_ms)


# How long delivered usage records stay in the store. Finite, and at most ten years: the
# store computes a cutoff in milliseconds from it.
RetentionSeconds = Annotated[float, Field(ge=0, le=3650 * 24 * 3600, allow_inf_nan=False)]


class UsageExportSettings(_Settings):
    """``tessera usage export``: one range of the usage ledger, as a file."""

    queue: QueueUrl
    # Default: the start, or the cursor saved under ``cursor_name``.
    since: str | None = None
    until: str | None = None
    # A time instead of ``until``: every record that finished before it (an invoice period).
    before: Rfc3339Time | None = None
    format: Format = Format.JSONL
    source: EventSource = DEFAULT_SOURCE
    output: Path | None = None
    # Resume from the cursor saved under this name, and save the one reached once the
    # range is written: the export then counts as delivered, and retention may trim it.
    cursor_name: str | None = Field(default=None, min_length=1, max_length=100)
    retention_seconds: RetentionSeconds = PushPolicy.retention_seconds

    @model_validator(mode="after")
    def _one_end(self) -> UsageExportSettings:
        if self.until is not None and self.before is not None:
            raise ValueError("give --until or --before, not both")
        return self


class UsageCursorsSettings(_Settings):
    """``tessera usage cursors``: the saved cursors retention waits for, one forgotten."""

    queue: QueueUrl
    forget: str | None = Field(default=None, min_length=1, max_length=100)


class UsagePushSettings(_Settings):
    """``tessera usage push``: the ledger, as CloudEvents batches, to an HTTP receiver."""

    ENV_ONLY: ClassVar[frozenset[str]] = frozenset({"push_token"})

    queue: QueueUrl
    to: str
    # Sent as ``Authorization: Bearer ...`` (OpenMeter's API token).
    push_token: SecretStr | None = None
    source: EventSource = DEFAULT_SOURCE
    batch_size: int = Field(default=PushPolicy.batch_size, ge=1, le=1000)
    retention_seconds: RetentionSeconds = PushPolicy.retention_seconds
    retry_max_seconds: float = Field(
        default=PushPolicy.retry_max_seconds, gt=0, allow_inf_nan=False
    )
    idle_seconds: float = Field(default=PushPolicy.idle_seconds, gt=0, allow_inf_nan=False)
    # Deliver everything there is, then exit (a cron job, or a test).
    once: bool = False

    @field_validator("to", mode="after")
    @classmethod
    def _http(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"expected an http(s) URL such as http://openmeter/api/v1/events, not {value!r}"
            )
        return value

    def policy(self) -> PushPolicy:
        return PushPolicy(
            batch_size=self.batch_size,
            retention_seconds=self.retention_seconds,
            retry_max_seconds=self.retry_max_seconds,
            idle_seconds=self.idle_seconds,
        )


S = TypeVar("S", bound=BaseSettings)


def settings_from(cls: type[S], args: argparse.Namespace) -> S:
    """The command's settings: the flags given (only those: their defaults are suppressed),
    then ``TESSERA_*`` variables, then the defaults. Bad values exit 2 naming the flag."""
    given = {
        k: v
        for k, v in vars(args).items()
        if k not in ("handler", "command", "usage_command", "log_level")
    }
    try:
        return cls(**given)
    except ValidationError as error:
        for problem in error.errors():
            name = str(problem["loc"][0]) if problem["loc"] else ""
            where = f"--{name.replace('_', '-')} (TESSERA_{name.upper()})" if name else "settings"
            print(f"error: {where}: {problem['msg']}", file=sys.stderr)
        raise SystemExit(2) from None
