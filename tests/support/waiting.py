"""Polling for a condition in a real system, failing with what was waited for."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimedOut(AssertionError):
    """The condition never held; the message names it."""


def wait_until(
    what: str,
    probe: Callable[[], T | None],
    timeout: float = 60,
    explain: Callable[[], str] | None = None,
    failure: type[AssertionError] = WaitTimedOut,
) -> T:
    """Poll ``probe`` until it returns something truthy; raise ``failure`` naming ``what``.

    ``explain`` adds context to the failure (a log tail, the object's status).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain else ""
            raise failure(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(0.25)
