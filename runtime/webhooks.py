"""Webhooks: signed POSTs of a job's events, sent from the store's durable outbox.

Signing follows the Standard Webhooks spec (https://www.standardwebhooks.com): headers
``webhook-id`` (the same on every attempt at one event, so a receiver can drop repeats),
``webhook-timestamp`` (seconds) and ``webhook-signature`` (``v1,`` and the base64 HMAC-SHA256
of ``id.timestamp.body`` under the key's ``whsec_`` secret). Each API key has its own secret,
derived from the server's signing secret, so every gateway replica signs alike and nothing
is stored.

Delivery is at least once. The store writes a job's outbox entry with the job and makes it
due whenever the job changes; a sender claims due entries for a while (``hold_seconds``),
sends what the job's state says happened and was not yet sent, and records the result. A
sender that crashes mid-delivery leaves its entries to be claimed again once the hold runs
out, by itself after a restart or by another replica. A failed attempt is retried with
exponential backoff, up to ``max_attempts``; then that event is given up (logged, counted).

Requests go through ``PinnedHttp``, the same checked and pinned connection as fetched
images: never to a private, loopback or link-local address unless the server allows it,
redirects never followed (a 3xx is a failed attempt), bounded time, and at most
``max_response_bytes`` of the answer read.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from tessera.runtime import metrics
from tessera.runtime.errors import InvalidParameter, JobNotFound, StoreUnavailable
from tessera.runtime.jobs.base import Job, WebhookDue, WebhookOutbox
from tessera.runtime.params import WebhookEvent
from tessera.runtime.service import ImageService
from tessera.runtime.sources import IPNetwork, PinnedHttp, parse_url

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"  # noqa: S105 - the spec's prefix, not a secret


def webhook_secret(signing_secret: bytes, key_id: str) -> str:
    """The ``whsec_`` secret that signs the webhooks of key ``key_id``."""
    derived = hmac.new(signing_secret, b"tessera webhooks " + key_id.encode(), hashlib.sha256)
    return SECRET_PREFIX + base64.b64encode(derived.digest()).decode()


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header of one attempt (Standard Webhooks, version 1)."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def happened(job: Job) -> list[str]:
    """The events the job's state shows, in the order they happened."""
    events = []
    if job.started_at is not None:
        events.append(WebhookEvent.STARTED.value)
    if job.status.finished:
        events.append(job.status.value)
    return events


def to_send(job: Job, done: tuple[str, ...]) -> list[str]:
    """What the job asked for, has happened, and was not yet sent (or given up)."""
    wanted = {event.value for event in job.params.webhook_events}
    return [event for event in happened(job) if event in wanted and event not in done]


@dataclass(frozen=True)
class WebhookPolicy:
    timeout_seconds: float = 10.0
    max_response_bytes: int = 64 * 1024
    max_attempts: int = 10
    # The n-th failed attempt waits first_retry_seconds * 2**(n-1), at most max_retry_seconds:
    # 5 s, 10 s, 20 s ... about 43 minutes from the first attempt to the tenth.
    first_retry_seconds: float = 5.0
    max_retry_seconds: float = 3600.0
    # Longer than one attempt can take, so a live sender never has its entry taken over.
    hold_seconds: float = 60.0
    # A job with nothing to send yet is looked at again this often even if no change of it
    # was heard (a bulk expiry, a dropped Redis subscription).
    recheck_seconds: float = 30.0
    # Entries worked on at once, and the longest a sender waits for a change between looks.
    batch: int = 16
    poll_seconds: float = 1.0
    # Where webhooks may go besides public addresses (tests' loopback receivers).
    allow_private_addresses: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()

    def http(self) -> PinnedHttp:
        return PinnedHttp(self.allow_private_addresses, self.allowed_networks)

    def retry_in(self, attempts: int) -> float:
        return min(self.first_retry_seconds * 2.0 ** (attempts - 1), self.max_retry_seconds)


