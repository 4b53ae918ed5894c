"""Readiness, liveness and startup probes, checked for real against the local process.

An ``httpGet`` probe is a GET to the pod's address (or ``host``) and the container's port
(a number or the name of one of its ``ports``): 200-399 passes. A ``tcpSocket`` probe
passes when the port accepts a connection. An ``exec`` probe runs its command with the
container's environment and working directory: exit code 0 passes. ``grpc`` probes are
not supported (the pod fails with a message when it declares one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .errors import CannotRunHere

log = logging.getLogger(__name__)

_MAX_OUTPUT = 1024


@dataclass(frozen=True)
class Timing:
    """A probe's schedule and thresholds, with the API's defaults."""

    initial_delay: float = 0
    period: float = 10
    timeout: float = 1
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def of(cls, probe: Mapping[str, Any]) -> Timing:
        return cls(
            initial_delay=probe.get("initialDelaySeconds", 0),
            period=probe.get("periodSeconds", 10),
            timeout=probe.get("timeoutSeconds", 1),
            success_threshold=probe.get("successThreshold", 1),
            failure_threshold=probe.get("failureThreshold", 3),
        )


@dataclass
class Target:
    """Where a container's probes go: its pod's address, its ports, its exec context."""

    address: str
    ports: dict[str, int]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = Path("/")
    localize: Callable[[str], str] = str


def check_supported(probe: Mapping[str, Any], container: str) -> None:
    if not any(kind in probe for kind in ("httpGet", "tcpSocket", "exec")):
        raise CannotRunHere(
            "UnsupportedProbe",
            f"container {container!r} has a probe of a kind local nodes do not run "
            f"({', '.join(sorted(set(probe) - set(Timing.__dataclass_fields__)))}); "
            "use httpGet, tcpSocket or exec",
        )


def _port(value: int | str, target: Target) -> int:
    if isinstance(value, int) or value.isdigit():
        return int(value)
    if value not in target.ports:
        raise ValueError(f"the container has no port named {value!r}")
    return target.ports[value]


async def check(probe: Mapping[str, Any], target: Target, client: httpx.AsyncClient) -> str | None:
    """One probe attempt: None if it passed, else what failed (as the kubelet's event says)."""
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "httpGet" in probe:
            return await _http(probe["httpGet"], target, client, timeout)
        if "tcpSocket" in probe:
            host = probe["tcpSocket"].get("host") or target.address
            port = _port(probe["tcpSocket"]["port"], target)
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            writer.close()
            return None
        return await _exec(probe["exec"]["command"], target, timeout)
    except (OSError, ValueError, TimeoutError, httpx.HTTPError) as error:
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


async def _http(
    get: Mapping[str, Any], target: Target, client: httpx.AsyncClient, timeout: float
) -> str | None:
    scheme = str(get.get("scheme", "HTTP")).lower()
    host = get.get("host") or target.address
    url = f"{scheme}://{host}:{_port(get['port'], target)}{get.get('path', '/')}"
    headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
    response = await client.get(url, headers=headers, timeout=timeout)
    if 200 <= response.status_code < 400:
        return None
    return f"HTTP probe failed with statuscode: {response.status_code}"


async def _exec(command: list[str], target: Target, timeout: float) -> str | None:
    process = await asyncio.create_subprocess_exec(
        *(target.localize(arg) for arg in command),
        env=target.env,
        cwd=target.cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        return f"command timed out after {timeout:g} s"
    if process.returncode == 0:
        return None
    text = output[-_MAX_OUTPUT:].decode(errors="replace").strip()
    return f"command exited with {process.returncode}: {text}"


async def verdicts(
    probe: Mapping[str, Any], target: Target, client: httpx.AsyncClient, name: str
) -> AsyncIterator[bool]:
    """Probe on the probe's schedule, forever: yield True whenever ``successThreshold``
    attempts in a row passed, False whenever ``failureThreshold`` in a row failed."""
    timing = Timing.of(probe)
    await asyncio.sleep(timing.initial_delay)
    successes = failures = 0
    while True:
        failure = await check(probe, target, client)
        if failure is None:
            successes, failures = successes + 1, 0
            if successes >= timing.success_threshold:
                yield True
        else:
            successes, failures = 0, failures + 1
            if failures >= timing.failure_threshold:
                log.info("%s probe failed: %s", name, failure)
                yield False
        await asyncio.sleep(timing.period)
