"""Settings for one server process, and the files it keeps in its data directory."""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from tessera.runtime.api.protocol import ClientDeadlines
from tessera.runtime.jobs.base import StorePolicy
from tessera.runtime.keys import KeyRing
from tessera.runtime.models import ModelSpec
from tessera.runtime.ratelimit import RateLimits
from tessera.runtime.sources import SourceLimits

# A prompt and its settings fit in a few kilobytes; edits' images travel as URLs, uploads
# or data URLs (the last within the source limit, so that is the body limit of /v1/images).
DEFAULT_MAX_JSON_BYTES = 1024 * 1024


@dataclass
class ServerConfig:
    data_dir: Path
    models: list[ModelSpec]
    keys: KeyRing
    public_url: str
    url_ttl_seconds: int = 3600
    sources: SourceLimits = field(default_factory=SourceLimits)
    store: StorePolicy = field(default_factory=StorePolicy)
    # Run a worker inside the API process (``tessera serve``); the gateway sets this False.
    embedded_worker: bool = True
    device: str | None = None
    # Origins whose pages may call the API from a browser (CORS); "*" for any. Empty: only
    # pages this server serves (the Playground) can, as browsers enforce by default.
    cors_origins: tuple[str, ...] = ()
    # Bodies of JSON requests, capped as they stream in (uploads have the source limit).
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES
    rate_limits: RateLimits = field(default_factory=RateLimits)
    client_deadlines: ClientDeadlines = field(default_factory=ClientDeadlines)
    # An uploaded source image is deleted this long after its PUT (jobs keep their own copy).
    upload_ttl_seconds: float = 3600.0
    # Prometheus metrics on their own listener, for scrapers only; None: not served at all.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    @property
    def max_edit_json_bytes(self) -> int:
        """An edit's body may also carry one source image inline, as a base64 data URL."""
        return self.max_json_bytes + 4 * math.ceil(self.sources.max_bytes / 3)

    @property
    def database(self) -> Path:
        return self.data_dir / "jobs.db"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"


def prepare_data_dir(path: Path) -> Path:
    """The data directory, created or narrowed to its owner alone (0700): it holds the job
    database, key hashes, secrets and every image."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


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
