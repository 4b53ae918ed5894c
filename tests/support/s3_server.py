"""A real S3-compatible server, SeaweedFS's ``weed server -s3``, on free loopback ports.

The binary comes from ``tests/tools/build-seaweedfs`` (built once into the cache outside
the repository; ``scripts/bootstrap --test`` runs it first). A missing Go toolchain or a
failed build is an error with the build's own words, never a skip.
"""

from __future__ import annotations

import functools
import json
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import obstore
from obstore.exceptions import BaseError
from obstore.store import S3Store

from tests.support.build import run_build_script
from tests.support.server import free_port

BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "build-seaweedfs"
_SERVICES = ("master", "volume", "filer", "s3")


@functools.cache
def weed_binary() -> Path:
    """The built binary (a second of work once built; a cold build takes minutes)."""
    return run_build_script(BUILD_SCRIPT)


@dataclass
class S3Server:
    """One SeaweedFS with one bucket; ``stop`` then ``start`` keeps its ports and data."""

    directory: Path
    bucket: str = "tessera-test"
    region: str = "us-east-1"
    access_key: str = field(default_factory=lambda: "tessera-" + secrets.token_hex(4))
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def environ(self) -> dict[str, str]:
        """The AWS_* variables a client needs, as a deployment would set them."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }

    def start(self, timeout: float = 60) -> S3Server:
        """Start (or restart) the server and return once the bucket takes writes."""
        self.launch()
        deadline = time.monotonic() + timeout
        first_start = not (self.directory / "bucket-created").exists()
        while first_start:
            if self._create_bucket():
                (self.directory / "bucket-created").touch()
                break
            self._check_alive(deadline, f"bucket {self.bucket} was not created in time")
            time.sleep(0.2)
        while not self._writable():
            self._check_alive(deadline, f"S3 on {self.endpoint} took no write in time")
            time.sleep(0.2)
        return self

    def launch(self) -> None:
        """Start the process without waiting for it to serve (for restart tests)."""
        binary = weed_binary()
        if not self.ports:
            # Every HTTP and gRPC port explicitly: the default gRPC port is HTTP + 10000,
            # which from an ephemeral port may be taken or past 65535.
            for service in _SERVICES:
                self.ports[f"{service}.port"] = free_port()
                self.ports[f"{service}.port.grpc"] = free_port()
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        config = self.directory / "s3.json"
        config.write_text(json.dumps({"identities": [self._identity()]}))
        log = (self.directory / "weed.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(binary), "server",
                f"-dir={self.directory / 'data'}",
                "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                *(f"-{flag}={port}" for flag, port in self.ports.items()),
                "-filer", "-s3",
                f"-s3.config={config}",
                "-s3.autoCreateBucket=false",  # as on real S3: a missing bucket is an error
                "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.telemetry=false",
                # One master: after a restart it need not wait 10 s for peers to elect it.
                "-master.electionTimeout=1s",
                "-master.volumeSizeLimitMB=100", "-volume.max=32",
                "-volume.preStopSeconds=0",  # a test server need not drain before stopping
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()

    def stop(self) -> None:
        """Stop the process; its data stays. (weed server shuts its parts down on SIGTERM
        within a second, then may linger; a kill after that loses nothing.)"""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def objects(self, prefix: str) -> list[str]:
        """Every object key under ``prefix``, read past any store under test."""
        return sorted(
            meta["path"] for batch in obstore.list(self._client(), prefix) for meta in batch
        )

    def read(self, key: str) -> bytes:
        """One object's bytes, read past any store under test."""
        return bytes(obstore.get(self._client(), key).bytes())

    def _identity(self) -> dict[str, object]:
        return {
            "name": "tessera",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }

    def _create_bucket(self) -> bool:
        # SeaweedFS's address syntax for a gRPC port that is not HTTP + 10000: ip:port.grpc
        master = f"127.0.0.1:{self.ports['master.port']}.{self.ports['master.port.grpc']}"
        filer = f"127.0.0.1:{self.ports['filer.port']}.{self.ports['filer.port.grpc']}"
        result = subprocess.run(
            [str(weed_binary()), "shell", f"-master={master}", f"-filer={filer}"],
            input=f"s3.bucket.create -name {self.bucket}\nexit\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return result.returncode == 0 and "create bucket under" in result.stdout

    def _writable(self) -> bool:
        """Whether an object can be written now: the S3 gateway, filer and volumes are up."""
        try:
            obstore.put(self._client(), ".ready", b"ok")
        except BaseError:
            return False
        return True

    def _client(self) -> S3Store:
        """A plain client that fails at once, for probes and listings."""
        return S3Store(
            self.bucket,
            endpoint=self.endpoint,
            access_key_id=self.access_key,
            secret_access_key=self.secret_key,
            region=self.region,
            client_options={"allow_http": True, "timeout": "5s"},
            retry_config={"max_retries": 0},
        )

    def _check_alive(self, deadline: float, what: str) -> None:
        assert self.process is not None
        if self.process.poll() is None and time.monotonic() < deadline:
            return
        self.stop()
        log_tail = (self.directory / "weed.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{what} (weed server exit code {self.process.returncode}):\n{log_tail}")
