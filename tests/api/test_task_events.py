"""A task's server-sent events, read by a real SSE client (httpx-sse), and ``Prefer: wait``
on submit, against both deployments."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from httpx_sse import connect_sse

from tests.api.helpers import FAST, assert_error, submit, wait
from tests.support.gateway import GatewayDeployment
from tests.support.server import KEYS, ServerProcess

Deployment = ServerProcess | GatewayDeployment
# Enough steps at full size that the demo model reports progress a few times.
SLOW = {"model": "tessera-demo", "prompt": "a slow tide", "num_inference_steps": 8}


def test_the_event_stream_follows_a_job_until_it_is_finished(demo_server: Deployment) -> None:
    with demo_server.client() as client:
        job_id = submit(client, SLOW)
        with connect_sse(client, "GET", f"/images/tasks/{job_id}/events") as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            tasks = [json.loads(event.data) for event in source.iter_sse()]
        polled = wait(client, job_id)
    assert {event["job_id"] for event in tasks} == {job_id}
    statuses = [task["status"] for task in tasks]
    assert statuses[-1] == "completed" and "completed" not in statuses[:-1]
    # Never backwards: queued, then running with rising progress, then completed.
    order = {"queued": 0, "in_progress": 1, "completed": 2}
    steps = [(order[task["status"]], task["progress"]) for task in tasks]
    assert steps == sorted(steps) and len(set(steps)) == len(steps), steps
    assert (
        tasks[-1]["result"]["data"][0]["url"].split("?")[0]
        == (polled["result"]["data"][0]["url"].split("?")[0])
    )


def test_a_finished_job_streams_one_event_and_ends(demo_server: Deployment) -> None:
    with demo_server.client() as client:
        job_id = submit(client, {"model": "tessera-demo", "prompt": "done", **FAST})
        wait(client, job_id)
        with connect_sse(client, "GET", f"/images/tasks/{job_id}/events") as source:
            events = list(source.iter_sse())
    assert [(e.event, json.loads(e.data)["status"]) for e in events] == [("task", "completed")]


def test_the_stream_answers_like_a_poll_for_missing_and_foreign_jobs(
    demo_server: Deployment,
) -> None:
    with demo_server.client() as client:
        job_id = submit(client, {"model": "tessera-demo", "prompt": "mine", **FAST})
        assert_error(client.get("/images/tasks/999999999/events"), 404)
        assert_error(client.get("/images/tasks/0/events"), 422, "job_id")
    with demo_server.client(KEYS[1]) as other:
        assert_error(other.get(f"/images/tasks/{job_id}/events"), 404)
    assert_error(httpx.get(f"{demo_server.api_url}/images/tasks/{job_id}/events"), 401)


def test_a_client_that_stops_reading_does_not_hold_the_server(demo_server: Deployment) -> None:
    """A client opens a stream and never reads it, then vanishes: the server keeps serving,
    and the stream of a new job still arrives whole."""
    with demo_server.client() as client:
        job_id = submit(client, SLOW)
    host, port = demo_server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        stalled.sendall(
            f"GET /v1/images/tasks/{job_id}/events HTTP/1.1\r\nHost: {host}\r\n"
            f"api_key: {demo_server.api_key}\r\n\r\n".encode()
        )
        with demo_server.client() as client:
            assert wait(client, job_id)["status"] == "completed"
    with demo_server.client() as client:
        job_id = submit(client, {"model": "tessera-demo", "prompt": "after", **FAST})
        with connect_sse(client, "GET", f"/images/tasks/{job_id}/events") as source:
            assert json.loads(list(source.iter_sse())[-1].data)["status"] == "completed"


def test_prefer_wait_answers_with_the_finished_task(demo_server: Deployment) -> None:
    body = {"model": "tessera-demo", "prompt": "at once", **FAST}
    with demo_server.client() as client:
        response = client.post("/images/generations", json=body, headers={"Prefer": "wait=50"})
        assert response.status_code == 200, response.text
        assert response.headers["preference-applied"] == "wait=50"
        task = response.json()
        assert task["status"] == "completed"
        assert task["result"]["usage"]["output_tokens"] == 3072
        polled = wait(client, task["job_id"])
        assert (polled["status"], polled["result"]["usage"]) == (
            "completed",
            task["result"]["usage"],
        )
        # Over the cap: held at most 60 s, and the answer says so.
        capped = client.post("/images/generations", json=body, headers={"Prefer": "wait=999"})
        assert capped.headers["preference-applied"] == "wait=60"
        # Another preference alone changes nothing: the job id at once.
        plain = client.post("/images/generations", json=body, headers={"Prefer": "return=minimal"})
        assert (
            set(plain.json()) == {"job_id", "status"} and "preference-applied" not in plain.headers
        )


def test_prefer_wait_answers_the_job_id_when_time_runs_out(demo_server: Deployment) -> None:
    with demo_server.client() as client:
        response = client.post("/images/generations", json=SLOW, headers={"Prefer": "wait=0.01"})
        assert response.status_code == 200, response.text
        assert response.headers["preference-applied"] == "wait=0.01"
        accepted = response.json()
        assert set(accepted) == {"job_id", "status"}
        assert accepted["status"] in ("queued", "in_progress")
        wait(client, accepted["job_id"])


@pytest.mark.parametrize("value", ["wait=abc", "wait=-1", "wait=1e9", "wait=" + "9" * 50])
def test_a_bad_prefer_wait_is_refused_before_a_job_exists(
    demo_server: Deployment, value: str
) -> None:
    body = {"model": "tessera-demo", "prompt": "never", **FAST}
    with demo_server.client() as client:
        response = client.post("/images/generations", json=body, headers={"Prefer": value})
    assert assert_error(response, 422, "Prefer")["rule"] == "prefer_wait"
