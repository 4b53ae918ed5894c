"""Webhooks on both stores: ``serve`` (SQLite, sent by the serve process) and gateway +
workers (Redis, sent by the gateway), to a real receiver on loopback, allowed by an explicit
flag. Signatures are checked by the Standard Webhooks reference library, not by our code."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from tests.api.helpers import FAST, assert_error, submit, wait
from tests.conftest import new_server
from tests.support.gateway import GatewayDeployment, run_deployment
from tests.support.server import KEYS, ServerProcess
from tests.support.webhook_receiver import Delivery, WebhookReceiver, webhook_receiver

# Loopback is allowed for these servers only; retries are quick so backoff is seen in seconds.
ALLOW_LOOPBACK = (
    "--allow-webhook-network",
    "127.0.0.0/8",
    "--webhook-retry-seconds",
    "0.5",
    "--webhook-max-attempts",
    "4",
)

Deployment = ServerProcess | GatewayDeployment


@pytest.fixture(scope="module", params=["serve", "gateway"])
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, demo_models_dir: Any
) -> Iterator[Deployment]:
    base = tmp_path_factory.mktemp(f"webhooks-{request.param}")
    if request.param == "serve":
        server = new_server(base, demo_models_dir, *ALLOW_LOOPBACK).start()
        yield server
        server.stop()
        return
    yield from run_deployment(base, demo_models_dir, gateway_args=ALLOW_LOOPBACK)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as running:
        yield running


def api_process(deployment: Deployment) -> ServerProcess:
    """The process that sends the webhooks: serve itself, or the gateway."""
    return deployment if isinstance(deployment, ServerProcess) else deployment.gateways[0]


def secret_of(deployment: Deployment, key: str = KEYS[0]) -> str:
    with deployment.client(key) as client:
        response = client.get("/webhooks/default/secret")
    assert response.status_code == 200, response.text
    secret: str = response.json()["key"]
    assert secret.startswith("whsec_")
    return secret


def verified(secret: str, delivery: Delivery) -> dict[str, Any]:
    """The payload, once the reference library accepts the signature."""
    payload: dict[str, Any] = Webhook(secret).verify(delivery.body, delivery.headers)
    return payload


def job_with_webhook(deployment: Deployment, url: str, **fields: Any) -> int:
    body = {"model": "tessera-demo", "prompt": "a harbour", **FAST, "webhook_url": url, **fields}
    with deployment.client() as client:
        return submit(client, body)


def counter(deployment: Deployment, outcome: str) -> float:
    """The webhook attempts with ``outcome`` that the sending process has counted."""
    text = httpx.get(api_process(deployment).metrics_urls[0], timeout=10).text
    match = re.search(
        rf'^tessera_webhook_deliveries_total\{{outcome="{outcome}"\}} (\S+)$', text, re.M
    )
    return float(match.group(1)) if match else 0.0


def test_webhooks_are_signed_and_follow_the_job(
    deployment: Deployment, receiver: WebhookReceiver
) -> None:
    job_id = job_with_webhook(deployment, receiver.url + "/all")
    started, completed = receiver.wait_for("/all", 2)
    with deployment.client() as client:
        task = wait(client, job_id)
    secret = secret_of(deployment)
    first, second = verified(secret, started), verified(secret, completed)
    assert [first["type"], second["type"]] == ["task.started", "task.completed"]
    assert started.headers["webhook-id"] == f"msg_{job_id}_started"
    assert completed.headers["webhook-id"] == f"msg_{job_id}_completed"
    assert first["data"]["job_id"] == job_id and first["data"]["started_at"] is not None
    # The completed event carries the finished task as a poll shows it.
    assert second["data"]["status"] == "completed"
    assert second["data"]["result"]["usage"] == task["result"]["usage"]
    assert [d["url"] is not None for d in second["data"]["result"]["data"]] == [True]
    # Another key's secret does not verify these: secrets are per key.
    other = secret_of(deployment, KEYS[1])
    assert other != secret
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(completed.body, completed.headers)


def test_only_the_events_asked_for_are_sent(
    deployment: Deployment, receiver: WebhookReceiver
) -> None:
    job_with_webhook(deployment, receiver.url + "/completed", webhook_events=["completed"])
    (delivery,) = receiver.wait_for("/completed", 1)
    assert delivery.payload["type"] == "task.completed"
    # Events go out in the order they happened, so a started event would have come first.
    assert len(receiver.at("/completed")) == 1


def test_a_failing_receiver_is_retried_with_exponential_backoff(
    deployment: Deployment, receiver: WebhookReceiver
) -> None:
    receiver.answer = lambda d: (500, {}) if len(receiver.at(d.path)) <= 2 else (200, {})
    job_with_webhook(deployment, receiver.url + "/flaky", webhook_events=["completed"])
    attempts = receiver.wait_for("/flaky", 3)
    secret = secret_of(deployment)
    # One message, three attempts, each signed afresh; waits of 0.5 s, then 1 s.
    assert len({a.headers["webhook-id"] for a in attempts}) == 1
    for attempt in attempts:
        assert verified(secret, attempt)["type"] == "task.completed"
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.45 and gaps[1] >= 0.95, gaps


def test_redirects_are_not_followed_and_the_event_is_given_up(
    deployment: Deployment, receiver: WebhookReceiver
) -> None:
    receiver.answer = lambda _: (307, {"location": receiver.url + "/elsewhere"})
    abandoned = counter(deployment, "abandoned")
    job_with_webhook(deployment, receiver.url + "/moved", webhook_events=["completed"])
    receiver.wait_for("/moved", 4)  # --webhook-max-attempts
    deadline = time.monotonic() + 30
    while counter(deployment, "abandoned") < abandoned + 1:
        assert time.monotonic() < deadline, "the sender never gave the event up"
        time.sleep(0.2)
    assert receiver.at("/elsewhere") == []
    assert len(receiver.at("/moved")) == 4


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        ({"webhook_url": "http://127.0.0.1:9/hook"}, "webhook_url", "public_address"),
        ({"webhook_url": "http://169.254.169.254/latest"}, "webhook_url", "public_address"),
        ({"webhook_url": "http://[::1]/hook"}, "webhook_url", "public_address"),
        ({"webhook_url": "http://localhost/hook"}, "webhook_url", "public_address"),
        ({"webhook_url": "ftp://example.com/hook"}, "webhook_url", "url"),
        ({"webhook_url": "not a url"}, "webhook_url", "url"),
        ({"webhook_url": "http://example.com:99999/"}, "webhook_url", "url"),
        ({"webhook_url": "https://" + "a" * 3000 + ".com/"}, "webhook_url", "string_too_long"),
        ({"webhook_url": 7}, "webhook_url", "string_type"),
        ({"webhook_events": ["completed"]}, "webhook_events", "requires_webhook_url"),
        (
            {"webhook_url": "https://example.com/", "webhook_events": ["finished"]},
            "webhook_events.0",
            "enum",
        ),
        (
            {"webhook_url": "https://example.com/", "webhook_events": []},
            "webhook_events",
            "too_short",
        ),
        (
            {"webhook_url": "https://example.com/", "webhook_events": "completed"},
            "webhook_events",
            "list_type",
        ),
    ],
)
def test_hostile_webhook_fields_are_refused_naming_the_field(
    demo_server: Deployment, body: dict[str, Any], field: str, rule: str
) -> None:
    """A server without the loopback allowance (the shared one) refuses, at submit, every
    URL it would never send to: no job is made."""
    with demo_server.client() as client:
        response = client.post(
            "/images/generations", json={"model": "tessera-demo", "prompt": "x", **body}
        )
    assert assert_error(response, 422, field)["rule"] == rule


def test_a_delivery_pending_when_the_sender_is_killed_arrives_after_restart(
    deployment: Deployment, receiver: WebhookReceiver
) -> None:
    """Runs last in the module: it kills the sending process (SIGKILL, nothing cleans up)
    while a retry is pending, and starts it again."""
    accepting = False
    receiver.answer = lambda _: (200, {}) if accepting else (503, {})
    job_id = job_with_webhook(deployment, receiver.url + "/durable", webhook_events=["completed"])
    (refused,) = receiver.wait_for("/durable", 1)
    sender = api_process(deployment)
    sender.kill()
    tried_while_down = len(receiver.at("/durable"))
    accepting = True
    sender.start()
    # Killed between an attempt and its settling, the sender leaves the entry claimed: the
    # restarted one takes it once that claim's hold (60 s) lapses.
    attempts = receiver.wait_for("/durable", tried_while_down + 1, timeout=120)
    arrived = attempts[-1]
    assert arrived.headers["webhook-id"] == refused.headers["webhook-id"]
    assert arrived.headers["webhook-id"] == f"msg_{job_id}_completed"
    assert verified(secret_of(deployment), arrived)["data"]["status"] == "completed"
