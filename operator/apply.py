"""Talking to the API server: idempotent apply, status patches, events.

``ensure`` is compare-then-apply. Each desired object is stamped with a digest of itself
(``tessera.dev/applied-hash``); when the live object carries the same digest *and* still
holds every desired field, nothing is sent, so an operator restart or a resync makes no
writes and no resourceVersion moves. Otherwise the object is written with server-side apply
(field manager ``tessera-operator``, forced), which also removes fields the operator set
before and no longer wants.

The client is the official ``kubernetes`` package used at its lowest level (raw JSON in and
out), so there is one code path for every kind. Its calls block; the handlers run them in
threads. API errors become ``KubeError`` here, where they enter.
"""

from __future__ import annotations

import collections
import datetime
import json
import logging
import os
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal
from urllib.parse import quote, urlencode

from tessera.operator.render import ANNOTATION_APPLIED_HASH, MANAGED_BY, content_hash

log = logging.getLogger(__name__)

FIELD_MANAGER = MANAGED_BY
AUTOSCALER_FIELD_MANAGER = f"{MANAGED_BY}-autoscaler"
POOL_SIZE = 32

# kind -> (path prefix, plural); namespaced kinds only.
_KINDS: dict[tuple[str, str], tuple[str, str]] = {
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments"),
    ("v1", "Service"): ("/api/v1", "services"),
    ("v1", "PersistentVolumeClaim"): ("/api/v1", "persistentvolumeclaims"),
    ("v1", "Pod"): ("/api/v1", "pods"),
    ("v1", "Event"): ("/api/v1", "events"),
    ("batch/v1", "Job"): ("/apis/batch/v1", "jobs"),
    ("tessera.dev/v1alpha1", "ImageModel"): ("/apis/tessera.dev/v1alpha1", "imagemodels"),
}


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP status (0 when none came back)."""

    def __init__(self, message: str, status: int = 0, reason: str = "", detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        # The API server's own words, without the request line.
        self.detail = detail or message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def invalid(self) -> bool:
        """The API server refused the object itself: retrying the same one cannot help.

        Server-side apply reports a field unknown to the schema as a 500 ("failed to create
        typed patch object"), not as the 422 of an invalid value.
        """
        return self.status in (400, 422) or (
            self.status == 500 and "typed patch object" in str(self)
        )


def resource_path(
    api_version: str, kind: str, namespace: str, name: str | None = None, subresource: str = ""
) -> str:
    try:
        prefix, plural = _KINDS[(api_version, kind)]
    except KeyError:
        raise ValueError(f"no API path known for {api_version} {kind}") from None
    path = f"{prefix}/namespaces/{quote(namespace)}/{plural}"
    if name is not None:
        path += f"/{quote(name)}"
    if subresource:
        path += f"/{subresource}"
    return path


def path_of(obj: Mapping[str, Any], subresource: str = "") -> str:
    meta = obj["metadata"]
    return resource_path(
        obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"], subresource
    )


class Kube:
    """A thin, thread-safe JSON client for the API server (kubeconfig or in-cluster).

    The ``kubernetes`` package only loads the credentials (kubeconfig, exec plugins,
    in-cluster token with rotation); requests go through one urllib3 pool.
    """

    def __init__(self, configuration: Any | None = None) -> None:
        import urllib3

        if configuration is None:
            configuration = load_configuration()
        self._config = configuration
        ssl: dict[str, Any] = {
            "cert_reqs": "CERT_REQUIRED" if configuration.verify_ssl else "CERT_NONE",
            "ca_certs": configuration.ssl_ca_cert,
            "cert_file": configuration.cert_file,
            "key_file": configuration.key_file,
        }
        if getattr(configuration, "ca_cert_data", None):
            ssl["ca_cert_data"] = configuration.ca_cert_data
        if getattr(configuration, "tls_server_name", None):
            ssl["server_hostname"] = configuration.tls_server_name
        # Applies and status writes for many models run at once: one connection per thread.
        self._pool = urllib3.PoolManager(maxsize=POOL_SIZE, **ssl)
        self._host = str(configuration.host).rstrip("/")
        # Requests by kind of call ("PATCH status"), for the log and the benchmark.
        self.calls: collections.Counter[str] = collections.Counter()
        self.seconds: dict[str, float] = collections.defaultdict(float)

    def _headers(self, content_type: str) -> dict[str, str]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        for setting in self._config.auth_settings().values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[setting["key"]] = setting["value"]
        basic = getattr(self._config, "username", None)
        if basic and "authorization" not in headers:
            headers["authorization"] = self._config.get_basic_auth_token()
        return headers

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Sequence[tuple[str, str]] = (),
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        import urllib3

        url = self._host + path + (f"?{urlencode(list(query))}" if query else "")
        kind = f"{method} {_plural(path)}{'/status' if path.endswith('/status') else ''}"
        self.calls[kind] += 1
        data = None if body is None else json.dumps(body).encode()
        started = time.monotonic()
        try:
            response = self._pool.request(
                method,
                url,
                body=data,
                headers=self._headers(content_type),
                timeout=urllib3.Timeout(connect=10, read=60),
                retries=False,
            )
        except urllib3.exceptions.HTTPError as error:
            raise KubeError(f"{method} {path}: {error}") from error
        self.seconds[kind] += time.monotonic() - started
        if response.status >= 400:
            raise _translate(method, path, response.status, response.reason, response.data)
        return json.loads(response.data) if response.data else {}

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", path)
        except KubeError as error:
            if error.not_found:
                return None
            raise

    def list(
        self, api_version: str, kind: str, namespace: str, selector: str
    ) -> list[dict[str, Any]]:
        path = resource_path(api_version, kind, namespace)
        return list(self.request("GET", path, query=[("labelSelector", selector)]).get("items", []))

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply, forced: the operator owns every field it sends."""
        return self.request(
            "PATCH",
            path_of(obj),
            body=dict(obj),
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    def scale(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        """A Deployment's replicas through its scale subresource (the autoscaler's one write
        to it, under a field manager of its own); returns the Scale."""
        return self.request(
            "PATCH",
            resource_path("apps/v1", "Deployment", namespace, name, "scale"),
            body={"spec": {"replicas": replicas}},
            query=[("fieldManager", AUTOSCALER_FIELD_MANAGER)],
            content_type="application/merge-patch+json",
        )

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        try:
            self.request("DELETE", resource_path(api_version, kind, namespace, name), body=body)
        except KubeError as error:
            if not error.not_found:
                raise

    def patch_status(self, obj: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON merge patch of ``status`` (lists, such as conditions, are replaced whole)."""
        return self.request(
            "PATCH",
            path_of(obj, "status"),
            body={"status": dict(status)},
            content_type="application/merge-patch+json",
        )

    def post_event(
        self,
        regarding: Mapping[str, Any],
        *,
        type: Literal["Normal", "Warning"],
        reason: str,
        message: str,
    ) -> None:
        """A core/v1 Event about ``regarding`` (what ``kubectl describe`` shows)."""
        meta = regarding["metadata"]
        now = datetime.datetime.now(datetime.UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": regarding["apiVersion"],
                "kind": regarding["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid", ""),
            },
            "type": type,
            "reason": reason,
            # The API server refuses messages over 1 KiB.
            "message": message[:1000],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": f"tessera.dev/{FIELD_MANAGER}",
            "reportingInstance": socket.gethostname()[:128],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        self.request("POST", resource_path("v1", "Event", meta["namespace"]), body=event)


def _plural(path: str) -> str:
    parts = path.split("/")
    return parts[parts.index("namespaces") + 2] if "namespaces" in parts else parts[-1]


def load_configuration() -> Any:
    """The cluster's address and credentials: in-cluster first, then the kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(context=os.environ.get("TESSERA_KUBE_CONTEXT"))  # type: ignore[no-untyped-call]
    return client.Configuration.get_default_copy()


def _translate(method: str, path: str, status: int, reason: str | None, data: bytes) -> KubeError:
    """An API error response as a KubeError carrying the server's own message."""
    message, why = (reason or ""), (reason or "")
    try:
        payload = json.loads(data)
        message = payload.get("message") or message
        why = payload.get("reason") or why
    except (TypeError, ValueError, AttributeError):
        pass
    return KubeError(
        f"{method} {path}: {status} {message}", status=status, reason=why, detail=message
    )


# -- comparing desired with live ----------------------------------------------------------

_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")
_SUFFIXES = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
}


def quantity(value: Any) -> Decimal | None:
    """A Kubernetes quantity ("500m", "48Gi", 8) as a number, or None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(str(value))
    match = _QUANTITY.match(str(value))
    if not match or match.group(2) not in _SUFFIXES:
        return None
    try:
        return Decimal(match.group(1)) * _SUFFIXES[match.group(2)]
    except InvalidOperation:
        return None


def _same_leaf(want: Any, have: Any) -> bool:
    if want == have:
        return True
    # The API server rewrites quantities in canonical form ("0.5" -> "500m").
    if isinstance(want, str | int) and isinstance(have, str | int):
        a, b = quantity(want), quantity(have)
        return a is not None and a == b
    return False


def differences(want: Any, have: Any, path: str = "") -> list[str]:
    """Paths where ``have`` lacks or contradicts ``want`` (fields only in ``have`` are fine:
    the API server adds defaults)."""
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            return [path or "."]
        found: list[str] = []
        for key, value in want.items():
            found += differences(value, have.get(key), f"{path}.{key}")
        return found
    if isinstance(want, list):
        if not isinstance(have, list) or len(want) != len(have):
            return [path]
        found = []
        for index, (a, b) in enumerate(zip(want, have, strict=True)):
            found += differences(a, b, f"{path}[{index}]")
        return found
    if want is None:
        return []
    return [] if _same_leaf(want, have) else [path]


def stamped(desired: Mapping[str, Any]) -> dict[str, Any]:
    """The desired object with its own digest in an annotation."""
    obj = json.loads(json.dumps(desired))
    digest = content_hash(obj)
    obj["metadata"].setdefault("annotations", {})[ANNOTATION_APPLIED_HASH] = digest
    return obj  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Outcome:
    """What ``ensure`` did to one object, and the object as the API server now has it."""

    action: Literal["created", "updated", "unchanged"]
    obj: dict[str, Any]
    changed: list[str] = field(default_factory=list)

    @property
    def wrote(self) -> bool:
        return self.action != "unchanged"


def needs_write(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> list[str]:
    """Why ``desired`` (stamped) must be applied over ``live``; empty when it need not."""
    if live is None:
        return ["(absent)"]
    want_hash = desired["metadata"].get("annotations", {}).get(ANNOTATION_APPLIED_HASH)
    have_hash = (live.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_APPLIED_HASH)
    drift = differences(
        {k: v for k, v in desired.items() if k != "status"},
        live,
    )
    if want_hash != have_hash:
        # Report what changed in the spec, not the digest that says so.
        drift = [p for p in drift if ANNOTATION_APPLIED_HASH not in p] or [
            f".metadata.annotations.{ANNOTATION_APPLIED_HASH}"
        ]
    return drift


def ensure(
    kube: Kube,
    desired: Mapping[str, Any],
    live: Mapping[str, Any] | None = None,
    *,
    absent: bool = False,
) -> Outcome:
    """Make the live object match ``desired``, writing only when something differs.

    ``live`` may be passed when the caller already holds a fresh copy; otherwise it is read,
    unless the caller knows the object is ``absent`` (then it is applied straight away: if it
    did exist after all, server-side apply still converges it).
    """
    obj = stamped(desired)
    if live is None and not absent:
        live = kube.get(path_of(obj))
    changed = needs_write(obj, live)
    if not changed:
        assert live is not None
        return Outcome("unchanged", dict(live))
    applied = kube.apply(obj)
    return Outcome("created" if live is None and _fresh(applied) else "updated", applied, changed)


def _fresh(obj: Mapping[str, Any]) -> bool:
    """Whether an apply response looks like a new object (only our manager has touched it)."""
    meta = obj.get("metadata", {})
    managers = meta.get("managedFields") or []
    return len(managers) <= 1 and int(meta.get("generation") or 1) == 1
