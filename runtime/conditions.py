"""Status conditions of a resource, in cert-manager's shape, shared by everyone who writes
them on an ImageModel (the operator; the gateway, for whether it serves the model).

``set_condition`` always stamps ``observedGeneration`` and keeps ``lastTransitionTime``
unless the status flips; conditions of other types are kept as they are, so writers of
different types do not erase each other's.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any


def timestamp(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find_condition(
    conditions: Sequence[Mapping[str, Any]] | None, type: str
) -> Mapping[str, Any] | None:
    for condition in conditions or ():
        if condition.get("type") == type:
            return condition
    return None


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    type: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: datetime.datetime,
    order: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The conditions with ``type`` set, sorted by ``order`` (others last, as they were)."""
    value = "True" if status else "False"
    old = find_condition(conditions, type)
    since = old.get("lastTransitionTime") if old and old.get("status") == value else None
    new = {
        "type": type,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or timestamp(now),
        "observedGeneration": generation,
    }
    others = [dict(c) for c in conditions or () if c.get("type") != type]
    rank = {name: i for i, name in enumerate(order)}
    return sorted([*others, new], key=lambda c: rank.get(c["type"], len(rank)))
