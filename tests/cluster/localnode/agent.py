"""The node agent: one local node's kubelet, as a process of its own.

It registers the Node (labels, taints, capacity, addresses), keeps it Ready (a Lease
renewed every 10 s and a status heartbeat every minute, what the node lifecycle controller
watches), and runs every pod the scheduler binds to it (``pods.PodRunner``). Deleting a
pod stops its containers within its grace period and then removes the object, as the
kubelet does; SIGTERM to the agent stops every container it started and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import httpx

from tests.cluster.harness import node_object

from .addresses import AddressBlock
from .kube import NodeApi, now
from .pods import NodeContext, PodRunner
from .serviceports import ServicePorts
from .volumes import mount_namespaces_work

log = logging.getLogger(__name__)

LEASE_SECONDS = 40
LEASE_RENEW_EVERY = 10.0
STATUS_EVERY = 60.0
# How often the Services' endpoints are read for the pods' hosts files.
NAMES_EVERY = 1.0
# When the agent stops, no container waits longer than this for its grace period.
SHUTDOWN_GRACE_CAP = 10.0
# What every container's PATH starts with: this Python's folder first, so `tessera` and
# `python` are the project's own, as a Tessera image would have them.
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _conditions(since: str) -> list[dict[str, Any]]:
    """A healthy node's conditions, heartbeat now, held ``since`` the agent started (while
    the agent runs, its node is Ready; when it stops, the lease expires)."""
    stamp = now()

    def condition(kind: str, status: bool, reason: str, message: str) -> dict[str, Any]:
        return {
            "type": kind,
            "status": "True" if status else "False",
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": since,
        }

    return [
        condition("Ready", True, "KubeletReady", "local node agent is posting ready status"),
        condition("MemoryPressure", False, "KubeletHasSufficientMemory", "local node"),
        condition("DiskPressure", False, "KubeletHasNoDiskPressure", "local node"),
        condition("PIDPressure", False, "KubeletHasSufficientPID", "local node"),
    ]


class NodeAgent:
    """One local node and the pods bound to it."""

    def __init__(
        self,
        kubeconfig: Path,
        name: str,
        state_dir: Path,
        address_locks: Path,
        h100: bool,
        backoff_seconds: float,
    ) -> None:
        self.name = name
        self.state_dir = state_dir
        self.h100 = h100
        self.backoff_seconds = backoff_seconds
        self.api = NodeApi(kubeconfig)
        self.addresses = AddressBlock(address_locks)
        self.runners: dict[str, PodRunner] = {}
        # Each pod's life (PodRunner.run), and the removal of each deleted pod.
        self.lives: dict[str, asyncio.Task[None]] = {}
        self.removals: dict[str, asyncio.Task[None]] = {}
        self.service_ports = ServicePorts()
        self._stop = threading.Event()
        self.since = now()

    def _node(self) -> dict[str, Any]:
        node = node_object(self.name, gpu=self.h100, local=True)
        node["status"] |= {
            "addresses": [
                {"type": "InternalIP", "address": self.addresses.node_address},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": "",
                "containerRuntimeVersion": "local://processes",
                "kernelVersion": platform.release(),
                "kubeProxyVersion": "",
                "kubeletVersion": "local-node-agent",
                "machineID": "",
                "operatingSystem": "linux",
                "osImage": platform.platform(),
                "systemUUID": "",
            },
        }
        return node

    def base_env(self) -> dict[str, str]:
        """What every container gets before its own env: PATH and the API server's address
        (the real one: this machine has no kube-proxy to reach the ``kubernetes`` Service's
        ClusterIP)."""
        host, port = self.api.server_host, str(self.api.server_port)
        return {
            "PATH": f"{Path(sys.executable).parent}:{_SYSTEM_PATH}",
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
            "KUBERNETES_PORT": f"tcp://{host}:{port}",
        }

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        # Ready only once the lease exists: whoever waits for Ready may then rely on both.
        uid = await asyncio.to_thread(self.api.register_node, self._node())
        await asyncio.to_thread(self.api.renew_lease, self.name, uid, LEASE_SECONDS)
        status = {"conditions": _conditions(self.since)}
        await asyncio.to_thread(self.api.patch_node_status, self.name, status)
        log.info("node %s registered (pods in %s)", self.name, self.addresses.network)
        async with httpx.AsyncClient() as http:
            self.context = NodeContext(
                name=self.name,
                address=self.addresses.node_address,
                api=self.api,
                state_dir=self.state_dir,
                base_env=self.base_env(),
                backoff_seconds=self.backoff_seconds,
                http=http,
                mount_namespaces=mount_namespaces_work(),
                services={},
            )
            if not self.context.mount_namespaces:
                log.warning("no mount namespaces: service-account folders only by rewritten path")
            heartbeat = asyncio.create_task(self._heartbeat(uid))
            names = asyncio.create_task(self._names())
            watcher = threading.Thread(
                target=self.api.watch_pods,
                args=(
                    self.name,
                    lambda pods: loop.call_soon_threadsafe(self._sync, pods),
                    lambda kind, pod: loop.call_soon_threadsafe(self._on_event, kind, pod),
                    self._stop,
                ),
                daemon=True,
            )
            watcher.start()
            await stopping.wait()
            log.info("stopping: every container gets SIGTERM")
            self._stop.set()
            heartbeat.cancel()
            names.cancel()
            await self.service_ports.close()
            await asyncio.gather(
                *(
                    runner.terminate(min(runner.grace, SHUTDOWN_GRACE_CAP))
                    for runner in self.runners.values()
                ),
                return_exceptions=True,
            )
        self.addresses.close()

    async def _heartbeat(self, uid: str) -> None:
        """The lease every 10 s, the status every minute (both were written at start)."""
        beats = 0
        while True:
            await asyncio.sleep(LEASE_RENEW_EVERY)
            beats += 1
            try:
                await asyncio.to_thread(self.api.renew_lease, self.name, uid, LEASE_SECONDS)
                if beats % int(STATUS_EVERY / LEASE_RENEW_EVERY) == 0:
                    status = {"conditions": _conditions(self.since)}
                    await asyncio.to_thread(self.api.patch_node_status, self.name, status)
            except Exception as error:
                log.warning("heartbeat failed: %s", error)

    async def _names(self) -> None:
        """Keep every pod's hosts file naming the Services' ready endpoints, and each
        Service's port answering at this node's endpoints (``serviceports``)."""
        services = self.context.services
        while True:
            try:
                current, ports = await asyncio.to_thread(self.api.service_endpoints)
                # Its endpoint is the address the API server advertises; pods reach it here.
                current[("default", "kubernetes")] = [self.api.server_host]
            except Exception as error:
                log.warning("reading the Services' endpoints failed: %s", error)
            else:
                if current != services:
                    services.clear()
                    services.update(current)
                    for runner in list(self.runners.values()):
                        await asyncio.to_thread(runner.write_hosts, services)
                here = {runner.address for runner in self.runners.values()}
                await self.service_ports.sync(
                    {key: target for key, target in ports.items() if key[0] in here}
                )
            await asyncio.sleep(NAMES_EVERY)

    # -- pods ---------------------------------------------------------------------------

    def _sync(self, pods: list[dict[str, Any]]) -> None:
        """A full listing: start what is new, and stop what vanished while unwatched."""
        present = {pod["metadata"]["uid"] for pod in pods}
        for pod in pods:
            self._on_event("ADDED", pod)
        for uid in list(self.runners):
            if uid not in present:
                self._on_event("DELETED", self.runners[uid].pod)

    def _on_event(self, kind: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        runner = self.runners.get(uid)
        if kind == "DELETED":
            if runner is not None and uid not in self.removals:
                self.removals[uid] = asyncio.create_task(
                    self._remove(runner, grace=0, delete=False)
                )
            return
        if runner is not None:
            runner.update(pod)
        deleting = pod["metadata"].get("deletionTimestamp") is not None
        if runner is None:
            if deleting:
                self.removals[uid] = asyncio.create_task(
                    asyncio.to_thread(self.api.delete_pod_now, pod)
                )
                return
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                return
            runner = PodRunner(pod, self.context, self.addresses.allocate())
            self.runners[uid] = runner
            log.info("running pod %s at %s", runner.key, runner.address)
            self.lives[uid] = asyncio.create_task(runner.run())
        elif deleting and uid not in self.removals:
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            self.removals[uid] = asyncio.create_task(self._remove(runner, grace=grace, delete=True))

    async def _remove(self, runner: PodRunner, grace: float | None, delete: bool) -> None:
        await runner.terminate(grace)
        if delete:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.api.delete_pod_now, runner.pod)
        runner.remove_files()
        log.info("pod %s removed", runner.key)


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"%(asctime)s %(levelname)s {os.getpid()} %(name)s: %(message)s",
    )
    # One line per probe is noise; failures are logged by the containers' own code.
    logging.getLogger("httpx").setLevel(logging.WARNING)
