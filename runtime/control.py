"""The submission headers that steer a job, parsed and checked without I/O.

- ``Idempotency-Key`` (the IETF httpapi draft's header, as Stripe uses it): the same key and
  body from one API key within 24 h answer the first job.
- ``Cancel-After`` (Replicate's header): a job still queued that long after its submission
  is cancelled, unbilled. It is a header, not a body field, because the body is
  Hyperstack's schema (which refuses unknown fields); a header is what no Hyperstack client
  sends and none notices.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tessera.runtime.errors import InvalidParameter
from tessera.runtime.jobs.base import Idempotency
from tessera.runtime.params import GenerationRequest

IDEMPOTENCY_HEADER = "Idempotency-Key"
# On the answer to a submission that an earlier one's Idempotency-Key answered (Stripe's).
REPLAYED_HEADER = "Idempotent-Replayed"
CANCEL_AFTER_HEADER = "Cancel-After"

MAX_IDEMPOTENCY_KEY_LENGTH = 255
# Visible ASCII: a key travels in logs and Redis keys (hashed), and must read the same in
# every client.
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,%d}" % MAX_IDEMPOTENCY_KEY_LENGTH)  # noqa: UP031

# A duration as Go and Replicate write it ("90s", "5m", "1h30m", "1.5h") or plain seconds.
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)(h|m|s|ms))+|(\d+(?:\.\d+)?)")
_PART = re.compile(r"(\d+(?:\.\d+)?)(h|m|s|ms)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
MIN_CANCEL_AFTER_SECONDS = 1.0
MAX_CANCEL_AFTER_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class SubmitControls:
    """The raw header values of one submission (None: not sent)."""

    idempotency_key: str | None = None
    cancel_after: str | None = None


def cancel_after_seconds(text: str | None) -> float | None:
    """Seconds from a ``Cancel-After`` value (None: not sent), or ``InvalidParameter``
    naming the header."""
    if text is None:
        return None
    value = text.strip()
    if _DURATION.fullmatch(value) is None:
        raise InvalidParameter(
            f"{CANCEL_AFTER_HEADER}: {text!r} is not a duration; write seconds (300) or a "
            "duration such as 90s, 5m or 1h30m",
            field=CANCEL_AFTER_HEADER,
            rule="duration",
        )
    if value.replace(".", "", 1).isdigit():
        seconds = float(value)
    else:
        seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _PART.findall(value))
    if not MIN_CANCEL_AFTER_SECONDS <= seconds <= MAX_CANCEL_AFTER_SECONDS:
        raise InvalidParameter(
            f"{CANCEL_AFTER_HEADER}: {text!r} is {seconds:g} s; it must be between "
            f"{MIN_CANCEL_AFTER_SECONDS:g} s and {MAX_CANCEL_AFTER_SECONDS:g} s (24 h)",
            field=CANCEL_AFTER_HEADER,
            rule="range",
        )
    return seconds


def start_deadline(cancel_after: float | None, now: datetime | None = None) -> datetime | None:
    """When a job submitted now with this ``Cancel-After`` (seconds) must have started by."""
    if cancel_after is None:
        return None
    return (now or datetime.now(UTC)) + timedelta(seconds=cancel_after)


def idempotency(
    key: str | None, request: GenerationRequest, *, edit: bool, cancel_after: float | None
) -> Idempotency | None:
    """The key, checked, and a digest of what was asked: the endpoint, the body as
    validated (so key order and whitespace do not make two bodies differ) and the
    ``Cancel-After`` in seconds (a retry that asks for another deadline asks for another
    job, and would otherwise be answered with the first one's without a word)."""
    if key is None:
        return None
    if _IDEMPOTENCY_KEY.fullmatch(key) is None:
        raise InvalidParameter(
            f"{IDEMPOTENCY_HEADER}: must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} visible ASCII "
            "characters (a UUID is a good key)",
            field=IDEMPOTENCY_HEADER,
            rule="format",
        )
    asked: dict[str, object] = {"edit": edit, "body": request.model_dump(mode="json")}
    if cancel_after is not None:
        asked["cancel_after"] = cancel_after
    digest = hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()
    return Idempotency(key=key, fingerprint=digest)
