"""Exports of the usage ledger: resumable, byte-for-byte repeatable, exact to the digit."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from cloudevents.core.formats.json import JSONFormat

from tessera.runtime.billing import format_amount, price
from tessera.runtime.jobs.base import ImageFile, JobResult, JobStore
from tessera.runtime.usage.export import export_range
from tessera.runtime.usage.formats import COLUMNS, Format
from tessera.runtime.usage.summary import GroupBy, summarize
from tests.store.conftest import complete_many, complete_one, in_sqlite, read_all


async def export(store: JobStore, format: Format, since: str = "", until: str | None = None):
    out = io.BytesIO()
    cursor = await export_range(store, out, format, since, until)
    return out.getvalue(), cursor


async def test_every_format_repeats_its_bytes_and_resumes(store: JobStore) -> None:
    for model in ["a", "b", "a"]:
        await complete_one(store, model)
    for format in Format:
        first, cursor = await export(store, format)
        assert (first, cursor) == await export(store, format, "", cursor)
        assert await export(store, format, cursor) == (await export(store, format, cursor, cursor))
    head, cursor = await export(store, Format.JSONL)
    later = [await complete_one(store, "c"), await complete_one(store, "a")]
    tail, end = await export(store, Format.JSONL, cursor)
    assert [json.loads(line)["job_id"] for line in tail.splitlines()] == later
    whole, whole_end = await export(store, Format.JSONL)
    assert head + tail == whole and whole_end == end


async def test_csv_has_one_header_and_every_column(store: JobStore) -> None:
    await complete_one(store, key_id="key_a")
    data, _ = await export(store, Format.CSV)
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 1
    assert rows[0]["image_sizes"] == "64x48" and rows[0]["amount"] == "0.0060"
    assert rows[0]["key_id"] == "key_a" and rows[0]["namespace"] == "team-a"
    assert rows[0]["finished_at"].endswith("Z")


async def test_cloudevents_are_what_openmeter_ingests(store: JobStore) -> None:
    job_id = await complete_one(store, key_id="key_a")
    data, _ = await export(store, Format.CLOUDEVENTS)
    (event,) = json.loads(data)
    assert set(event) >= {"specversion", "id", "source", "type", "subject", "time", "data"}
    assert event["specversion"] == "1.0" and event["subject"] == "key_a"
    (record,) = (await store.usage()).records
    assert event["id"] == record.event_id and event["data"]["job_id"] == job_id
    assert event["data"]["patches"] == 12 and event["data"]["amount"] == "0.0060"
    # The SDK reads each event of the batch back as a valid CloudEvent 1.0.
    read = JSONFormat().read(None, json.dumps(event))
    assert read.get_id() == record.event_id and read.get_source() == "tessera"
    assert read.get_type() == "tessera.image.usage" and read.get_subject() == "key_a"
    assert read.get_time() == record.finished_at
    assert read.get_data() == event["data"] and isinstance(event["data"], dict)
    assert (
        json.loads((await export(store, Format.CLOUDEVENTS, (await store.usage()).cursor))[0]) == []
    )


async def test_money_is_exact_to_the_last_digit(store: JobStore) -> None:
    """10^7 patches at 10^-8 a patch over 250 records: 0.1 exactly, where floats drift;
    in every export format and in the totals GET /v1/usage answers."""
    rate = Decimal("0.00000001")
    for _ in range(250):
        patches = 10**7 // 250
        result = JobResult(
            images=(ImageFile("r.png", 16, 16 * patches, "image/png"),),
            patches=patches,
            price=price(patches, rate),
            price_per_patch=rate,
        )
        await complete_one(store, model="m", result=result)
    data, _ = await export(store, Format.JSONL)
    amounts = [json.loads(line)["amount"] for line in data.splitlines()]
    assert sum(Decimal(amount) for amount in amounts) == Decimal(10**7) * rate == Decimal("0.1")
    assert sum(float(amount) for amount in amounts) != 0.1, "floats would have drifted"
    rows = csv.DictReader(io.StringIO((await export(store, Format.CSV))[0].decode()))
    assert sum(Decimal(row["amount"]) for row in rows) == Decimal("0.1")
    events = json.loads((await export(store, Format.CLOUDEVENTS))[0])
    assert sum(Decimal(event["data"]["amount"]) for event in events) == Decimal("0.1")
    start, end = datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(seconds=1)
    groups, overall = await summarize(store, start, end, GroupBy.MODEL)
    assert overall.patches == 10**7 and overall.jobs == 250
    assert overall.amount == groups["m"].amount == Decimal("0.1")
    assert format_amount(overall.amount) == "0.10000000"


def test_the_command_prints_the_cursor_to_resume_from_last(tmp_path: Path) -> None:
    database = tmp_path / "jobs.db"

    def run(*arguments: str) -> subprocess.CompletedProcess[bytes]:
        command = [sys.executable, "-m", "tessera.runtime.cli", "usage", "export"]
        return subprocess.run(
            [*command, "--queue", f"sqlite://{database}", *arguments],
            capture_output=True,
            check=True,
            timeout=60,
        )

    in_sqlite(database, lambda store: complete_many(store, 2))
    first = run("--format", "csv")
    cursor = first.stderr.decode().splitlines()[-1].removeprefix("cursor: ")
    assert len(first.stdout.decode().splitlines()) == 3
    assert run("--format", "csv", "--until", cursor).stdout == first.stdout
    in_sqlite(database, lambda store: complete_many(store, 1))
    resumed = run("--format", "jsonl", "--since", cursor)
    assert len(resumed.stdout.splitlines()) == 1
    # An invoice period: the records that finished before a time.
    assert run("--before", "2020-01-01T00:00:00Z").stdout == b""
    assert len(run("--before", "2999-01-01T00:00:00Z").stdout.splitlines()) == 3
    bad = subprocess.run(
        [sys.executable, "-m", "tessera.runtime.cli", "usage", "export", "--queue",
         f"sqlite://{database}", "--since", "garbage"],
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and b"not a usage cursor" in bad.stderr


def test_a_named_export_resumes_by_itself_and_lets_retention_trim(tmp_path: Path) -> None:
    """``--cursor-name``: each run exports what the last one did not, and what every saved
    cursor has passed goes once it is older than ``--retention-seconds``."""
    database = tmp_path / "jobs.db"

    def kept() -> list[int]:
        return [record.job_id for record in in_sqlite(database, read_all)]

    def export_named(*arguments: str) -> list[int]:
        command = [sys.executable, "-m", "tessera.runtime.cli", "usage", "export"]
        run = subprocess.run(
            [*command, "--queue", f"sqlite://{database}", "--cursor-name", "invoices",
             *arguments],
            capture_output=True,
            check=True,
            timeout=60,
        )  # fmt: skip
        return [json.loads(line)["job_id"] for line in run.stdout.splitlines()]

    first = in_sqlite(database, lambda store: complete_many(store, 2))
    assert export_named() == first
    assert kept() == first, "inside the retention window (a week) they stay"
    later = in_sqlite(database, lambda store: complete_many(store, 1))
    assert export_named("--retention-seconds", "0") == later, "resumed where it stopped"
    assert kept() == [], "exported, and past a zero window"
    assert export_named() == []


def test_cursors_lists_what_retention_waits_for_and_forgets_one(tmp_path: Path) -> None:
    """An invoicing export retired by its owner: listed, then forgotten, after which the
    push exporter's deliveries are trimmed again."""
    database = tmp_path / "jobs.db"

    def usage(*arguments: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "tessera.runtime.cli", "usage", *arguments]
        return subprocess.run(
            [*command, "--queue", f"sqlite://{database}"],
            capture_output=True,
            check=True,
            text=True,
            timeout=60,
        )

    assert usage("cursors").stdout == "", "nothing saved"
    in_sqlite(database, lambda store: complete_many(store, 1))
    usage("export", "--cursor-name", "invoices-2025")
    later = in_sqlite(database, lambda store: complete_many(store, 2))
    usage("export", "--cursor-name", "push", "--retention-seconds", "0")
    listed = usage("cursors").stdout.splitlines()
    assert [line.split("\t")[0] for line in listed] == ["invoices-2025", "push"]
    assert [record.job_id for record in in_sqlite(database, read_all)] == later, (
        "the old export holds back what it has not read"
    )
    forgot = usage("cursors", "--forget", "invoices-2025")
    assert forgot.stdout.splitlines() == listed[1:]
    assert "forgot cursor 'invoices-2025'" in forgot.stderr
    usage("export", "--cursor-name", "push", "--retention-seconds", "0")
    assert in_sqlite(database, read_all) == []