class DeliveryFailed(Exception):
    """One attempt did not end in a 2xx; the message says why, for the outbox's record."""


class WebhookSender:
    def __init__(
        self,
        service: ImageService,
        outbox: WebhookOutbox,
        signing_secret: bytes,
        http: PinnedHttp,
        policy: WebhookPolicy | None = None,
    ):
        self.service = service
        self.outbox = outbox
        self.signing_secret = signing_secret
        self.http = http
        self.policy = policy or WebhookPolicy()

    async def run(self, stop: asyncio.Event) -> None:
        """Send what is due until ``stop``; a store outage only delays deliveries."""
        while not stop.is_set():
            try:
                due = await self.outbox.claim_webhooks(
                    self.policy.batch, self.policy.hold_seconds, wait=self.policy.poll_seconds
                )
                await asyncio.gather(*(self._work(entry) for entry in due))
            except StoreUnavailable as error:
                log.warning("webhooks wait for the job store: %s", error)
                await asyncio.sleep(self.policy.poll_seconds)

    async def _work(self, due: WebhookDue) -> None:
        try:
            job = await self.service.store.get(due.job_id)
        except JobNotFound:  # deleted by retention: nothing left to say
            await self.outbox.settle_webhook(due, None)
            return
        for event in to_send(job, due.done):
            try:
                await self.send(job, event)
            except DeliveryFailed as error:
                attempts = due.attempts + 1
                if attempts < self.policy.max_attempts:
                    metrics.WEBHOOK_DELIVERIES.labels("failed").inc()
                    retry = dataclasses.replace(due, attempts=attempts)
                    await self.outbox.settle_webhook(
                        retry, self.policy.retry_in(attempts), str(error)
                    )
                    return
                metrics.WEBHOOK_DELIVERIES.labels("abandoned").inc()
                log.warning(
                    "job %s: gave up on its %s webhook after %d attempts: %s",
                    job.id,
                    event,
                    attempts,
                    error,
                )
            else:
                metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
            due = dataclasses.replace(due, done=(*due.done, event), attempts=0)
        finished = job.status.finished
        await self.outbox.settle_webhook(due, None if finished else self.policy.recheck_seconds)

    async def body(self, job: Job, event: str) -> bytes:
        """The payload: the event, and the task as a poll shows it when the attempt is made."""
        payload = {
            "type": f"task.{event}",
            "timestamp": datetime.now(UTC).isoformat(),
            "data": await self.service.task_snapshot(job),
        }
        return json.dumps(payload, separators=(",", ":")).encode()

    async def send(self, job: Job, event: str) -> None:
        """One attempt at one event, or ``DeliveryFailed``."""
        assert job.params.webhook_url is not None
        body = await self.body(job, event)
        message_id = f"msg_{job.id}_{event}"
        timestamp = int(time.time())
        secret = webhook_secret(self.signing_secret, job.key_id)
        headers = {
            "content-type": "application/json",
            "user-agent": "tessera-webhooks",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(secret, message_id, timestamp, body),
        }
        timeout = httpx.Timeout(self.policy.timeout_seconds)
        try:
            url = parse_url(job.params.webhook_url, "webhook_url")
            async with (
                asyncio.timeout(self.policy.timeout_seconds),
                self.http.send(
                    "POST", url, "webhook_url", timeout, content=body, headers=headers
                ) as answer,
            ):
                read = 0
                async for chunk in answer.aiter_raw():
                    read += len(chunk)
                    if read >= self.policy.max_response_bytes:
                        break
        except InvalidParameter as error:
            raise DeliveryFailed(error.message) from None
        except (httpx.HTTPError, httpx.InvalidURL, TimeoutError, OSError) as error:
            raise DeliveryFailed(f"{type(error).__name__}: {error}") from None
        if not 200 <= answer.status_code < 300:
            where = f" to {answer.headers['location']}" if answer.is_redirect else ""
            raise DeliveryFailed(f"the receiver answered HTTP {answer.status_code}{where}")
