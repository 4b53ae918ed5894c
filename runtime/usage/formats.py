"""Usage records as bytes: CSV, JSON lines and CloudEvents (what OpenMeter ingests).

Every format is a pure function of the records, so the same range exports the same bytes:
amounts are fixed-point decimal strings (never floats, never exponents), times are RFC 3339
in UTC with microseconds, and fields keep one order.
"""

from __future__ import annotations

import csv
import enum
import io
import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BeforeValidator

from tessera.runtime.billing import format_amount
from tessera.runtime.jobs.base import UsageRecord

# The CloudEvents ``type`` of a usage event; an OpenMeter meter selects events by it.
EVENT_TYPE = "tessera.image.usage"
DEFAULT_SOURCE = "tessera"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"


class Format(enum.StrEnum):
    CSV = "csv"
    JSONL = "jsonl"
    CLOUDEVENTS = "cloudevents"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _rfc3339_only(value: object) -> object:
    """Refuse what pydantic would otherwise read as a time: a bare number is Unix seconds
    below 2e10 and milliseconds above, so ``99999999999`` would quietly mean 1973."""
    if isinstance(value, datetime) or (isinstance(value, str) and _RFC3339.fullmatch(value)):
        return value
    raise ValueError("expected an RFC 3339 time with an offset, such as 2026-01-01T00:00:00Z")


# A moment given by a person (a usage range's ends): RFC 3339 text, with an offset.
Rfc3339Time = Annotated[AwareDatetime, BeforeValidator(_rfc3339_only)]


def record_fields(record: UsageRecord) -> dict[str, Any]:
    """The record as JSON values, in export order."""
    return {
        "event_id": record.event_id,
        "job_id": record.job_id,
        "model": record.model,
        "namespace": record.namespace,
        "key_id": record.key_id,
        "images": record.images,
        "image_sizes": [f"{width}x{height}" for width, height in record.image_sizes],
        "patches": record.patches,
        "price_per_patch": format_amount(record.price_per_patch),
        "amount": format_amount(record.amount),
        "submitted_at": rfc3339(record.submitted_at),
        "started_at": rfc3339(record.started_at),
        "finished_at": rfc3339(record.finished_at),
        "attempts": record.attempts,
    }


COLUMNS = (
    "event_id",
    "job_id",
    "model",
    "namespace",
    "key_id",
    "images",
    "image_sizes",
    "patches",
    "price_per_patch",
    "amount",
    "submitted_at",
    "started_at",
    "finished_at",
    "attempts",
)


def _csv_rows(records: Iterable[UsageRecord]) -> str:
    """Image sizes as ``WxH`` separated by spaces."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for record in records:
        fields = record_fields(record)
        fields["image_sizes"] = " ".join(fields["image_sizes"])
        writer.writerow([fields[column] for column in COLUMNS])
    return buffer.getvalue()


def cloud_event(record: UsageRecord, source: str = DEFAULT_SOURCE) -> dict[str, Any]:
    """One CloudEvent (structured JSON). ``id`` is the event id, which a receiver such as
    OpenMeter deduplicates on (with ``source``); ``subject`` is the API key id, the
    customer a meter groups by."""
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent

    data = record_fields(record)
    event = CloudEvent(
        {
            "specversion": "1.0",
            "id": data.pop("event_id"),
            "source": source,
            "type": EVENT_TYPE,
            "subject": record.key_id,
            "time": record.finished_at.astimezone(UTC),
            "datacontenttype": "application/json",
        },
        data,
    )
    # The SDK checks the attributes and writes the spec's JSON form.
    written: dict[str, Any] = json.loads(JSONFormat().write(event))
    return written


class Encoder:
    """Turns pages of records into one document of ``format``, page by page, so a long
    export streams; the bytes do not depend on where the pages were cut."""

    def __init__(self, format: Format, source: str = DEFAULT_SOURCE):
        self.format = format
        self.source = source
        self._written = 0

    def start(self) -> bytes:
        if self.format is Format.CSV:
            return (",".join(COLUMNS) + "\n").encode()
        return b"[" if self.format is Format.CLOUDEVENTS else b""

    def page(self, records: list[UsageRecord]) -> bytes:
        if self.format is Format.CSV:
            text = _csv_rows(records)
        elif self.format is Format.JSONL:
            text = "".join(json.dumps(record_fields(record)) + "\n" for record in records)
        else:
            text = "".join(
                ("\n" if self._written + index == 0 else ",\n")
                + json.dumps(cloud_event(record, self.source))
                for index, record in enumerate(records)
            )
        self._written += len(records)
        return text.encode()

    def end(self) -> bytes:
        if self.format is Format.CLOUDEVENTS:
            return b"\n]\n" if self._written else b"]\n"
        return b""


def encode(format: Format, records: list[UsageRecord], source: str = DEFAULT_SOURCE) -> bytes:
    """One whole document, e.g. a CloudEvents batch for one POST."""
    encoder = Encoder(format, source)
    return encoder.start() + encoder.page(records) + encoder.end()
