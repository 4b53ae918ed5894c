"""``GET /v1/usage``: admin keys read totals from the ledger; other keys get 403."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx

from tessera.runtime.usage.formats import Format
from tests.api.helpers import assert_error, generate, store_url
from tests.support.gateway import GatewayDeployment
from tests.support.server import ADMIN_KEY, ServerProcess


def usage(server: ServerProcess, key: str | None = ADMIN_KEY, **query: str) -> httpx.Response:
    headers = {"api_key": key} if key else {}
    return httpx.get(server.api_url + "/usage", params=query, headers=headers, timeout=30)


def export_ledger(server: ServerProcess | GatewayDeployment, format: Format) -> bytes:
    """The deployment's whole ledger, as ``tessera usage export`` writes it."""
    exported = subprocess.run(
        [sys.executable, "-m", "tessera.runtime.cli", "usage", "export", "--format", format,
         "--queue", store_url(server)],
        capture_output=True,
        check=True,
        timeout=60,
    )  # fmt: skip
    return exported.stdout


def test_an_admin_key_reads_totals_by_model_and_by_key(demo_server: ServerProcess) -> None:
    start = (datetime.now(UTC) - timedelta(milliseconds=50)).isoformat()
    patches: Counter[str] = Counter()
    amount = Decimal(0)
    for key, sizes in zip(demo_server.keys, [["64x48", "100x60"], ["128x128"]], strict=True):
        with demo_server.client(key) as client:
            for size in sizes:
                task = generate(client, image_size=size)
                patches[key] += task["result"]["usage"]["output_tokens"]
                amount += Decimal(task["result"]["price"])
    by_model = usage(demo_server, start=start)
    assert by_model.status_code == 200, by_model.text
    report = by_model.json()
    assert report["group_by"] == "model"
    assert report["total"]["patches"] == sum(patches.values()) and report["total"]["jobs"] == 3
    assert Decimal(report["total"]["amount"]) == amount, "exact, as text"
    assert [(g["name"], g["patches"]) for g in report["groups"]] == [
        ("tessera-demo", sum(patches.values()))
    ]
    by_key = usage(demo_server, start=start, group_by="key_id").json()
    assert sorted(g["patches"] for g in by_key["groups"]) == sorted(patches.values())
    assert all(g["name"].startswith("key_") for g in by_key["groups"])
    assert not any(key in by_key["groups"][0]["name"] for key in demo_server.keys)
    # The ledger's exports name the same key ids, and never a key, in any format.
    for format in Format:
        exported = export_ledger(demo_server, format)
        assert not any(key.encode() in exported for key in [*demo_server.keys, ADMIN_KEY])
        assert all(g["name"].encode() in exported for g in by_key["groups"])
    # A range before any job holds nothing.
    empty = usage(demo_server, start="2020-01-01T00:00:00Z", end="2020-01-02T00:00:00Z").json()
    assert empty["groups"] == [] and empty["total"] == {
        "jobs": 0,
        "images": 0,
        "patches": 0,
        "amount": "0",
    }


def test_other_keys_are_forbidden_and_bad_ranges_named(demo_server: ServerProcess) -> None:
    start = "2026-01-01T00:00:00Z"
    body = assert_error(usage(demo_server, demo_server.keys[0], start=start), 403)
    assert body["error"] == "auth.forbidden"
    assert_error(usage(demo_server, None, start=start), 401)
    assert_error(usage(demo_server, start="2026-01-01T00:00:00"), 422, "start")
    assert_error(usage(demo_server, start=start, end="2025-01-01T00:00:00Z"), 422, "end")
    assert_error(usage(demo_server, start=start, end=start), 422, "end")
    assert_error(usage(demo_server, start=start, group_by="colour"), 422, "group_by")
    # Hostile ends: never a 5xx, always the field named.
    for hostile in (
        "garbage",
        "1700000000",  # pydantic alone reads a number as Unix seconds ...
        "99999999999",  # ... or as milliseconds above 2e10 (this would be 1973)
        "-62135596800",
        "2026-13-01T00:00:00Z",
        "2026-01-01T00:00:00+25:00",
        "9" * 5000,
        "",
    ):
        assert_error(usage(demo_server, start=hostile), 422, "start")
        assert_error(usage(demo_server, start=start, end=hostile), 422, "end")
    # The widest range a datetime holds, at both extreme offsets, is an answer, not a 5xx.
    widest = usage(
        demo_server, start="0001-01-01T00:00:00+14:00", end="9999-12-31T23:59:59.999999-14:00"
    )
    assert widest.status_code == 200, widest.text
    everything = usage(demo_server, start="0001-01-01T00:00:00Z").json()["total"]
    assert widest.json()["total"] == everything
