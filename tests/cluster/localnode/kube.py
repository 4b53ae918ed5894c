"""The API calls a node agent makes, as the cluster's admin.

Requests go through ``tessera.operator.apply.Kube`` (the ``kubernetes`` package's
credentials, raw JSON in and out), the same client the operator uses, so there is one way
of talking to the API server in this repository. Only the pod watch uses the ``kubernetes``
package's ``Watch``, because ``Kube`` reads whole responses and a watch never ends.

A real kubelet authenticates as ``system:node:<name>`` and the Node authorizer limits it
to its own node's objects; this agent uses the admin kubeconfig the harness hands it.
"""

from __future__ import annotations

import base64
import datetime
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from kubernetes import client, config, watch

from tessera.operator.apply import Kube, KubeError

__all__ = ["KubeError", "NodeApi", "now"]


def now() -> str:
    """An RFC 3339 timestamp in the API's second precision."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    """A MicroTime, as a Lease's renewTime wants."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class NodeApi:
    """Reads, status writes and the pod watch of one node."""

    def __init__(self, kubeconfig: Path) -> None:
        configuration = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig), client_configuration=configuration
        )
        self.kube = Kube(configuration)
        self._core = client.CoreV1Api(client.ApiClient(configuration))
        server = urlsplit(configuration.host)
        self.server_host = server.hostname or "127.0.0.1"
        self.server_port = server.port or 443

    # -- reads --------------------------------------------------------------------------

    def config_map(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """A ConfigMap's keys (``data`` and ``binaryData``) as bytes, or None if absent."""
        found = self.kube.get(f"/api/v1/namespaces/{quote(namespace)}/configmaps/{quote(name)}")
        if found is None:
            return None
        values = {k: v.encode() for k, v in (found.get("data") or {}).items()}
        values |= {k: base64.b64decode(v) for k, v in (found.get("binaryData") or {}).items()}
        return values

    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        found = self.kube.get(f"/api/v1/namespaces/{quote(namespace)}/secrets/{quote(name)}")
        if found is None:
            return None
        return {k: base64.b64decode(v) for k, v in (found.get("data") or {}).items()}

    def claim_volume(self, namespace: str, claim: str) -> dict[str, Any] | None:
        """The PersistentVolume bound to a claim, or None while it is unbound or absent."""
        pvc = self.kube.get(
            f"/api/v1/namespaces/{quote(namespace)}/persistentvolumeclaims/{quote(claim)}"
        )
        volume = (pvc or {}).get("spec", {}).get("volumeName")
        return self.kube.get(f"/api/v1/persistentvolumes/{quote(volume)}") if volume else None

    def service_endpoints(
        self,
    ) -> tuple[dict[tuple[str, str], list[str]], dict[tuple[str, int], int]]:
        """Cluster-wide, from the EndpointSlices and the Services: (namespace, Service) -> the
        addresses of its ready endpoints, and (endpoint address, Service port) -> the target
        port there, wherever the two differ (what kube-proxy would map)."""
        found: dict[tuple[str, str], list[str]] = {}
        ports: dict[tuple[str, int], int] = {}
        service_ports: dict[tuple[str, str], dict[str, int]] = {}
        for service in (self.kube.get("/api/v1/services") or {}).get("items") or []:
            meta = service["metadata"]
            service_ports[(meta["namespace"], meta["name"])] = {
                port.get("name") or "": port["port"] for port in service["spec"].get("ports") or []
            }
        listing = self.kube.get("/apis/discovery.k8s.io/v1/endpointslices") or {}
        for piece in listing.get("items") or []:
            service = (piece["metadata"].get("labels") or {}).get("kubernetes.io/service-name")
            if not service:
                continue
            key = (piece["metadata"]["namespace"], service)
            addresses = found.setdefault(key, [])
            ready = [
                address
                for endpoint in piece.get("endpoints") or []
                # An absent condition means ready (the API's rule for consumers).
                if (endpoint.get("conditions") or {}).get("ready") is not False
                for address in endpoint.get("addresses") or []
            ]
            addresses += ready
            for port in piece.get("ports") or []:
                exposed = service_ports.get(key, {}).get(port.get("name") or "")
                if exposed is not None and port.get("port") and exposed != port["port"]:
                    ports |= {(address, exposed): port["port"] for address in ready}
        return {key: sorted(set(value)) for key, value in found.items() if value}, ports

    def token(
        self, pod: dict[str, Any], audiences: list[str], seconds: int
    ) -> tuple[str, datetime.datetime]:
        """A token for the pod's ServiceAccount, bound to the pod (TokenRequest API).

        Bound to the pod as the kubelet's are: it stops working once the pod is deleted.
        """
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": audiences,
                "expirationSeconds": seconds,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        path = (
            f"/api/v1/namespaces/{quote(meta['namespace'])}/serviceaccounts/{quote(account)}/token"
        )
        status = self.kube.request("POST", path, body=body)["status"]
        expires = datetime.datetime.fromisoformat(status["expirationTimestamp"])
        return status["token"], expires

    # -- pods ---------------------------------------------------------------------------

    def patch_pod_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        self.kube.patch_status({"apiVersion": "v1", "kind": "Pod", **pod}, status)

    def delete_pod_now(self, pod: dict[str, Any]) -> None:
        """Remove a terminated pod's object, as a kubelet does once its containers are gone."""
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": meta["uid"]},
        }
        path = f"/api/v1/namespaces/{quote(meta['namespace'])}/pods/{quote(meta['name'])}"
        try:
            self.kube.request("DELETE", path, body=body)
        except KubeError as error:
            if error.status not in (404, 409):  # gone already, or a successor of the name
                raise

    def watch_pods(
        self,
        node: str,
        on_pods: Callable[[list[dict[str, Any]]], None],
        on_event: Callable[[str, dict[str, Any]], None],
        stop: threading.Event,
    ) -> None:
        """List, then watch, the pods bound to ``node`` until ``stop`` is set (blocking).

        ``on_pods`` gets every full listing (so pods deleted while the watch was down are
        noticed); ``on_event`` gets each ADDED/MODIFIED/DELETED pod. Any watch failure,
        410 Gone included, relists.
        """
        selector = f"spec.nodeName={node}"
        while not stop.is_set():
            try:
                listing = self.kube.request(
                    "GET", "/api/v1/pods", query=[("fieldSelector", selector)]
                )
                on_pods(listing.get("items", []))
                version = listing["metadata"]["resourceVersion"]
                for event in self._watch(selector, version, stop):
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        on_event(event["type"], event["object"])
            except Exception:
                stop.wait(1)

    def _watch(self, selector: str, version: str, stop: threading.Event) -> Iterator[Any]:
        stream = watch.Watch()
        try:
            for event in stream.stream(
                self._core.list_pod_for_all_namespaces,
                field_selector=selector,
                resource_version=version,
                timeout_seconds=60,
                deserialize=False,
            ):
                if stop.is_set():
                    return
                yield event
        finally:
            stream.stop()

    # -- the node -----------------------------------------------------------------------

    def register_node(self, node: dict[str, Any]) -> str:
        """Create the Node (replacing a stale one of the same name); returns its uid."""
        name = node["metadata"]["name"]
        try:
            self.kube.request("DELETE", f"/api/v1/nodes/{quote(name)}")
        except KubeError as error:
            if not error.not_found:
                raise
        created = self.kube.request("POST", "/api/v1/nodes", body=node)
        return str(created["metadata"]["uid"])

    def patch_node_status(self, name: str, status: dict[str, Any]) -> None:
        self.kube.request(
            "PATCH",
            f"/api/v1/nodes/{quote(name)}/status",
            body={"status": status},
            content_type="application/strategic-merge-patch+json",
        )

    def renew_lease(self, node: str, uid: str, seconds: int) -> None:
        """Create or renew ``kube-node-lease/<node>``: the node lifecycle controller's heartbeat."""
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{quote(node)}"
        spec = {"holderIdentity": node, "leaseDurationSeconds": seconds, "renewTime": micro_now()}
        try:
            self.kube.request(
                "PATCH", path, body={"spec": spec}, content_type="application/merge-patch+json"
            )
        except KubeError as error:
            if not error.not_found:
                raise
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": node,
                    "namespace": "kube-node-lease",
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}
                    ],
                },
                "spec": spec,
            }
            self.kube.request(
                "POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", body=lease
            )
