"""A real ``tessera serve`` process on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

KEYS = ("test-key-alpha", "test-key-bravo")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """``tessera serve --demo`` with known keys; ``start`` waits until jobs can run."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    keys: tuple[str, ...] = KEYS
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    # Another checkout's interpreter runs that checkout's server (benchmarks compare them).
    python: str = sys.executable

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def api_key(self) -> str:
        return self.keys[0]

    def client(self, key: str | None = None, timeout: float = 30) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url,
            headers={"api_key": key or self.api_key},
            timeout=timeout,
        )

    def start(self, ready_timeout: float = 180, probe: str = "/readyz") -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"server-{self.port}.log"
        env = {**os.environ, "TESSERA_API_KEYS": ",".join(self.keys), "PYTHONUNBUFFERED": "1"}
        command = [
            self.python,
            "-m",
            "tessera.runtime.cli",
            "serve",
            "--demo",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tessera serve exited early:\n{self.log_path.read_text()}")
            try:
                if httpx.get(self.base_url + probe, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"tessera serve not ready in {ready_timeout} s:\n{self.log_path.read_text()}"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """Die at once, as on a crash or OOM kill: nothing gets to clean up."""
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path else ""
