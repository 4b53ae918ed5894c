"""Settings for one server process, and the files it keeps in its data directory."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from tessera.runtime.jobs.base import StorePolicy
from tessera.runtime.keys import KeyRing
from tessera.runtime.models import ModelSpec
from tessera.runtime.openai.settings import OpenAISettings
from tessera.runtime.sources import SourceLimits


@dataclass
class ServerConfig:
    data_dir: Path
    models: list[ModelSpec]
    keys: KeyRing
    public_url: str
    url_ttl_seconds: int = 3600
    sources: SourceLimits = field(default_factory=SourceLimits)
    store: StorePolicy = field(default_factory=StorePolicy)
    openai: OpenAISettings = field(default_factory=OpenAISettings)
    # Run a worker inside the API process (``tessera serve``); the gateway sets this False.
    embedded_worker: bool = True
    device: str | None = None
    # Origins whose pages may call the API from a browser (CORS); "*" for any. Empty: only
    # pages this server serves (the Playground) can, as browsers enforce by default.
    cors_origins: tuple[str, ...] = ()

    @property
    def database(self) -> Path:
        return self.data_dir / "jobs.db"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"


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
