"""A real ``redis-server`` (Debian's package) on a free loopback port, durable as in production."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.support.server import free_port


@dataclass
class RedisServer:
    directory: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run scripts/bootstrap --test")
        self.port = self.port or free_port()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--save", "",
                "--protected-mode", "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout} s")

    def pattern_subscribers(self) -> int:
        """How many pattern subscriptions are open: a test waits for a process's before it
        makes a change that process must hear rather than find by polling."""
        with redis.Redis.from_url(self.url) as client:
            return int(client.execute_command("PUBSUB", "NUMPAT"))

    def pattern_subscriber_clients(self) -> int:
        """How many connections hold a pattern subscription (``pattern_subscribers`` counts
        patterns: two processes on one pattern are one)."""
        return len(self.patterns_per_subscriber())

    def patterns_per_subscriber(self) -> list[int]:
        """How many patterns each connection that holds any subscribes to, fewest first."""
        with redis.Redis.from_url(self.url) as client:
            counts = (int(entry["psub"]) for entry in client.client_list())
            return sorted(count for count in counts if count)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
