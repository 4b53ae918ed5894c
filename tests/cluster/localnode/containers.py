"""One container as a local process: start, probe, restart with backoff, stop.

The process runs in a session of its own, so stopping a container signals its whole
process group (a shell's children too), as stopping a real container stops everything
in it. Its pid goes to a file under the agent's state folder, which is how
``tests/cluster/down`` finds what to kill even if the agent itself died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.cluster.harness import process_start_time

from . import probes
from .errors import ConfigNotReady
from .kube import now

log = logging.getLogger(__name__)

# The kubelet's crash-loop backoff: doubling from 10 s up to 5 minutes, forgotten after a
# container has run for 10 minutes. The first restart is immediate.
MAX_BACKOFF = 300.0
BACKOFF_RESET_AFTER = 600.0
_CONFIG_RETRY = 2.0


@dataclass
class Launch:
    """What one start of the container runs, resolved afresh for every start."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    target: probes.Target


class Container:
    """One container of a pod and the status the kubelet would report for it."""

    def __init__(
        self,
        spec: Mapping[str, Any],
        *,
        prepare: Callable[[], Awaitable[Launch]],
        restart_policy: str,
        grace_seconds: float,
        backoff_seconds: float,
        log_path: Path,
        pid_path: Path,
        http: httpx.AsyncClient,
        on_change: Callable[[], None],
    ) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self._prepare = prepare
        self.restart_policy = restart_policy
        self.grace_seconds = grace_seconds
        self.backoff_seconds = backoff_seconds
        self.log_path = log_path
        self._pid_path = pid_path
        self._http = http
        self._on_change = on_change
        self.restart_count = 0
        self.state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict[str, Any] = {}
        self.ready = False
        self.started = False
        self.exit_code: int | None = None
        self.pid: int | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()
        self._backoff_step = 0

    # -- status -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        status = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.pid is not None:
            status["containerID"] = f"local://{self.pid}"
        return status

    @property
    def running(self) -> bool:
        return "running" in self.state

    def _set(self, **fields: Any) -> None:
        for key, value in fields.items():
            setattr(self, key, value)
        self._on_change()

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Start, supervise and restart until the policy or ``stop`` ends it."""
        while not self._stopping.is_set():
            try:
                launch = await self._prepare()
            except ConfigNotReady as missing:
                self._set(
                    state={
                        "waiting": {"reason": "CreateContainerConfigError", "message": str(missing)}
                    }
                )
                await self._sleep(_CONFIG_RETRY)
                continue
            ran_for = await self._run_once(launch)
            if self._stopping.is_set() or not self.will_restart():
                return
            if ran_for > BACKOFF_RESET_AFTER:
                self._backoff_step = 0
            delay = self._next_delay()
            if delay:
                message = f"back-off {delay:g}s restarting failed container={self.name}"
                self._set(state={"waiting": {"reason": "CrashLoopBackOff", "message": message}})
                await self._sleep(delay)
                if self._stopping.is_set():
                    return
            self.restart_count += 1

    def will_restart(self) -> bool:
        """Whether the restart policy starts the container again after its last exit."""
        if self.restart_policy == "Always":
            return True
        return self.restart_policy == "OnFailure" and self.exit_code != 0

    def _next_delay(self) -> float:
        step = self._backoff_step
        self._backoff_step += 1
        return 0.0 if step == 0 else min(self.backoff_seconds * 2 ** (step - 1), MAX_BACKOFF)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _run_once(self, launch: Launch) -> float:
        """One process from start to exit; returns how long it ran."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as output:  # noqa: ASYNC230 - local, once per start
            process = await asyncio.create_subprocess_exec(
                *launch.argv,
                env=launch.env,
                cwd=launch.cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                start_new_session=True,
            )
        started_monotonic = time.monotonic()
        self._process = process
        self._pid_path.parent.mkdir(parents=True, exist_ok=True)
        self._pid_path.write_text(f"{process.pid} {process_start_time(process.pid)}\n")
        log.info("started %s (pid %d): %s", self.name, process.pid, launch.argv)
        self._set(
            pid=process.pid,
            state={"running": {"startedAt": now()}},
            started="startupProbe" not in self.spec,
            ready=False,
        )
        started_at = self.state["running"]["startedAt"]
        watchers = asyncio.create_task(self._probe(launch.target))
        code = await process.wait()
        watchers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchers
        self._kill_group(signal.SIGKILL)  # what the main process left behind
        self._pid_path.unlink(missing_ok=True)
        self._process = None
        exit_code = 128 - code if code < 0 else code
        terminated: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": started_at,
            "finishedAt": now(),
        }
        if code < 0:
            terminated["signal"] = -code
        log.info("%s exited with %d", self.name, exit_code)
        self._set(
            exit_code=exit_code,
            ready=False,
            state={"terminated": terminated},
            last_state={"terminated": terminated} if self.will_restart() else self.last_state,
        )
        return time.monotonic() - started_monotonic

    async def stop(self, grace_seconds: float | None = None) -> None:
        """SIGTERM to the process group, SIGKILL once the grace period is over."""
        self._stopping.set()
        await self._terminate(self.grace_seconds if grace_seconds is None else grace_seconds)

    async def _terminate(self, grace_seconds: float) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        self._kill_group(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace_seconds)
        except TimeoutError:
            log.info("%s outlived its %g s grace period: SIGKILL", self.name, grace_seconds)
            self._kill_group(signal.SIGKILL)
            await process.wait()

    def _kill_group(self, signum: int) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signum)

    # -- probes -------------------------------------------------------------------------

    async def _probe(self, target: probes.Target) -> None:
        """Startup first; once it passes, liveness and readiness side by side."""
        if "startupProbe" in self.spec:
            async for passed in self._verdicts("startupProbe", target):
                if not passed:
                    await self._unhealthy("startup")
                    return
                break
            self._set(started=True)
        if "readinessProbe" not in self.spec:
            self._set(ready=True)
        async with asyncio.TaskGroup() as group:
            if "readinessProbe" in self.spec:
                group.create_task(self._readiness(target))
            if "livenessProbe" in self.spec:
                group.create_task(self._liveness(target))

    def _verdicts(self, kind: str, target: probes.Target) -> AsyncIterator[bool]:
        return probes.verdicts(self.spec[kind], target, self._http, f"{self.name} {kind}")

    async def _readiness(self, target: probes.Target) -> None:
        async for passed in self._verdicts("readinessProbe", target):
            if passed != self.ready:
                self._set(ready=passed)

    async def _liveness(self, target: probes.Target) -> None:
        async for passed in self._verdicts("livenessProbe", target):
            if not passed:
                await self._unhealthy("liveness")
                return

    async def _unhealthy(self, which: str) -> None:
        log.info("%s failed its %s probe: restarting it", self.name, which)
        probe = self.spec.get(f"{which}Probe", {})
        grace = probe.get("terminationGracePeriodSeconds", self.grace_seconds)
        # Shielded: killing the process ends the task group this runs in.
        await asyncio.shield(self._terminate(float(grace)))
