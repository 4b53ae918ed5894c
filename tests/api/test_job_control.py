"""Cancel, Cancel-After, Idempotency-Key and queue_position, against ``serve`` (SQLite) and
``gateway`` + workers (Redis), over real sockets. Nothing cancelled is billed: the usage
ledger (read from the store itself) and the patches counter are shown unchanged."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tessera.runtime.jobs import open_store
from tests.api.helpers import FAST, assert_error, store_url, submit, wait
from tests.support.gateway import GatewayDeployment
from tests.support.server import ServerProcess

Deployment = ServerProcess | GatewayDeployment

# Long enough on the tiny demo pipeline that a test can act while it runs.
SLOW = {
    "model": "tessera-demo",
    "prompt": "a slow lighthouse",
    "image_size": "square_hd",
    "num_inference_steps": 50,
}
QUICK = {"model": "tessera-demo", "prompt": "a quick lighthouse", **FAST}


def ledger(server: Deployment) -> list[int]:
    """The job ids the store's usage ledger bills, read past the API."""

    async def read() -> list[int]:
        store = open_store(store_url(server))
        try:
            return [record.job_id for record in (await store.usage(limit=100_000)).records]
        finally:
            await store.close()

    return asyncio.run(read())


def counted(server: Deployment, counter: str) -> float:
    """A counter's total over every process of the deployment (gateways and workers)."""
    total = 0.0
    for url in server.metrics_urls:
        for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
            if family.name == counter:
                total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


def patches_billed(server: Deployment) -> float:
    return counted(server, "tessera_patches")


def jobs_submitted(server: Deployment) -> float:
    return counted(server, "tessera_jobs_submitted")