# A flag a user got wrong, and the name the refusal must give: exit 2, never a traceback.
HOSTILE_FLAGS = [
    (["export", "--queue", "/etc/passwd"], "--queue"),
    (["export", "--queue", "sqlite://relative/jobs.db"], "--queue"),
    (["export", "--before", "99999999999"], "--before"),  # pydantic alone: 1973, in ms
    (["export", "--before", "2026-01-01T00:00:00"], "--before"),
    (["export", "--until", "1", "--before", "2026-01-01T00:00:00Z"], "--until or --before"),
    (["export", "--since", "9" * 19], "not a usage cursor"),
    (["export", "--since", "\u0661"], "not a usage cursor"),
    (["export", "--format", "cloudevents", "--source", ""], "--source"),
    (["export", "--format", "cloudevents", "--source", "a b"], "--source"),
    (["export", "--output", "/nonexistent/usage.csv"], "--output"),
    (["push", "--to", "http://", "--once"], "--to"),
    (["push", "--to", "file:///etc/passwd", "--once"], "--to"),
    (["push", "--to", "http://x", "--retention-seconds", "inf", "--once"], "--retention-seconds"),
    (["push", "--to", "http://x", "--retention-seconds", "1e300", "--once"], "--retention-seconds"),
    (["push", "--to", "http://x", "--retry-max-seconds", "nan", "--once"], "--retry-max-seconds"),
    (["push", "--to", "http://x", "--batch-size", "0", "--once"], "--batch-size"),
    (["export", "--cursor-name", ""], "--cursor-name"),
    (["export", "--cursor-name", "x", "--retention-seconds", "-1"], "--retention-seconds"),
    (["cursors", "--forget", ""], "--forget"),
    (["cursors", "--forget", "never-saved"], "--forget: no cursor is saved as 'never-saved'"),
]


def test_hostile_flags_are_refused_by_name(tmp_path: Path) -> None:
    database = tmp_path / "jobs.db"
    in_sqlite(database, complete_one)
    for arguments, named in HOSTILE_FLAGS:
        action, *flags = arguments
        queue = [] if "--queue" in flags else ["--queue", f"sqlite://{database}"]
        run = subprocess.run(
            [sys.executable, "-m", "tessera.runtime.cli", "usage", action, *queue, *flags],
            capture_output=True,
            timeout=60,
        )
        stderr = run.stderr.decode()
        assert run.returncode == 2, (arguments, run.returncode, stderr)
        assert named in stderr and "Traceback" not in stderr, (arguments, stderr)
        assert run.stdout == b"", "a refused export writes nothing"
    assert not (tmp_path / "nonexistent").exists()
