"""A pod's volumes as local folders, and paths inside the container mapped onto them.

A process here shares this machine's filesystem, so a volume cannot appear at its
``mountPath``. Each volume is a folder instead, and every mount path that appears in a
``command``/``args`` item, an env value the pod declares, ``workingDir`` or an exec probe's
command (shell scripts included, see ``localize``) is rewritten to the folder. A path the
program builds itself, from a mount path it was not given (such as a library's hard-coded
default), is not rewritten: that is the one way local pods see a different filesystem
than real ones. The service-account folder is the exception, because every in-cluster
client hard-codes its path: it is also bound there (``with_bound_paths``).

Kinds: ``emptyDir`` (a fresh folder; ``medium: Memory`` is a plain folder too),
``persistentVolumeClaim`` (the bound PersistentVolume's ``hostPath``/``local`` path, or a
folder per volume shared by every local pod that mounts it), ``hostPath``, ``configMap``,
``secret``, ``downwardAPI`` and ``projected`` (the service-account token included).
Anything else fails the pod with a message. ConfigMaps, Secrets and tokens are written when
the pod starts; tokens are refreshed before they expire, other files are not re-synced.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from .env import ConfigSource, field_value
from .errors import CannotRunHere, ConfigNotReady

# Where the ServiceAccount admission plugin mounts ``kube-api-access-*`` in every pod.
SERVICE_ACCOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


def mount_namespaces_work() -> bool:
    """Whether this agent may give a process its own mount namespace (root, in practice).

    Then the service-account folder also appears at its real path, where client libraries
    look for it without being told; the mount point itself is created once on this machine
    (an empty folder under /run, a tmpfs).
    """
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True
    )
    if probe.returncode != 0:
        return False
    try:
        Path(SERVICE_ACCOUNT_PATH).mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return True


def with_bound_paths(argv: list[str], binds: Sequence[tuple[Path, str]]) -> list[str]:
    """``argv`` run with each (local path, path in the container) bound read-only there:
    a mount namespace of its own (private propagation, so the host never sees the mounts),
    the binds, then exec (``unshare`` and ``sh`` both exec, so the pid stays the
    container's own)."""
    steps = []
    for index, (_, target) in enumerate(binds, start=1):
        steps += [f'mount --bind "${index}" {target}', f"mount -o remount,bind,ro {target}"]
    script = " && ".join([*steps, f"shift {len(binds)}", 'exec "$@"'])
    command = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script]
    return [*command, "bind", *(str(local) for local, _ in binds), *argv]


# The kubelet rewrites a token once it is 80% through its life.
_TOKEN_REFRESH_FRACTION = 0.8


class VolumeSource(ConfigSource, Protocol):
    """What volumes read from the API server beyond ConfigMaps and Secrets."""

    def claim_volume(self, namespace: str, claim: str) -> dict[str, Any] | None: ...

    def token(self, pod: dict[str, Any], audiences: list[str], seconds: int) -> Any: ...


def _write(folder: Path, relative: str, data: bytes, mode: int | None) -> None:
    """One file, replaced atomically so a reader never sees half of it."""
    target = folder / relative
    if ".." in Path(relative).parts or Path(relative).is_absolute():
        raise CannotRunHere("InvalidVolumePath", f"volume item path {relative!r} escapes it")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    os.chmod(staging, 0o644 if mode is None else mode)
    os.replace(staging, target)


def _write_keys(
    folder: Path,
    values: Mapping[str, bytes] | None,
    source: Mapping[str, Any],
    what: str,
) -> None:
    """A ConfigMap's or Secret's keys as files (all keys, or ``items`` only)."""
    if values is None:
        if source.get("optional"):
            return
        raise ConfigNotReady(f"{what} not found")
    default_mode = source.get("defaultMode")
    items = source.get("items") or [{"key": k, "path": k} for k in values]
    for item in items:
        if item["key"] not in values:
            if source.get("optional"):
                continue
            raise ConfigNotReady(f"{what} has no key {item['key']!r}")
        _write(folder, item["path"], values[item["key"]], item.get("mode", default_mode))


def _write_downward(folder: Path, pod: dict[str, Any], source: Mapping[str, Any]) -> None:
    for item in source.get("items") or []:
        if "fieldRef" not in item:
            raise CannotRunHere(
                "UnsupportedVolume", "downwardAPI items support fieldRef only on local nodes"
            )
        value = field_value(pod, item["fieldRef"]["fieldPath"]).encode()
        _write(folder, item["path"], value, item.get("mode", source.get("defaultMode")))


