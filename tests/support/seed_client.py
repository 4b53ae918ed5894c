"""The reference client as the seed article writes it: submit, then poll every few seconds
with no ``wait``, then fetch the ``url``. A Hyperstack client changes only the base URL and
the key, so every deployment shape (gateway, chart) is checked with exactly this."""

from __future__ import annotations

import time
from typing import Any

import httpx


def generate(
    base_url: str,
    api_key: str,
    payload: dict[str, Any],
    path: str = "/images/generations",
    poll_seconds: float = 1.0,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Submit ``payload`` to ``path`` and poll its task until it completes or fails."""
    headers = {"api_key": api_key, "Content-Type": "application/json"}
    response = httpx.post(f"{base_url}{path}", headers=headers, json=payload)
    response.raise_for_status()
    job_id = response.json()["job_id"]
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = httpx.get(
            f"{base_url}/images/tasks/{job_id}", headers=headers
        ).json()
        if status["status"] in ("completed", "failed"):
            return status
        assert time.monotonic() < deadline, f"job {job_id} unfinished after {timeout} s: {status}"
        time.sleep(poll_seconds)


def fetch(url: str) -> bytes:
    """A result's ``url`` with a plain GET, as the seed's client saves it."""
    fetched = httpx.get(url)
    fetched.raise_for_status()
    return fetched.content
