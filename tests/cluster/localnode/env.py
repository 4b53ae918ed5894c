"""A container's environment, resolved as the kubelet resolves it.

Order and precedence follow the kubelet: ``envFrom`` sources first (later ones win), then
``env`` entries in order; ``$(NAME)`` in a value expands to a variable defined before it
(``$$`` is a literal ``$``; an unknown name is left as written). ``command`` and ``args``
expand against the finished environment.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .errors import CannotRunHere, ConfigNotReady

_FIELD_IN_MAP = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class ConfigSource(Protocol):
    """Where ConfigMaps and Secrets come from (the API server, in the agent)."""

    def config_map(self, namespace: str, name: str) -> dict[str, bytes] | None: ...

    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None: ...


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion (k8s.io/kubernetes third_party/forked/golang/expansion)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            if text[i + 1] == "$":
                out.append("$")
                i += 2
                continue
            if text[i + 1] == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(variables.get(name, text[i : end + 1]))
                    i = end + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """A downward API ``fieldRef`` of the pod (the paths the kubelet supports)."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
    simple: dict[str, Any] = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": status.get("hostIP", ""),
        "status.podIP": status.get("podIP", ""),
        "status.hostIPs": ",".join(ip["ip"] for ip in status.get("hostIPs", [])),
        "status.podIPs": ",".join(ip["ip"] for ip in status.get("podIPs", [])),
    }
    if path in simple:
        return str(simple[path])
    if path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
    match = _FIELD_IN_MAP.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise CannotRunHere("UnsupportedField", f"fieldRef {path!r} is not supported on local nodes")


def _key_value(
    source: ConfigSource, namespace: str, kind: str, ref: Mapping[str, Any]
) -> str | None:
    read = source.config_map if kind == "configMapKeyRef" else source.secret
    values = read(namespace, ref["name"])
    optional = bool(ref.get("optional"))
    what = "ConfigMap" if kind == "configMapKeyRef" else "Secret"
    if values is None:
        if optional:
            return None
        raise ConfigNotReady(f"{what} {namespace}/{ref['name']} not found")
    if ref["key"] not in values:
        if optional:
            return None
        raise ConfigNotReady(f"{what} {namespace}/{ref['name']} has no key {ref['key']!r}")
    return values[ref["key"]].decode()


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    source: ConfigSource,
    base: Mapping[str, str],
    localize: Callable[[str], str] = str,
) -> dict[str, str]:
    """``base`` (PATH, service host...), then ``envFrom``, then ``env``, expanded in order.

    ``localize`` maps each value the pod declares (not ``base``'s, which are this
    machine's own) onto local folders (``volumes.localize``).
    """
    namespace = pod["metadata"]["namespace"]
    env = dict(base)
    for item in container.get("envFrom") or []:
        ref = item.get("configMapRef") or item.get("secretRef")
        read = source.config_map if "configMapRef" in item else source.secret
        values = read(namespace, ref["name"])
        if values is None:
            if ref.get("optional"):
                continue
            kind = "ConfigMap" if "configMapRef" in item else "Secret"
            raise ConfigNotReady(f"{kind} {namespace}/{ref['name']} not found")
        prefix = item.get("prefix", "")
        env |= {prefix + k: localize(v.decode()) for k, v in values.items()}
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = localize(expand(item.get("value", ""), env))
            continue
        value_from = item["valueFrom"]
        if "fieldRef" in value_from:
            env[name] = field_value(pod, value_from["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in value_from or "secretKeyRef" in value_from:
            kind = "configMapKeyRef" if "configMapKeyRef" in value_from else "secretKeyRef"
            value = _key_value(source, namespace, kind, value_from[kind])
            if value is not None:
                env[name] = localize(value)
        else:
            raise CannotRunHere(
                "UnsupportedEnv",
                f"env {name!r} of container {container['name']!r}: only value, fieldRef, "
                "configMapKeyRef and secretKeyRef are supported on local nodes",
            )
    return env
