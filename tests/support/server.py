"""A real ``tessera serve`` (or ``gateway``) process on a free loopback port, for tests and
benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

KEYS = ("test-key-alpha", "test-key-bravo")
# May read everyone's usage (GET /v1/usage); KEYS may not.
ADMIN_KEY = "test-key-admin"


def wait_for_http(
    url: str, process: subprocess.Popen[bytes], what: str, log: Callable[[], str], timeout: float
) -> None:
    """Until ``url`` answers 200; fail with the process's log if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited early:\n{log()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready in {timeout} s:\n{log()}")


def stop_process(
    process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 40
) -> None:
    """Send ``sig`` and wait; kill it if it has not exited within ``timeout``."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def folder_files(root: Path, prefix: str) -> dict[str, bytes]:
    """The files of a folder store under ``prefix``, by key."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in (root / prefix).rglob("*")
        if path.is_file()
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Shared test servers answer many tests with one key; rate limits have tests of their own
# (tests/api/test_hostile_clients.py), whose flags come later and win.
UNTRIPPED_RATE_LIMITS = (
    "--rate-limit-submit",
    "100000/second",
    "--rate-limit-poll",
    "100000/second",
    "--rate-limit-b64",
    "100000/second",
)


@dataclass
class ServerProcess:
    """``tessera serve --demo`` with known keys; ``start`` waits until jobs can run.

    ``command`` runs another API command instead (``gateway ...``); ``data_dir`` then only
    holds the log.
    """

    data_dir: Path
    port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    keys: tuple[str, ...] = KEYS
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    command: tuple[str, ...] | None = None
    env: dict[str, str] = field(default_factory=dict)
    # The ``tessera`` of another environment (a clean install) instead of this one's.
    executable: str | None = None
    # Another checkout's interpreter runs that checkout's server (benchmarks compare them).
    python: str = sys.executable
    # Where the server publishes Prometheus metrics (--metrics-port); None: nowhere.
    metrics_port: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def api_key(self) -> str:
        return self.keys[0]

    @property
    def results_url(self) -> str:
        """Where result URLs point: this server's signed file URLs."""
        return self.api_url + "/files/"

    def client(self, key: str | None = None, timeout: float = 30) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url,
            headers={"api_key": key or self.api_key},
            timeout=timeout,
        )

    def stored(self, prefix: str) -> dict[str, bytes]:
        """The files of ``serve``'s storage (its data directory's ``files``) under ``prefix``."""
        return folder_files(self.data_dir / "files", prefix)

    @property
    def metrics_urls(self) -> list[str]:
        """Every Prometheus endpoint of this deployment: one process here, off its API port."""
        return (
            [] if self.metrics_port is None else [f"http://127.0.0.1:{self.metrics_port}/metrics"]
        )

    def start(self, ready_timeout: float = 180, probe: str = "/readyz") -> ServerProcess:
        self.spawn()
        return self.wait_ready(ready_timeout, probe)

    def spawn(self) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"server-{self.port}.log"
        env = {
            **os.environ,
            "TESSERA_API_KEYS": ",".join(self.keys),
            "TESSERA_ADMIN_API_KEYS": ADMIN_KEY,
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        arguments = self.command or ("serve", "--demo", "--data-dir", str(self.data_dir))
        launcher = (
            [self.executable] if self.executable else [self.python, "-m", "tessera.runtime.cli"]
        )
        metrics = () if self.metrics_port is None else ("--metrics-port", str(self.metrics_port))
        command = [
            *launcher,
            *arguments,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *metrics,
            *UNTRIPPED_RATE_LIMITS,
            *self.extra_args,
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def wait_ready(self, ready_timeout: float = 180, probe: str = "/readyz") -> ServerProcess:
        assert self.process is not None
        try:
            wait_for_http(self.base_url + probe, self.process, "tessera", self.log, ready_timeout)
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> None:
        stop_process(self.process, sig, timeout)

    def kill(self) -> None:
        """Die at once, as on a crash or OOM kill: nothing gets to clean up."""
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path else ""
