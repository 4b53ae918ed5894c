"""Why a pod cannot (yet) run on a local node; each becomes a status the pod shows."""

from __future__ import annotations


class CannotRunHere(Exception):
    """The pod asks for something a local node cannot give: it fails with this message.

    ``reason`` is the CamelCase reason written to the pod's status.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ConfigNotReady(Exception):
    """A ConfigMap, Secret or claim the pod needs is missing: retry, as the kubelet does
    (the container waits with ``CreateContainerConfigError``)."""
