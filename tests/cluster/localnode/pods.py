"""One pod on a local node: volumes, init containers, containers, status, termination.

The pod's status is computed from its containers the way the kubelet computes it (phase,
the PodReadyToStartContainers/Initialized/ContainersReady/Ready conditions, container
states and restart counts) and written whenever it changes. A pod that asks for what a
local node cannot give (no ``command``, an executable this machine lacks, an unsupported
volume or probe) fails at once, with the reason and message in its status.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from . import probes
from .containers import Container, Launch
from .env import container_env, expand
from .errors import CannotRunHere, ConfigNotReady
from .kube import NodeApi, now
from .names import HOSTS_PATH, ServiceAddresses, hosts_file, pin_wildcard, write_in_place
from .volumes import (
    SERVICE_ACCOUNT_PATH,
    PodVolumes,
    localize,
    with_bound_paths,
)

log = logging.getLogger(__name__)

_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")


@dataclass(frozen=True)
class NodeContext:
    """What every pod on one node shares."""

    name: str
    address: str
    api: NodeApi
    state_dir: Path
    base_env: dict[str, str]
    backoff_seconds: float
    http: httpx.AsyncClient
    # Whether the service-account folder (and /etc/hosts) can appear at their real paths.
    mount_namespaces: bool
    # The cluster's Services by their ready endpoints, kept current by the agent.
    services: dict[tuple[str, str], list[str]]


def pod_dir(state_dir: Path, pod: Mapping[str, Any]) -> Path:
    """``<state>/pods/<namespace>/<name>-<uid prefix>``: logs and volumes of one pod."""
    meta = pod["metadata"]
    return state_dir / "pods" / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}"


class PodRunner:
    """Runs one pod until it completes or is deleted, reporting its status."""

    def __init__(self, pod: dict[str, Any], node: NodeContext, address: str) -> None:
        self.pod = pod
        self.node = node
        self.address = address
        self.dir = pod_dir(node.state_dir, pod)
        self.volumes = PodVolumes(pod, self.dir, node.state_dir.parent, node.api)
        spec = pod["spec"]
        self.restart_policy: str = spec.get("restartPolicy", "Always")
        self.grace = float(spec.get("terminationGracePeriodSeconds", 30))
        self._dirty = asyncio.Event()
        self.init = [self._container(c, init=True) for c in spec.get("initContainers") or []]
        self.main = [self._container(c, init=False) for c in spec.get("containers") or []]
        self.sandbox_ready = False
        self.initialized = not self.init
        self.failure: CannotRunHere | None = None
        self.started_at = now()
        self._written: dict[str, Any] | None = None
        self._transitions: dict[str, tuple[str, str]] = {}
        self._terminating = False
        self._closed = False
        self.finished = asyncio.Event()

    @property
    def key(self) -> str:
        meta = self.pod["metadata"]
        return f"{meta['namespace']}/{meta['name']}"

    def _container(self, spec: Mapping[str, Any], init: bool) -> Container:
        policy = self.restart_policy
        if init:  # an init container is retried until it succeeds, unless the pod says Never
            policy = "Never" if policy == "Never" else "OnFailure"
        return Container(
            spec,
            prepare=lambda: self._launch(spec),
            restart_policy=policy,
            grace_seconds=float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)),
            backoff_seconds=self.node.backoff_seconds,
            log_path=self.dir / "logs" / f"{spec['name']}.log",
            pid_path=self.node.state_dir
            / "pids"
            / f"{self.pod['metadata']['uid']}.{spec['name']}.pid",
            http=self.node.http,
            on_change=self._dirty.set,
        )

    # -- running ------------------------------------------------------------------------

    async def run(self) -> None:
        """The pod's whole life; always ends with its status written."""
        writer = asyncio.create_task(self._write_status_loop())
        try:
            await self._run()
        except CannotRunHere as failure:
            log.warning("%s cannot run here: %s", self.key, failure.message)
            self.failure = failure
            await asyncio.gather(*(c.stop(0) for c in self.init + self.main))
        finally:
            # The writer writes the final status itself: cancelling it mid-write could let
            # an older status land after the final one.
            self._closed = True
            self._dirty.set()
            await writer
            self.finished.set()

    async def _run(self) -> None:
        self._check_supported()
        while not self._terminating:
            try:
                await asyncio.to_thread(self.volumes.prepare)
                break
            except ConfigNotReady as missing:
                for container in self.init + self.main:
                    container.state = {
                        "waiting": {"reason": "ContainerCreating", "message": str(missing)}
                    }
                self._dirty.set()
                await asyncio.sleep(2)
        if self._terminating:  # deleted while waiting for its volumes
            return
        await asyncio.to_thread(self.write_hosts, self.node.services)
        self.sandbox_ready = True
        self._dirty.set()
        refresher = asyncio.create_task(self._refresh_tokens())
        try:
            for container in self.init:
                await container.run()
                if container.exit_code != 0 or self._terminating:
                    return
            self.initialized = True
            self._dirty.set()
            await asyncio.gather(*(container.run() for container in self.main))
        finally:
            refresher.cancel()

    def _check_supported(self) -> None:
        for container in self.init:
            if container.spec.get("restartPolicy"):
                raise CannotRunHere(
                    "UnsupportedSidecar",
                    f"init container {container.name!r} is a sidecar (restartPolicy "
                    f"{container.spec['restartPolicy']}); local nodes do not run sidecars",
                )
        for container in self.init + self.main:
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                if kind in container.spec:
                    probes.check_supported(container.spec[kind], container.name)
            if not container.spec.get("command"):
                raise CannotRunHere(
                    "CommandRequired",
                    f"container {container.name!r} names no command: an image's entrypoint "
                    "cannot be known on a local node, so set command (and args)",
                )

    async def _refresh_tokens(self) -> None:
        while True:
            due = self.volumes.refresh_at
            await asyncio.sleep(60 if due is None else max(1.0, due - time.monotonic()))
            if self.volumes.refresh_at is not None and time.monotonic() >= self.volumes.refresh_at:
                await asyncio.to_thread(self.volumes.refresh_tokens)

    async def _launch(self, spec: Mapping[str, Any]) -> Launch:
        """Env, paths and executable for one start of a container (may raise)."""
        pod = self._pod_with_addresses()
        mounts = self.volumes.mounts(spec)
        base = self.node.base_env | {"HOSTNAME": pod["metadata"]["name"]}
        for mount_path, local in mounts:
            if mount_path == "/tmp":  # where Python's tempfile and friends look first
                base["TMPDIR"] = str(local)
        env = await asyncio.to_thread(
            container_env, pod, spec, self.node.api, base, lambda v: localize(v, mounts)
        )
        argv = [
            pin_wildcard(localize(expand(arg, env), mounts), self.address)
            for arg in spec["command"] + (spec.get("args") or [])
        ]
        executable = shutil.which(argv[0], path=env.get("PATH"))
        if executable is None:
            raise CannotRunHere(
                "ExecutableNotFound",
                f"container {spec['name']!r}: executable {argv[0]!r} is not on this machine "
                f"(PATH={env.get('PATH', '')})",
            )
        cwd = Path(localize(spec["workingDir"], mounts)) if spec.get("workingDir") else self.dir
        ports = {p["name"]: p["containerPort"] for p in spec.get("ports") or [] if p.get("name")}
        target = probes.Target(
            address=self.address,
            ports=ports,
            env=env,
            cwd=cwd,
            localize=lambda value: localize(value, mounts),
        )
        argv = [executable, *argv[1:]]
        if self.node.mount_namespaces:
            binds = [(self.hosts_path, HOSTS_PATH)]
            service_account = dict(mounts).get(SERVICE_ACCOUNT_PATH)
            if service_account is not None:
                binds.append((service_account, SERVICE_ACCOUNT_PATH))
            argv = with_bound_paths(argv, binds)
        return Launch(argv=argv, env=env, cwd=cwd, target=target)

    @property
    def hosts_path(self) -> Path:
        return self.dir / "hosts"

    def write_hosts(self, services: ServiceAddresses) -> None:
        """The pod's /etc/hosts, naming the cluster's Services (see ``names``)."""
        meta = self.pod["metadata"]
        text = hosts_file(meta["name"], self.address, meta["namespace"], services)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_in_place(self.hosts_path, text)

    def _pod_with_addresses(self) -> dict[str, Any]:
        status = dict(self.pod.get("status") or {})
        status |= self._addresses()
        return {**self.pod, "status": status}

    def _addresses(self) -> dict[str, Any]:
        return {
            "hostIP": self.node.address,
            "hostIPs": [{"ip": self.node.address}],
            "podIP": self.address,
            "podIPs": [{"ip": self.address}],
        }

    # -- deletion -----------------------------------------------------------------------

    def update(self, pod: dict[str, Any]) -> None:
        """A newer copy of the pod object (labels, annotations, deletion)."""
        self.pod = pod | {"status": self.pod.get("status", {})}
        self.volumes.pod = self.pod

    async def terminate(self, grace: float | None) -> None:
        """Stop every container (SIGTERM, grace, SIGKILL) and wait for the pod to end."""
        self._terminating = True
        seconds = self.grace if grace is None else grace
        log.info("%s: stopping containers, %g s grace", self.key, seconds)
        await asyncio.gather(*(c.stop(seconds) for c in self.init + self.main))
        await self.finished.wait()

    def remove_files(self) -> None:
        """Volumes of a deleted pod go; its logs stay until the cluster is stopped."""
        shutil.rmtree(self.dir / "volumes", ignore_errors=True)

    # -- status -------------------------------------------------------------------------

    def phase(self) -> str:
        if self.failure is not None:
            return "Failed"
        if any(c.exit_code not in (None, 0) and not c.will_restart() for c in self.init):
            return "Failed"
        if not self.initialized:
            return "Pending"
        if any(
            "waiting" in c.state and c.restart_count == 0 and c.exit_code is None for c in self.main
        ):
            return "Pending"
        stopped = [c for c in self.main if "terminated" in c.state]
        if len(stopped) == len(self.main) and (
            self._terminating or not any(c.will_restart() for c in self.main)
        ):
            return "Succeeded" if all(c.exit_code == 0 for c in stopped) else "Failed"
        return "Running"

    def _condition(
        self, kind: str, ok: bool, reason: str = "", message: str = ""
    ) -> dict[str, Any]:
        status = "True" if ok else "False"
        previous = self._transitions.get(kind)
        since = previous[1] if previous and previous[0] == status else now()
        self._transitions[kind] = (status, since)
        condition = {
            "type": kind,
            "status": status,
            "lastTransitionTime": since,
            "lastProbeTime": None,
        }
        if not ok and reason:
            condition |= {"reason": reason, "message": message}
        return condition

    def status(self) -> dict[str, Any]:
        phase = self.phase()
        unready = [c.name for c in self.main if not c.ready]
        uninitialized = [c.name for c in self.init if c.exit_code != 0]
        terminal = phase in ("Succeeded", "Failed")
        ready = not unready and not terminal
        conditions = [
            self._condition("PodReadyToStartContainers", self.sandbox_ready),
            self._condition(
                "Initialized",
                self.initialized,
                "ContainersNotInitialized",
                f"containers with incomplete status: [{' '.join(uninitialized)}]",
            ),
            self._condition(
                "ContainersReady",
                ready,
                "PodCompleted" if terminal else "ContainersNotReady",
                "" if terminal else f"containers with unready status: [{' '.join(unready)}]",
            ),
            self._condition(
                "Ready",
                ready,
                "PodCompleted" if terminal else "ContainersNotReady",
                "" if terminal else f"containers with unready status: [{' '.join(unready)}]",
            ),
        ]
        kept = [
            c
            for c in (self.pod.get("status") or {}).get("conditions") or []
            if c["type"] not in _CONDITIONS
        ]
        status: dict[str, Any] = {
            "phase": phase,
            "startTime": self.started_at,
            "conditions": kept + conditions,
            "initContainerStatuses": [c.status() for c in self.init] or None,
            "containerStatuses": [c.status() for c in self.main],
            "qosClass": (self.pod.get("status") or {}).get("qosClass"),
            **self._addresses(),
        }
        if self.failure is not None:
            status |= {"reason": self.failure.reason, "message": self.failure.message}
        return status

    async def _write_status(self) -> None:
        status = self.status()
        comparable = {k: v for k, v in status.items() if k != "conditions"} | {
            "conditions": [(c["type"], c["status"]) for c in status["conditions"]]
        }
        if comparable == self._written:
            return
        try:
            await asyncio.to_thread(self.node.api.patch_pod_status, self.pod, status)
            self._written = comparable
        except Exception as error:
            log.info("%s: status not written: %s", self.key, error)

    async def _write_status_loop(self) -> None:
        """One write at a time, in order; ends after the write that follows ``_closed``."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._write_status()
            if self._closed and not self._dirty.is_set():
                return
            await asyncio.sleep(0.05)  # coalesce a burst of changes into one write
