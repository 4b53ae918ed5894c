"""Running a build script of tests/ (Go tools cached outside the repository) from Python."""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path


def run_build_script(script: Path) -> Path:
    """Run ``script``, relaying its progress to stderr, and return the path it prints last.

    A failure raises RuntimeError with the tail of the build's output, never a skip: a test
    run without the tool proves nothing.
    """
    tail: collections.deque[str] = collections.deque(maxlen=40)
    proc = subprocess.Popen(
        [str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        tail.append(line)
    out = proc.stdout.read().strip().splitlines()
    if proc.wait() != 0 or not out or not Path(out[-1]).exists():
        raise RuntimeError(
            f"{script} failed (exit {proc.returncode}); run scripts/bootstrap --test:\n"
            + "".join(tail)
        )
    return Path(out[-1])
