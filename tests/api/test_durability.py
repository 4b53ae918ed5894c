"""Jobs survive a crash of `tessera serve`: queued jobs run after restart, and a job that was
in progress runs again and is billed once."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from tests.api.helpers import submit, wait
from tests.conftest import new_server


def test_jobs_complete_after_a_kill_and_restart(tmp_path: Path, demo_models_dir: Path) -> None:
    server = new_server(tmp_path / "data", demo_models_dir).start()
    slow = {
        "model": "tessera-demo",
        "prompt": "slow",
        "image_size": "square_hd",
        "num_inference_steps": 20,
    }
    with server.client() as client:
        ids = [submit(client, slow) for _ in range(4)]
        deadline = time.monotonic() + 60
        while client.get(f"/images/tasks/{ids[0]}").json()["status"] != "in_progress":
            assert time.monotonic() < deadline, "the first job never started"
            time.sleep(0.05)
    server.kill()

    restarted = new_server(tmp_path / "data", demo_models_dir)
    restarted.port = server.port  # same address, as after a real restart
    restarted.start()
    try:
        with restarted.client() as client:
            tasks = [wait(client, job_id, timeout=300) for job_id in ids]
    finally:
        restarted.stop()
    assert [t["status"] for t in tasks] == ["completed"] * 4
    assert tasks[0]["attempts"] == 2, "the job in flight at the crash ran again"
    with sqlite3.connect(tmp_path / "data" / "jobs.db") as db:
        billed = [row[0] for row in db.execute("SELECT job_id FROM ledger ORDER BY job_id")]
    assert billed == ids, "each job is billed exactly once"


@pytest.mark.parametrize("signal_name", ["SIGTERM"])
def test_graceful_stop_finishes_the_job_in_flight(
    tmp_path: Path, demo_models_dir: Path, signal_name: str
) -> None:
    server = new_server(tmp_path / "data", demo_models_dir).start()
    with server.client() as client:
        job_id = submit(
            client,
            {
                "model": "tessera-demo",
                "prompt": "x",
                "image_size": "square",
                "num_inference_steps": 10,
            },
        )
        deadline = time.monotonic() + 60
        while client.get(f"/images/tasks/{job_id}").json()["status"] == "queued":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    server.stop()
    with sqlite3.connect(tmp_path / "data" / "jobs.db") as db:
        status = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
    assert status == "completed"
