"""The push exporter against a receiver that fails at random: once it settles, every
event arrived at least once, and the ids that arrived are exactly the ledger's."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tessera.runtime.jobs.base import JobStore
from tessera.runtime.usage.export import Pusher, PushPolicy, PushRejected
from tests.store.conftest import complete_one, in_sqlite, read_all
from tests.support.usage_receiver import UsageReceiver
from tests.support.waiting import wait_until

FAST_RETRIES = PushPolicy(
    batch_size=4, retry_initial_seconds=0.005, retry_max_seconds=0.02, retention_seconds=3600
)


@pytest.fixture
def receiver() -> Iterator[UsageReceiver]:
    receiver = UsageReceiver(failure_rate=0.6, seed=13)
    yield receiver
    receiver.close()


async def test_every_event_arrives_and_only_the_ledgers(
    store: JobStore, receiver: UsageReceiver
) -> None:
    chance = random.Random(7)
    async with httpx.AsyncClient(timeout=5) as client:
        pusher = Pusher(store, client, receiver.url, policy=FAST_RETRIES)
        for _ in range(6):
            for _ in range(chance.randint(1, 6)):
                await complete_one(store, chance.choice(["a", "b", "c"]))
            # Usage keeps arriving while the exporter works.
            while await pusher.push_batch():
                pass
    ledger = {record.event_id for record in await read_all(store)}
    assert len(ledger) >= 6
    assert set(receiver.received) == ledger
    assert receiver.bad_requests == []
    assert {503, 429, 500, 200} <= set(receiver.answers), "every failure mode was exercised"
    assert len(receiver.received) > len(ledger), "writes answered 500 came again"
    assert await store.saved_cursor("push") == (await store.usage()).cursor


async def test_a_refused_batch_keeps_the_cursor(store: JobStore) -> None:
    receiver = UsageReceiver(refuse_with=400)
    try:
        await complete_one(store)
        async with httpx.AsyncClient(timeout=5) as client:
            pusher = Pusher(store, client, receiver.url, policy=FAST_RETRIES)
            with pytest.raises(PushRejected):
                await pusher.push_batch()
        assert receiver.answers == [400], "a 4xx is not retried"
        assert await store.saved_cursor("push") == ""
    finally:
        receiver.close()


async def test_delivered_records_leave_the_store_after_the_window(
    store: JobStore, receiver: UsageReceiver
) -> None:
    for model in ["a", "b", "a"]:
        await complete_one(store, model)
    everything = {record.event_id for record in await read_all(store)}
    await asyncio.sleep(0.01)  # older than a zero window, to the millisecond
    window = PushPolicy(batch_size=2, retry_initial_seconds=0.005, retention_seconds=0)
    async with httpx.AsyncClient(timeout=5) as client:
        pusher = Pusher(store, client, receiver.url, policy=window)
        assert await pusher.push_batch() == 2
        (undelivered,) = await read_all(store)
        assert undelivered.event_id not in receiver.received, "kept until it is delivered"
        assert await pusher.push_batch() == 1
    assert await read_all(store) == []
    assert set(receiver.received) == everything


def test_sigterm_stops_the_command_mid_retry_without_moving_the_cursor(tmp_path: Path) -> None:
    database = tmp_path / "jobs.db"
    in_sqlite(database, complete_one)
    receiver = UsageReceiver(refuse_with=503)  # down for good: retried forever
    try:
        command = [sys.executable, "-m", "tessera.runtime.cli", "usage", "push"]
        process = subprocess.Popen(
            [*command, "--queue", f"sqlite://{database}", "--to", receiver.url,
             "--retry-max-seconds", "0.1"],
            stderr=subprocess.PIPE,
        )  # fmt: skip
        wait_until("a few tries", lambda: len(receiver.answers) >= 3, timeout=60)
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        receiver.close()

    saved = in_sqlite(database, lambda store: store.saved_cursor("push"))
    assert saved == "", "nothing was delivered, so nothing moved"
