"""The ImageModel resource for the operator: the runtime's typed models, with kopf's errors.

The models themselves live in ``tessera.runtime.imagemodel`` (the gateway reads the same
documents and must not need kopf); here an invalid spec becomes ``InvalidSpec``, a
``kopf.PermanentError``: retrying an invalid spec cannot help, only an edit can.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from tessera.runtime import imagemodel
from tessera.runtime.imagemodel import (
    GROUP,
    H100_PRODUCT,
    PLURAL,
    VERSION,
    ImageModel,
    ImageModelSpec,
)

__all__ = [
    "GROUP",
    "H100_PRODUCT",
    "PLURAL",
    "VERSION",
    "ImageModel",
    "ImageModelSpec",
    "InvalidSpec",
    "parse",
    "parse_spec",
]


class InvalidSpec(kopf.PermanentError):
    """The resource cannot be served as written; the message names the field and the rule."""


def parse_spec(spec: Mapping[str, Any]) -> ImageModelSpec:
    """Validate a ``spec`` mapping (camelCase, as stored) or raise ``InvalidSpec``."""
    try:
        return imagemodel.parse_spec(spec)
    except imagemodel.InvalidImageModel as error:
        raise InvalidSpec(str(error)) from None


def parse(body: Mapping[str, Any]) -> ImageModel:
    """An ImageModel from a resource body (a kopf Body or a plain dict)."""
    try:
        return imagemodel.parse(body)
    except imagemodel.InvalidImageModel as error:
        raise InvalidSpec(str(error)) from None
