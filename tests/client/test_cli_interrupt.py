"""Ctrl-C in ``tessera generate``: the job id is printed at once; with a terminal the user is
asked before anything is cancelled, without one nothing is, and ``tessera wait`` resumes."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

from tests.client.test_cli import ok, tessera
from tests.support.server import ServerProcess

SLOW = ("--size", "square_hd", "--steps", "50")


def _spawn(server: ServerProcess, stdin: int | IO[bytes], cwd: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TESSERA_BASE_URL": server.api_url, "TESSERA_API_KEY": server.api_key}
    command = [sys.executable, "-m", "tessera.runtime.cli", "generate", "a slow lighthouse"]
    return subprocess.Popen(
        [*command, *SLOW],
        stdin=stdin,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        preexec_fn=_hear_ctrl_c,
    )


def _hear_ctrl_c() -> None:
    """SIGINT as a terminal's user has it, whoever ran the suite: a shell without job
    control starts a background command (``make test &``) with SIGINT ignored, its children
    inherit that, and Python then installs no KeyboardInterrupt handler at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _read_until(process: subprocess.Popen[bytes], text: str, timeout: float = 120) -> str:
    """stderr up to and including ``text`` (a prompt ends without a newline)."""
    assert process.stderr is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in seen:
        assert time.monotonic() < deadline, seen.decode()
        chunk = os.read(process.stderr.fileno(), 4096)
        assert chunk, f"stderr closed before {text!r}: {seen.decode()}"
        seen += chunk
    return seen.decode()


def _job_id(submitted: str) -> int:
    line = next(line for line in submitted.splitlines() if line.endswith(" submitted"))
    return int(line.split()[1])


def _status(server: ServerProcess, job_id: int) -> str:
    with server.client() as client:
        return str(client.get(f"/images/tasks/{job_id}").json()["status"])


def test_ctrl_c_without_a_terminal_keeps_the_job_and_says_how_to_resume(
    demo_server: ServerProcess, tmp_path: Path
) -> None:
    process = _spawn(demo_server, subprocess.DEVNULL, tmp_path)
    job_id = _job_id(_read_until(process, " submitted"))
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    assert process.stderr is not None
    said = process.stderr.read().decode()
    assert f"resume with: tessera wait {job_id}" in said, said
    assert _status(demo_server, job_id) != "cancelled"
    out = ok(tessera(demo_server, "wait", str(job_id), "-o", str(tmp_path / "resumed.png")))
    assert (tmp_path / "resumed.png").stat().st_size > 0
    assert f"patches billed (job {job_id}" in out


def test_ctrl_c_at_a_terminal_asks_and_cancels_on_yes(
    demo_server: ServerProcess, tmp_path: Path
) -> None:
    controller, terminal = pty.openpty()
    try:
        process = _spawn(demo_server, terminal, tmp_path)
        job_id = _job_id(_read_until(process, " submitted"))
        process.send_signal(signal.SIGINT)
        _read_until(process, f"cancel job {job_id}? [y/N]")
        assert _status(demo_server, job_id) != "cancelled", "nothing is cancelled before yes"
        os.write(controller, b"y\n")
        assert process.wait(timeout=60) == 130
        assert process.stderr is not None
        assert "cancelled; it is not billed" in process.stderr.read().decode()
    finally:
        os.close(controller)
        os.close(terminal)
    with httpx.Client(base_url=demo_server.api_url, headers={"api_key": demo_server.api_key}) as c:
        task = c.get(f"/images/tasks/{job_id}").json()
    assert task["status"] == "cancelled" and "result" not in task