class PodVolumes:
    """The folders of one pod's volumes, written once, with tokens kept fresh."""

    def __init__(
        self, pod: dict[str, Any], pod_dir: Path, shared_dir: Path, api: VolumeSource
    ) -> None:
        self.pod = pod
        self.root = pod_dir / "volumes"
        self.shared_dir = shared_dir
        self.api = api
        self.paths: dict[str, Path] = {}
        # When the earliest token must be rewritten (time.monotonic()), if any.
        self.refresh_at: float | None = None

    def prepare(self) -> None:
        """Create or fill every volume; ConfigNotReady or CannotRunHere say why not."""
        namespace = self.pod["metadata"]["namespace"]
        for volume in self.pod["spec"].get("volumes") or []:
            name = volume["name"]
            self.paths[name] = self._prepare_one(namespace, name, volume)

    def _prepare_one(self, namespace: str, name: str, volume: Mapping[str, Any]) -> Path:
        folder = self.root / name
        if "emptyDir" in volume:
            folder.mkdir(parents=True, exist_ok=True)
            return folder
        if "hostPath" in volume:
            path = Path(volume["hostPath"]["path"])
            if volume["hostPath"].get("type") == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            return path
        if "persistentVolumeClaim" in volume:
            return self._claim(namespace, volume["persistentVolumeClaim"]["claimName"])
        folder.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            source = volume["configMap"]
            values = self.api.config_map(namespace, source["name"])
            _write_keys(folder, values, source, f"ConfigMap {namespace}/{source['name']}")
        elif "secret" in volume:
            source = volume["secret"]
            values = self.api.secret(namespace, source["secretName"])
            _write_keys(folder, values, source, f"Secret {namespace}/{source['secretName']}")
        elif "downwardAPI" in volume:
            _write_downward(folder, self.pod, volume["downwardAPI"])
        elif "projected" in volume:
            self._write_projected(namespace, folder, volume["projected"])
        else:
            kinds = sorted(set(volume) - {"name"})
            raise CannotRunHere(
                "UnsupportedVolume",
                f"volume {name!r} ({', '.join(kinds)}) cannot be provided on a local node",
            )
        return folder

    def _claim(self, namespace: str, claim: str) -> Path:
        volume = self.api.claim_volume(namespace, claim)
        if volume is None:
            raise ConfigNotReady(f"PersistentVolumeClaim {namespace}/{claim} is not bound")
        spec = volume.get("spec", {})
        local = (spec.get("hostPath") or spec.get("local") or {}).get("path")
        path = Path(local) if local else self.shared_dir / "claims" / volume["metadata"]["name"]
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _write_projected(self, namespace: str, folder: Path, projected: Mapping[str, Any]) -> None:
        default_mode = projected.get("defaultMode")
        for source in projected.get("sources") or []:
            if "serviceAccountToken" in source:
                self._write_token(folder, source["serviceAccountToken"], default_mode)
            elif "configMap" in source:
                ref = source["configMap"]
                values = self.api.config_map(namespace, ref["name"])
                spec = {"defaultMode": default_mode, **ref}
                _write_keys(folder, values, spec, f"ConfigMap {namespace}/{ref['name']}")
            elif "secret" in source:
                ref = source["secret"]
                values = self.api.secret(namespace, ref["name"])
                spec = {"defaultMode": default_mode, **ref}
                _write_keys(folder, values, spec, f"Secret {namespace}/{ref['name']}")
            elif "downwardAPI" in source:
                _write_downward(
                    folder, self.pod, {"defaultMode": default_mode, **source["downwardAPI"]}
                )
            else:
                raise CannotRunHere(
                    "UnsupportedVolume",
                    f"projected source {sorted(source)} cannot be provided on a local node",
                )

    def _write_token(
        self, folder: Path, source: Mapping[str, Any], default_mode: int | None
    ) -> None:
        seconds = int(source.get("expirationSeconds", 3600))
        audiences = [source["audience"]] if source.get("audience") else []
        token, _expires = self.api.token(self.pod, audiences, seconds)
        _write(folder, source["path"], token.encode(), default_mode)
        due = time.monotonic() + seconds * _TOKEN_REFRESH_FRACTION
        self.refresh_at = due if self.refresh_at is None else min(self.refresh_at, due)

    def refresh_tokens(self) -> None:
        """Rewrite every projected volume (tokens first among them) before a token expires."""
        self.refresh_at = None
        namespace = self.pod["metadata"]["namespace"]
        for volume in self.pod["spec"].get("volumes") or []:
            if "projected" in volume:
                self._write_projected(namespace, self.paths[volume["name"]], volume["projected"])

    def mounts(self, container: Mapping[str, Any]) -> list[tuple[str, Path]]:
        """(mountPath, local folder) for the container, longest mount path first."""
        found = []
        for mount in container.get("volumeMounts") or []:
            local = self.paths[mount["name"]]
            if mount.get("subPath"):
                local = local / mount["subPath"]
                local.mkdir(parents=True, exist_ok=True)
            found.append((mount["mountPath"].rstrip("/") or "/", local))
        return sorted(found, key=lambda item: len(item[0]), reverse=True)


def localize(value: str, mounts: Sequence[tuple[str, Path]]) -> str:
    """``value`` with every mount path in it mapped to its folder.

    A mount path counts where it stands as a whole path: at the start, or after a space,
    quote, ``=``, ``:``, ``>``, ``<``, ``(`` or ``;``, and followed by ``/``, the end or
    such a separator. So ``--out=/data/x``, ``PATH=/a:/data/bin`` and ``sh -c "echo > /data/f"``
    are mapped, while ``http://host/data`` and ``/database`` are not.
    """
    folders = {mount_path: str(local) for mount_path, local in mounts if mount_path != "/"}
    if not folders:
        return value
    # One pass over all of them, longest first: a folder put in must not be mapped again.
    paths = "|".join(re.escape(p) for p in sorted(folders, key=len, reverse=True))
    pattern = rf"(?:(?<=^)|(?<=[\s\"'=:<>(;]))({paths})(?=/|$|[\s\"':;)|&])"
    return re.sub(pattern, lambda match: folders[match.group(1)], value)
