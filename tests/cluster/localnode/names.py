"""Service names and listening addresses for pods on local nodes, with no cluster DNS.

A kubelet gives every container an ``/etc/hosts`` of its own (localhost, the pod's
hostname); the agent's also names every Service of the cluster by the addresses of its ready
endpoints: ``NAME.NAMESPACE.svc.cluster.local``, ``NAME.NAMESPACE.svc``, ``NAME.NAMESPACE``
and, in the pod's own namespace, ``NAME``. That is what cluster DNS answers for a headless
Service; for a ClusterIP Service the agent makes the Service's port answer at each endpoint
(``serviceports``), so a client dials ``NAME:PORT`` as it would through kube-proxy. The
file is bound at ``/etc/hosts`` in the container's mount namespace and rewritten in place
(the bind holds its inode) whenever the endpoints change, as DNS answers would.

Pods share one network here, so a process told to listen on every address (``0.0.0.0``)
would take its port for every pod; the agent gives it its pod's address instead, which is
what the wildcard means inside a pod's own network namespace (loopback aside).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

CLUSTER_DOMAIN = "cluster.local"
HOSTS_PATH = "/etc/hosts"
_WILDCARD = re.compile(r"(?<![\w.])0\.0\.0\.0(?![\w.])")

# (namespace, service name) -> the addresses of its ready endpoints
ServiceAddresses = Mapping[tuple[str, str], list[str]]


def hosts_file(pod: str, address: str, namespace: str, services: ServiceAddresses) -> str:
    lines = [
        "# Kubernetes-managed hosts file (local node agent).",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{address}\t{pod}",
    ]
    for (service_namespace, name), addresses in sorted(services.items()):
        names = [f"{name}.{service_namespace}.svc.{CLUSTER_DOMAIN}"]
        names += [f"{name}.{service_namespace}.svc", f"{name}.{service_namespace}"]
        if service_namespace == namespace:
            names.append(name)
        lines += [f"{each}\t{' '.join(names)}" for each in sorted(addresses)]
    return "\n".join(lines) + "\n"


def write_in_place(path: Path, text: str) -> bool:
    """Write ``text`` unless the file holds it already; the same inode, so a bind mount of
    the file sees the new content. Returns whether it wrote."""
    if path.exists() and path.read_text() == text:
        return False
    with open(path, "r+" if path.exists() else "w") as out:
        out.write(text)
        out.truncate()
    return True


def pin_wildcard(value: str, address: str) -> str:
    """``value`` with the IPv4 wildcard address (``--host 0.0.0.0``,
    ``http://0.0.0.0:8081/healthz``) replaced by the pod's own address."""
    return _WILDCARD.sub(address, value)