def task_of(client: httpx.Client, job_id: int) -> dict[str, Any]:
    response = client.get(f"/images/tasks/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def cancel(client: httpx.Client, job_id: int) -> dict[str, Any]:
    response = client.post(f"/images/tasks/{job_id}/cancel")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == "cancelled", body
    return body


def until_running(client: httpx.Client, job_id: int, timeout: float = 60) -> dict[str, Any]:
    """The task once its worker has reported a denoising step."""
    deadline = time.monotonic() + timeout
    while True:
        task = task_of(client, job_id)
        if task["status"] == "in_progress" and task["progress"] > 0:
            return task
        assert task["status"] in ("queued", "in_progress"), task
        assert time.monotonic() < deadline, f"job {job_id} never started: {task}"
        time.sleep(0.02)


@contextmanager
def worker_busy(client: httpx.Client) -> Iterator[int]:
    """A slow job that holds the demo model's one worker, cancelled on the way out."""
    blocker = submit(client, SLOW)
    until_running(client, blocker)
    try:
        yield blocker
    finally:
        client.post(f"/images/tasks/{blocker}/cancel")


def test_a_cancelled_queued_job_never_runs_and_is_not_billed(demo_server: Deployment) -> None:
    billed, patches = ledger(demo_server), patches_billed(demo_server)
    with demo_server.client() as client:
        with worker_busy(client):
            first, second = submit(client, QUICK), submit(client, QUICK)
            assert task_of(client, first)["queue_position"] == 0
            assert task_of(client, second)["queue_position"] == 1
            cancelled = cancel(client, first)
            assert cancelled["error"]["code"] == "job.cancelled"
            assert task_of(client, second)["queue_position"] == 0, "the cancel left the queue"
            # Cancelling again answers the same; the job stays cancelled.
            assert cancel(client, first)["finished_at"] == cancelled["finished_at"]
        done = wait(client, second)
        never_ran = task_of(client, first)
    assert never_ran["status"] == "cancelled"
    assert never_ran["attempts"] == 0 and never_ran["started_at"] is None
    assert "result" not in never_ran
    assert first not in ledger(demo_server)
    assert set(ledger(demo_server)) - set(billed) == {second}
    assert patches_billed(demo_server) - patches == done["result"]["usage"]["output_tokens"]


def test_a_running_job_stops_when_cancelled_and_is_not_billed(demo_server: Deployment) -> None:
    billed, patches = ledger(demo_server), patches_billed(demo_server)
    with demo_server.client() as client:
        job_id = submit(client, SLOW)
        running = until_running(client, job_id)
        cancelled = cancel(client, job_id)
        assert cancelled["progress"] < 100 and running["attempts"] == 1
        # The worker gives the job up at its next step: the next job runs well before the
        # cancelled one's remaining steps could have.
        after = wait(client, submit(client, QUICK))
        assert after["status"] == "completed"
        final = task_of(client, job_id)
    assert final["status"] == "cancelled" and "result" not in final
    assert final["finished_at"] == cancelled["finished_at"], "completion never overwrote it"
    assert set(ledger(demo_server)) - set(billed) == {after["job_id"]}
    assert patches_billed(demo_server) - patches == after["result"]["usage"]["output_tokens"]


def test_cancel_answers_4xx_for_what_cannot_be_cancelled(demo_server: Deployment) -> None:
    with demo_server.client() as client:
        done = wait(client, submit(client, QUICK))
        assert_error(client.post(f"/images/tasks/{done['job_id']}/cancel"), 409)
        assert task_of(client, done["job_id"])["status"] == "completed"
        with demo_server.client(key=demo_server.keys[1]) as other:
            assert_error(other.post(f"/images/tasks/{done['job_id']}/cancel"), 404)
        assert_error(client.post("/images/tasks/0/cancel"), 422, "job_id")
        assert_error(client.post("/images/tasks/abc/cancel"), 422, "job_id")
        assert_error(client.post(f"/images/tasks/{2**63 - 1}/cancel"), 404)


def test_a_job_not_started_by_its_cancel_after_is_cancelled_unbilled(
    demo_server: Deployment,
) -> None:
    billed = ledger(demo_server)
    with demo_server.client() as client:
        with worker_busy(client):
            late = client.post("/images/generations", json=QUICK, headers={"Cancel-After": "1s"})
            assert late.status_code == 200, late.text
            late_id = late.json()["job_id"]
            patient = client.post(
                "/images/generations", json=QUICK, headers={"Cancel-After": "10m"}
            ).json()["job_id"]
            time.sleep(1.2)  # past the first deadline; the worker is still busy
        aborted = wait(client, late_id)
        assert wait(client, patient)["status"] == "completed"
    assert aborted["status"] == "cancelled" and aborted["attempts"] == 0
    assert "Cancel-After" in aborted["error"]["message"]
    assert late_id not in ledger(demo_server)
    assert patient in set(ledger(demo_server)) - set(billed)


def test_an_idempotency_key_answers_the_first_job(demo_server: Deployment) -> None:
    key = str(uuid.uuid4())
    with demo_server.client() as client:
        submitted = jobs_submitted(demo_server)
        first = client.post("/images/generations", json=QUICK, headers={"Idempotency-Key": key})
        again = client.post(
            "/images/generations",
            # The same body with its keys in another order is the same body.
            json=dict(reversed(list(QUICK.items()))),
            headers={"Idempotency-Key": key},
        )
        assert first.status_code == again.status_code == 200, again.text
        assert first.json()["job_id"] == again.json()["job_id"]
        assert "Idempotent-Replayed" not in first.headers
        assert again.headers["Idempotent-Replayed"] == "true"
        assert jobs_submitted(demo_server) - submitted == 1, "the replay is not a submission"
        other = client.post(
            "/images/generations",
            json={**QUICK, "prompt": "another"},
            headers={"Idempotency-Key": key},
        )
        body = assert_error(other, 422, "Idempotency-Key")
        assert body["rule"] == "same_body" and str(first.json()["job_id"]) in body["message"]
        # Keys are per API key: another key's same Idempotency-Key is its own job.
        with demo_server.client(key=demo_server.keys[1]) as stranger:
            theirs = stranger.post(
                "/images/generations", json=QUICK, headers={"Idempotency-Key": key}
            )
            assert theirs.json()["job_id"] != first.json()["job_id"]
        assert wait(client, first.json()["job_id"])["status"] == "completed"


def test_a_replay_answers_what_the_first_job_became(demo_server: Deployment) -> None:
    """Whatever became of the first job (cancelled here), a retry gets it, and with
    ``Prefer: wait`` its task at once; an edit under a generation's key is another body."""
    key = str(uuid.uuid4())
    with demo_server.client() as client:
        with worker_busy(client):
            first = client.post("/images/generations", json=QUICK, headers={"Idempotency-Key": key})
            cancel(client, first.json()["job_id"])
        submitted = jobs_submitted(demo_server)
        again = client.post(
            "/images/generations", json=QUICK, headers={"Idempotency-Key": key, "Prefer": "wait=5"}
        )
        assert again.status_code == 200, again.text
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["job_id"] == first.json()["job_id"]
        assert again.json()["status"] == "cancelled"
        assert again.json()["error"]["code"] == "job.cancelled"
        edit = client.post(
            "/images/edits",
            json={**QUICK, "image_url": "https://example.com/a.png"},
            headers={"Idempotency-Key": key},
        )
        assert assert_error(edit, 422, "Idempotency-Key")["rule"] == "same_body"
        assert jobs_submitted(demo_server) == submitted


def test_a_retry_asking_another_cancel_after_is_another_body(demo_server: Deployment) -> None:
    """Cancel-After counts as what was asked (in seconds: 300 and 5m are the same ask): a
    retry with another deadline is a 422, not the first job with the first deadline."""
    key = str(uuid.uuid4())
    with demo_server.client() as client:
        first = client.post(
            "/images/generations",
            json=QUICK,
            headers={"Idempotency-Key": key, "Cancel-After": "300"},
        )
        same = client.post(
            "/images/generations",
            json=QUICK,
            headers={"Idempotency-Key": key, "Cancel-After": "5m"},
        )
        assert same.headers["Idempotent-Replayed"] == "true"
        assert same.json()["job_id"] == first.json()["job_id"]
        for other in ({"Cancel-After": "2s"}, {}):
            refused = client.post(
                "/images/generations", json=QUICK, headers={"Idempotency-Key": key, **other}
            )
            body = assert_error(refused, 422, "Idempotency-Key")
            assert body["rule"] == "same_body" and "Cancel-After" in body["message"]
        assert wait(client, first.json()["job_id"])["status"] == "completed"


def test_fifty_concurrent_identical_submits_make_one_job(demo_server: Deployment) -> None:
    key = str(uuid.uuid4())

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=demo_server.api_url, headers={"api_key": demo_server.api_key}, timeout=60
        ) as client:
            return await asyncio.gather(
                *(
                    client.post("/images/generations", json=QUICK, headers={"Idempotency-Key": key})
                    for _ in range(50)
                )
            )

    with demo_server.client() as client:
        with worker_busy(client):
            submitted = jobs_submitted(demo_server)
            responses = asyncio.run(burst())
            assert {r.status_code for r in responses} == {200}
            ids = {r.json()["job_id"] for r in responses}
            assert len(ids) == 1, ids
            replays = [r for r in responses if r.headers.get("Idempotent-Replayed") == "true"]
            assert len(replays) == 49
            assert jobs_submitted(demo_server) - submitted == 1
            (job_id,) = ids
            # Counted in the queue itself: a job submitted next is right behind the one.
            position = task_of(client, job_id)["queue_position"]
            behind = submit(client, QUICK)
            assert task_of(client, behind)["queue_position"] == position + 1
        assert wait(client, job_id)["status"] == "completed"
        assert wait(client, behind)["status"] == "completed"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Cancel-After", "soon"),
        ("Cancel-After", "0"),
        ("Cancel-After", "-5s"),
        ("Cancel-After", "25h"),
        ("Cancel-After", "1e9"),
        ("Idempotency-Key", "x" * 256),
        ("Idempotency-Key", "has space"),
        ("Idempotency-Key", ""),
    ],
)
def test_bad_control_headers_are_422_naming_the_header(
    demo_server: Deployment, header: str, value: str
) -> None:
    with demo_server.client() as client:
        response = client.post("/images/generations", json=QUICK, headers={header: value})
        assert_error(response, 422, header)
