"""A real ``tessera worker`` process, as the operator's Deployments run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.server import free_port, stop_process, wait_for_http


@dataclass
class WorkerProcess:
    model: str
    weights: Path
    queue: str
    storage: str
    log_path: Path
    task: str = "text-to-image"
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    # More flags, e.g. ``--batch-max-size``.
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> WorkerProcess:
        command = [
            sys.executable, "-m", "tessera.runtime.cli", "worker",
            "--model", self.model,
            "--weights", str(self.weights),
            "--queue", self.queue,
            "--storage", self.storage,
            "--task", self.task,
            "--port", str(self.port),
            "--device", "cpu",
            *self.args,
        ]  # fmt: skip
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        return self

    def wait_ready(self, timeout: float = 180) -> WorkerProcess:
        assert self.process is not None
        try:
            wait_for_http(
                self.base_url + "/readyz", self.process, "tessera worker", self.log, timeout
            )
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int | None:
        """Stop it (SIGTERM: after the job in flight); its exit status."""
        stop_process(self.process, sig, timeout)
        return None if self.process is None else self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""
