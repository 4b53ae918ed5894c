"""The cluster job store: Redis (or Valkey), shared by gateways and workers.

Every step that must be atomic (take a job, renew or check a lease, complete and bill) is
one Lua script over ONE model's keys, which all carry the model in a hash tag
(``tessera:{model}:...``). Redis Cluster can then spread models over shards while each
model's queue, leases and usage ledger stay together. The ledger is therefore one stream
per model, not one for all: a global stream would sit in another slot than the job it
bills, and the completion could no longer append to it in the same atomic script. A usage
cursor is then a position in each model's stream (``LedgerCursor``). Times come from the
server's clock (``TIME``), so gateways and workers never disagree about when a lease ran out.

Durability is Redis's: run it with ``appendonly yes`` and ``appendfsync always`` for "a job
is durable before its id is returned" (the chart and the tests do). A Redis that restarts
or drops a connection costs a caller some seconds, not an error: the client retries
connection errors and timeouts with exponential backoff for about a minute (redis-py's
``Retry``). A retried script may run twice when only its reply was lost, so every script
that writes is idempotent: a submission already written, or a completion or failure by
the same worker already recorded, answers as the first run did.

M is a model's queue name (``ModelSpec.queue_name``): its ImageModel's ``namespace/name``,
unique in a cluster even when two resources claim one public name (the job hash keeps the
public name). Keys, for a model M and job N:
- ``tessera:next-job-id``             counter for numeric job ids, taken ``ID_BLOCK`` at a time
- ``tessera:job:N:model``             the queue name of N's model (so a task lookup finds it)
- ``tessera:models``                  the queue name of every model that ever had a job
- ``tessera:ledger-id``               this store's random id, part of every usage event id
- ``tessera:usage-cursor:NAME``       an exporter's saved cursor
- ``tessera:usage-cursors``           the names of the saved cursors (retention waits for all)
- ``tessera:{M}:job:N``               the job, a hash (``batch``: its ``batch_key``, if any;
                                      ``webhook``: 1 if it has one)
- ``tessera:{M}:queue``               queued ids, oldest first (a list)
- ``tessera:{M}:queue:order``         the same ids scored by creation time: ZRANK is a queue
                                      position (ids of two gateways are not in time order)
- ``tessera:{M}:queue:deadlines``     queued ids with a Cancel-After, scored by deadline
- ``tessera:{M}:leases``              ids in progress, scored by lease expiry
- ``tessera:{M}:ledger``              usage records, a stream in completion order
- ``tessera:{M}:finished``            finished ids, scored by finish time (retention sweeps)
- ``tessera:{M}:start:W``             worker W's start-up phases (JSON), for 24 hours
- ``tessera:idempotency:{K}:H``       API key K's Idempotency-Key (digest H): its job, 24 h
- ``tessera:{M}:webhooks``            jobs with webhooks still to send, scored by when to look
- ``tessera:{M}:webhook:N``           job N's webhook progress: events done, failed attempts
- channel ``tessera:{M}:events``      a job id on every status change of a job
- channel ``tessera:{M}:submitted``   a new job's id: only processes that lease (workers) and
                                      the autoscaler hear it; a gateway's long-polls and
                                      webhooks wait on jobs already submitted
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import re
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    ConnectionError,
    DataError,
    NoScriptError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from tessera.runtime.errors import (
    IdempotencyMismatch,
    JobFinished,
    JobNotFound,
    QueueFull,
    StoreUnavailable,
)
from tessera.runtime.jobs.base import (
    BATCH_LOOKAHEAD,
    DEADLINE_REASON,
    IDEMPOTENCY_SECONDS,
    QUEUE_FULL_RETRY_AFTER_SECONDS,
    Idempotency,
    InvalidCursor,
    Job,
    JobResult,
    JobStatus,
    LeaseLost,
    QueueDepth,
    StorePolicy,
    UsagePage,
    UsageRecord,
    WebhookDue,
    batch_key,
    result_from_json,
    result_to_json,
    usage_event_id,
)
from tessera.runtime.jobs.signal import ChangeSignal
from tessera.runtime.params import JobParams

log = logging.getLogger(__name__)
# How long closing the store waits for its event subscription to end.
LISTENER_STOP_SECONDS = 5.0

_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
"""

WEBHOOK_FLAG = " webhook"

# A job's change, on its model's channel: its id, with WEBHOOK_FLAG after it when the job
# has a webhook (its hash has a ``webhook`` field), so that processes that send webhooks
# look at its outbox entry for those jobs alone rather than for every change of every job.
_PUBLISH = """
local function publish(channel, key, id)
  if redis.call('HEXISTS', key, 'webhook') == 1 then id = id .. 'FLAG' end
  redis.call('PUBLISH', channel, id)
end
""".replace("FLAG", WEBHOOK_FLAG)

# Put expired leases back in the queue (at its head, oldest first: they were first), or
# fail them after the last attempt. KEYS[1] queue, KEYS[2] leases, KEYS[3] finished,
# KEYS[4] queue order, KEYS[5] deadlines; ARGV[1] job key prefix, ARGV[2] lease seconds,
# ARGV[3] max attempts, ARGV[4] events channel.
_RECLAIM = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
local requeued = {}
for _, id in ipairs(expired) do
  local key = ARGV[1] .. id
  redis.call('ZREM', KEYS[2], id)
  local attempts = tonumber(redis.call('HGET', key, 'attempts'))
  if attempts >= tonumber(ARGV[3]) then
    redis.call('HSET', key, 'status', 'failed', 'finished_at', now, 'worker_id', '',
      'lease_until', '', 'error', 'the worker running this job stopped responding ' ..
      attempts .. ' times (lease of ' .. ARGV[2] .. ' s ran out); giving up')
    redis.call('ZADD', KEYS[3], now, id)
  else
    redis.call('HSET', key, 'status', 'queued', 'progress', 0, 'worker_id', '', 'lease_until', '')
    requeued[#requeued + 1] = id
  end
  publish(ARGV[4], key, id)
end
-- A batch's leases lapse together: pushed newest first, the oldest ends at the head.
table.sort(requeued, function(a, b) return tonumber(a) > tonumber(b) end)
for _, id in ipairs(requeued) do
  redis.call('LPUSH', KEYS[1], id)
  redis.call('ZADD', KEYS[4], redis.call('HGET', ARGV[1] .. id, 'created_at'), id)
end
"""

# Put one job (already off the queue) in progress for worker ARGV[5], under its own lease.
_TAKE = """
local function take(id)
  local key = ARGV[1] .. id
  local lease_until = now + tonumber(ARGV[2])
  redis.call('HSET', key, 'status', 'in_progress', 'started_at', now, 'worker_id', ARGV[5],
    'lease_until', lease_until, 'progress', 0)
  redis.call('HINCRBY', key, 'attempts', 1)
  redis.call('ZADD', KEYS[2], lease_until, id)
  redis.call('ZREM', KEYS[4], id)
  redis.call('ZREM', KEYS[5], id)
  publish(ARGV[4], key, id)
end
"""

# Cancel the queued jobs whose Cancel-After deadline has passed, counting them in
# ``aborted``; KEYS and ARGV as _RECLAIM.
_ABORT_LATE = """
local aborted = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)) do
  redis.call('ZREM', KEYS[5], id)
  local key = ARGV[1] .. id
  if redis.call('HGET', key, 'status') == 'queued' then
    redis.call('LREM', KEYS[1], 1, id)
    redis.call('ZREM', KEYS[4], id)
    redis.call('HSET', key, 'status', 'cancelled', 'finished_at', now, 'error', REASON)
    redis.call('ZADD', KEYS[3], now, id)
    publish(ARGV[4], key, id)
    aborted = aborted + 1
  end
end
""".replace("REASON", json.dumps(DEADLINE_REASON))

# The deadline sweep alone, for gateways. Returns how many it cancelled.
_ABORT_LATE_ONLY = _NOW + _PUBLISH + _ABORT_LATE + "return aborted"

# KEYS as _RECLAIM; ARGV as _RECLAIM, then ARGV[5] worker id.
_LEASE = (
    _NOW
    + _PUBLISH
    + _RECLAIM
    + _ABORT_LATE
    + _TAKE
    + """
local id = redis.call('LPOP', KEYS[1])
if not id then return false end
take(id)
return id
"""
)

# KEYS as _RECLAIM; ARGV as _RECLAIM, then ARGV[5] worker id, ARGV[6] most jobs, ARGV[7]
# batch key ('': the oldest job leads and sets it), ARGV[8] how far past the head to look.
# A job without a batch field (unbatchable, or queued before batching) comes alone.
_LEASE_BATCH = (
    _NOW
    + _PUBLISH
    + _RECLAIM
    + _ABORT_LATE
    + _TAKE
    + """
local limit = tonumber(ARGV[6])
local wanted = ARGV[7]
local taken = {}
if wanted == '' then
  local id = redis.call('LPOP', KEYS[1])
  if not id then return taken end
  take(id)
  taken[1] = id
  wanted = redis.call('HGET', ARGV[1] .. id, 'batch')
  if not wanted then return taken end
end
if #taken < limit then
  for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[8]) - 1)) do
    if redis.call('HGET', ARGV[1] .. id, 'batch') == wanted then
      redis.call('LREM', KEYS[1], 1, id)
      take(id)
      taken[#taken + 1] = id
      if #taken >= limit then break end
    end
  end
end
return taken
"""
)

# KEYS as _RECLAIM; ARGV as _RECLAIM, then ARGV[5] worker id. Returns how many.
_RELEASE = (
    _NOW
    + _PUBLISH
    + """
local count = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if redis.call('HGET', ARGV[1] .. id, 'worker_id') == ARGV[5] then
    redis.call('ZADD', KEYS[2], 0, id)
    count = count + 1
  end
end
"""
    + _RECLAIM
    + "return count"
)

_CHECK_LEASE = """
local key = ARGV[1] .. ARGV[2]
if redis.call('HGET', key, 'status') ~= 'in_progress'
    or redis.call('HGET', key, 'worker_id') ~= ARGV[3] then
  return redis.error_reply('LEASE_LOST')
end
"""

# KEYS[1] leases; ARGV[1] prefix, ARGV[2] id, ARGV[3] worker, ARGV[4] progress, ARGV[5] lease s
_HEARTBEAT = (
    _NOW
    + _CHECK_LEASE
    + """
local lease_until = now + tonumber(ARGV[5])
redis.call('HSET', key, 'progress', ARGV[4], 'lease_until', lease_until)
redis.call('ZADD', KEYS[1], lease_until, ARGV[2])
return 1
"""
)

# A retried completion or failure whose first run landed: the same worker, already done.
# ARGV as _CHECK_LEASE; the status the first run wrote is spliced in.
_ALREADY = """
local done = redis.call('HMGET', ARGV[1] .. ARGV[2], 'status', 'worker_id')
if done[1] == '%s' and done[2] == ARGV[3] then return 1 end
"""

# Completion and its usage record in one step: the stream id is the ledger's order.
# KEYS[1] leases, KEYS[2] ledger, KEYS[3] finished; ARGV[1] prefix, ARGV[2] id, ARGV[3]
# worker, ARGV[4] result JSON, ARGV[5] patches, ARGV[6] amount, ARGV[7] image sizes JSON,
# ARGV[8] events channel, ARGV[9] price per patch, ARGV[10] namespace.
_COMPLETE = (
    _NOW
    + _PUBLISH
    + _ALREADY % "completed"
    + _CHECK_LEASE
    + """
redis.call('HSET', key, 'status', 'completed', 'progress', 100, 'finished_at', now,
  'result', ARGV[4], 'lease_until', '')
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[3], now, ARGV[2])
local job = redis.call('HMGET', key, 'model', 'key_id', 'created_at', 'started_at', 'attempts')
redis.call('XADD', KEYS[2], '*', 'job_id', ARGV[2], 'model', job[1], 'namespace', ARGV[10],
  'key_id', job[2], 'image_sizes', ARGV[7], 'patches', ARGV[5], 'price_per_patch', ARGV[9],
  'amount', ARGV[6], 'submitted_at', job[3], 'started_at', job[4],
  'finished_at', tostring(now), 'attempts', job[5])
publish(ARGV[8], key, ARGV[2])
return 1
"""
)

# KEYS[1] leases, KEYS[2] finished; ARGV[1] prefix, ARGV[2] id, ARGV[3] worker,
# ARGV[4] error, ARGV[5] channel
_FAIL = (
    _NOW
    + _PUBLISH
    + _ALREADY % "failed"
    + _CHECK_LEASE
    + """
redis.call('HSET', key, 'status', 'failed', 'finished_at', now, 'error', ARGV[4],
  'lease_until', '')
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[2])
publish(ARGV[5], key, ARGV[2])
return 1
"""
)

# KEYS[1] queue, KEYS[2] queue order, KEYS[3] deadlines, KEYS[4] (if the job has a webhook)
# the webhook outbox; ARGV[1] job key, ARGV[2] id, ARGV[3] channel, ARGV[4] most jobs waiting
# (0: no limit), then field/value pairs. Returns the creation time, or 0, queueing nothing,
# when the queue is full; a retry of a submission that landed queues nothing twice.
_SUBMIT = (
    _NOW
    + _PUBLISH
    + """
local created = redis.call('HGET', ARGV[1], 'created_at')
if created then return created end
local limit = tonumber(ARGV[4])
if limit > 0 and redis.call('LLEN', KEYS[1]) >= limit then return 0 end
redis.call('HSET', ARGV[1], 'created_at', now, unpack(ARGV, 5))
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[2])
local start_by = redis.call('HGET', ARGV[1], 'start_by')
if start_by then redis.call('ZADD', KEYS[3], start_by, ARGV[2]) end
if KEYS[4] then redis.call('ZADD', KEYS[4], now, ARGV[2]) end
publish(ARGV[3], ARGV[1], ARGV[2])
return tostring(now)
"""
)


# KEYS and ARGV as _RECLAIM, then ARGV[5] seconds queued, ARGV[6] reason. The queue is
# oldest first (reclaimed jobs go back to its head, and were older than all behind them), so
# the sweep stops at the first job that has not waited long enough. Returns how many failed.
_EXPIRE = (
    _NOW
    + _PUBLISH
    + _RECLAIM
    + """
local cutoff = now - tonumber(ARGV[5])
local failed = 0
while true do
  local id = redis.call('LINDEX', KEYS[1], 0)
  if not id then break end
  local key = ARGV[1] .. id
  local created = redis.call('HGET', key, 'created_at')
  if created and tonumber(created) > cutoff then break end
  redis.call('LPOP', KEYS[1])
  redis.call('ZREM', KEYS[4], id)
  if created then
    redis.call('HSET', key, 'status', 'failed', 'finished_at', now, 'error', ARGV[6])
    redis.call('ZADD', KEYS[3], now, id)
    publish(ARGV[4], key, id)
    failed = failed + 1
  end
end
return failed
"""
)

# A cancel against a completion or a lease: one script, so exactly one wins. KEYS as
# _RECLAIM; ARGV[1] job key, ARGV[2] id, ARGV[3] reason, ARGV[4] channel. Returns the
# status the job had; a second run finds it cancelled and changes nothing.
_CANCEL = (
    _NOW
    + _PUBLISH
    + """
local status = redis.call('HGET', ARGV[1], 'status')
if status == 'queued' then
  redis.call('LREM', KEYS[1], 1, ARGV[2])
  redis.call('ZREM', KEYS[4], ARGV[2])
  redis.call('ZREM', KEYS[5], ARGV[2])
elseif status == 'in_progress' then
  redis.call('ZREM', KEYS[2], ARGV[2])
else
  return status or false
end
redis.call('HSET', ARGV[1], 'status', 'cancelled', 'finished_at', now, 'error', ARGV[3],
  'lease_until', '')
redis.call('ZADD', KEYS[3], now, ARGV[2])
publish(ARGV[4], ARGV[1], ARGV[2])
return status
"""
)

# KEYS[1] finished; ARGV[1] seconds ago, ARGV[2] most ids. Oldest first.
_FINISHED = (
    _NOW
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]), 'LIMIT', 0, ARGV[2])
"""
)

# KEYS[1] finished; ARGV[1] job key prefix, then ids.
_DELETE = """
for i = 2, #ARGV do
  redis.call('DEL', ARGV[1] .. ARGV[i])
  redis.call('ZREM', KEYS[1], ARGV[i])
end
return #ARGV - 1
"""


# A job changed: its webhook entry, if any, is due now, unless a failed attempt is waiting
# out its backoff. KEYS[1] outbox, KEYS[2] the job's webhook hash, KEYS[3] the job; ARGV[1] id.
_WEBHOOK_TOUCH = (
    _NOW
    + """
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due then return 0 end
-- Still queued and never started: nothing to report. This is the job's own submission,
-- heard by a relay perhaps after a sender has looked and settled: no change to look at.
local status, started = unpack(redis.call('HMGET', KEYS[3], 'status', 'started_at'))
if status == 'queued' and not started then return 0 end
redis.call('HINCRBY', KEYS[2], 'changes', 1)
if tonumber(due) > now and (tonumber(redis.call('HGET', KEYS[2], 'attempts')) or 0) == 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
end
return 1
"""
)

# KEYS[1] outbox; ARGV[1] most entries, ARGV[2] hold seconds, ARGV[3] webhook hash prefix.
# Returns id, done, attempts, changes for each entry claimed.
_WEBHOOK_CLAIM = (
    _NOW
    + """
local claimed = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])) do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
  local state = redis.call('HMGET', ARGV[3] .. id, 'done', 'attempts', 'changes')
  table.insert(claimed, id)
  table.insert(claimed, state[1] or '')
  table.insert(claimed, state[2] or '0')
  table.insert(claimed, state[3] or '0')
end
return claimed
"""
)

# KEYS[1] outbox, KEYS[2] the job's webhook hash; ARGV[1] id, ARGV[2] seconds until it is
# due again ('' to forget it), ARGV[3] done, ARGV[4] attempts, ARGV[5] last error.
_WEBHOOK_SETTLE = (
    _NOW
    + """
if ARGV[2] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
  return 1
end
local changed = (redis.call('HGET', KEYS[2], 'changes') or '0') ~= ARGV[6]
redis.call('HSET', KEYS[2], 'done', ARGV[3], 'attempts', ARGV[4], 'last_error', ARGV[5])
if ARGV[4] == '0' and changed then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
else
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
end
return 1
"""
)

# Every change is published, and a subscription that reconnects wakes every waiter, so a
# waiter re-reads on a timer only as a last resort.
SAFETY_POLL_SECONDS = 15.0

# Job ids a process takes from the shared counter at once: one INCRBY per block instead of
# an INCR round trip per submission. A process that stops leaves the rest of its block
# unused; ids stay unique.
ID_BLOCK = 100

# Connections per process, and how long a command waits for one when all are busy.
MAX_CONNECTIONS = 100
CONNECTION_WAIT_SECONDS = 20.0

# 0.1, 0.2, 0.4 ... then every 2 s: 40 tries outlast a Redis that is gone for about a minute.
RETRY_ATTEMPTS = 40
RETRY_BACKOFF = ExponentialBackoff(cap=2.0, base=0.1)

# A submission that finds its Idempotency-Key claimed waits this long (at most) for the
# claimant's job to be written: one round trip, usually.
REPLAY_POLL_SECONDS = 0.02
REPLAY_TRIES = 250
# How long an Idempotency-Key's claim lives before its job is written.
CLAIM_SECONDS = 60


class _QuickCommands(AbstractConnection):
    """Packs commands with hiredis, in C, as redis-py's synchronous client does: its asyncio
    connection packs them in Python, argument by argument, and a submission's script call
    has some twenty arguments (a fifth of the store's CPU per submission, bench/gateway.py).
    The same bytes go on the wire (tests/store/test_redis_store.py).

    And writes a command that cannot wait without a timer: with a ``socket_timeout`` (5 s
    by default) redis-py wraps every write in ``asyncio.wait_for``, a task and a timer per
    command, though a write that leaves the socket's buffer under its high-water mark never
    waits (a twentieth of a gateway's CPU per submission). Such a write goes straight to
    the socket, its errors handled as redis-py handles them; a write that may wait for Redis
    to read, one on a connection not yet open, and one that checks the connection's health
    first take redis-py's timed way.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # "SCRIPT LOAD": the words go as separate arguments
            args = (*args[0].encode().split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as error:  # None, a bool, a list: what redis-py refuses too
            raise DataError(error) from error

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        writer = self._writer
        if writer is None or self.health_check_interval or not isinstance(command, list):
            return await super().send_packed_command(command, check_health)
        transport = writer.transport
        _, high = transport.get_write_buffer_limits()
        if transport.get_write_buffer_size() + sum(map(len, command)) > high:
            return await super().send_packed_command(command, check_health)
        try:
            writer.writelines(command)
            await writer.drain()  # at once under the mark; raises if the connection broke
        except OSError as error:
            await self.disconnect(nowait=True)
            raise ConnectionError(f"Error while writing to socket: {error}") from error
        except BaseException:
            await self.disconnect(nowait=True)
            raise


class _PackedConnection(_QuickCommands, Connection):
    pass


class _PackedSSLConnection(_QuickCommands, SSLConnection):
    pass


class _PackedUnixConnection(_QuickCommands, UnixDomainSocketConnection):
    pass


class _QuickPool(aioredis.BlockingConnectionPool):
    """A blocking pool that hands out a free connection without its waiting machinery.

    redis-py's ``BlockingConnectionPool.get_connection`` enters a condition, arms a timeout
    and records observability figures on every call, even when a connection is free: a
    twentieth of a gateway's CPU per submission (bench/gateway.py). A free connection (or
    room for a new one) while nobody waits is taken at once, checked as the pool checks it
    (``ensure_connection``); otherwise, and while Redis announces maintenance (the pool
    then rewrites its connections under a lock), the pool's own way waits in line for one,
    so a waiter is never overtaken.
    """

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._waiting = 0
        self._maintenance = False

    def set_in_maintenance(self, in_maintenance: bool) -> None:
        super().set_in_maintenance(in_maintenance)
        self._maintenance = in_maintenance

    async def get_connection(self) -> Any:  # type: ignore[override]
        if self._waiting or self._maintenance or not self.can_get_connection():
            self._waiting += 1
            try:
                return await super().get_connection()  # type: ignore[no-untyped-call]
            finally:
                self._waiting -= 1
        connection = self.get_available_connection()  # type: ignore[no-untyped-call]
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection


_PACKED = {
    Connection: _PackedConnection,
    SSLConnection: _PackedSSLConnection,
    UnixDomainSocketConnection: _PackedUnixConnection,
}


def _event(data: Any) -> tuple[int | None, bool]:
    """The job an event names (None, to wake everyone, for one that names none), and
    whether that job has a webhook."""
    text = str(data)
    has_webhook = text.endswith(WEBHOOK_FLAG)
    try:
        return int(text.removesuffix(WEBHOOK_FLAG)), has_webhook
    except ValueError:
        return None, False


def _when(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value else None


_STREAM_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
# The last id a millisecond can hold: a position just before the next millisecond.
_LAST_SEQUENCE = 2**64 - 1

StreamId = tuple[int, int]


def _stream_id(text: str) -> StreamId:
    milliseconds, sequence = text.split("-")
    return int(milliseconds), int(sequence)


def _readable_position(text: str) -> bool:
    """A stream id Redis can read after: both parts fit 64 bits, and a later id exists (an
    exclusive start at the very last id is an error in Redis, not an empty range)."""
    if not _STREAM_ID.match(text):
        return False
    milliseconds, sequence = _stream_id(text)
    return milliseconds < _LAST_SEQUENCE and sequence <= _LAST_SEQUENCE


class LedgerCursor:
    """A position in every model's ledger stream, as the text that exports print:
    base64url of ``{"model": "ms-seq"}``, so any model name fits. A model it does not
    name is read from its start."""

    @staticmethod
    def decode(cursor: str) -> dict[str, str]:
        if cursor == "":
            return {}
        try:
            positions = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        except ValueError:
            raise InvalidCursor(cursor) from None
        if not isinstance(positions, dict) or not all(
            isinstance(value, str) and _readable_position(value) for value in positions.values()
        ):
            raise InvalidCursor(cursor)
        return positions

    @staticmethod
    def encode(positions: dict[str, str]) -> str:
        text = json.dumps(dict(sorted(positions.items())), separators=(",", ":"))
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _record_from_entry(ledger_id: str, fields: dict[str, str]) -> UsageRecord:
    job_id = int(fields["job_id"])
    return UsageRecord(
        event_id=usage_event_id(ledger_id, job_id),
        job_id=job_id,
        model=fields["model"],
        namespace=fields["namespace"],
        key_id=fields["key_id"],
        image_sizes=tuple((w, h) for w, h in json.loads(fields["image_sizes"])),
        patches=int(fields["patches"]),
        price_per_patch=Decimal(fields["price_per_patch"]),
        amount=Decimal(fields["amount"]),
        submitted_at=datetime.fromtimestamp(float(fields["submitted_at"]), UTC),
        started_at=datetime.fromtimestamp(float(fields["started_at"]), UTC),
        finished_at=datetime.fromtimestamp(float(fields["finished_at"]), UTC),
        attempts=int(fields["attempts"]),
    )


class RedisJobStore:
    """``JobStore`` over Redis; ``url`` is a ``redis://`` or ``rediss://`` URL."""

    def __init__(self, url: str, policy: StorePolicy | None = None, prefix: str = "tessera"):
        self.policy = policy or StorePolicy()
        self.prefix = prefix
        # A pool that waits for a free connection: redis-py's default pool refuses the
        # 101st concurrent command ("Too many connections"), which 500 clients of one
        # gateway reach (tests/gateway/test_load.py).
        # What BlockingConnectionPool.from_url does (the URL's options win), with the
        # URL's kind of connection packing its commands in C.
        options: dict[str, Any] = {
            "max_connections": MAX_CONNECTIONS,
            "timeout": CONNECTION_WAIT_SECONDS,
            "decode_responses": True,
            "retry": Retry(RETRY_BACKOFF, RETRY_ATTEMPTS),
            "retry_on_error": [ConnectionError, RedisTimeoutError],
            **parse_url(url),
        }
        options["connection_class"] = _PACKED[options.get("connection_class", Connection)]
        pool = _QuickPool(**options)
        self._redis: aioredis.Redis = aioredis.Redis.from_pool(pool)
        self._changes = ChangeSignal(poll_seconds=SAFETY_POLL_SECONDS)
        # The webhook sender's own wake-ups: changes of jobs with webhooks, not of every job.
        self._webhook_changes = ChangeSignal(poll_seconds=SAFETY_POLL_SECONDS)
        self._listener: asyncio.Task[None] | None = None
        self._ledger: str | None = None
        self._ids: Iterator[int] = iter(())
        self._id_lock = asyncio.Lock()
        # Set once this process sends webhooks: its relay then makes changed jobs' entries due.
        self._sends_webhooks = False
        # Set at this process's first lease: its relay then hears new jobs as well.
        self._hears_submissions = False
        self._scripts = {
            name: self._redis.register_script(source)
            for name, source in {
                "lease": _LEASE,
                "lease_batch": _LEASE_BATCH,
                "release": _RELEASE,
                "heartbeat": _HEARTBEAT,
                "complete": _COMPLETE,
                "fail": _FAIL,
                "submit": _SUBMIT,
                "expire": _EXPIRE,
                "cancel": _CANCEL,
                "abort_late": _ABORT_LATE_ONLY,
                "finished": _FINISHED,
                "delete": _DELETE,
                "webhook_touch": _WEBHOOK_TOUCH,
                "webhook_claim": _WEBHOOK_CLAIM,
                "webhook_settle": _WEBHOOK_SETTLE,
            }.items()
        }

    # -- keys -------------------------------------------------------------------------------

    def _model_key(self, model: str, name: str) -> str:
        return f"{self.prefix}:{{{model}}}:{name}"

    def _job_prefix(self, model: str) -> str:
        return self._model_key(model, "job:")

    def _reclaim_args(self, model: str) -> tuple[list[str], list[Any]]:
        keys = [
            self._model_key(model, "queue"),
            self._model_key(model, "leases"),
            self._model_key(model, "finished"),
            self._model_key(model, "queue:order"),
            self._model_key(model, "queue:deadlines"),
        ]
        args = [
            self._job_prefix(model),
            f"{self.policy.lease_seconds:g}",
            self.policy.max_attempts,
            self._model_key(model, "events"),
        ]
        return keys, args

    # -- plumbing ---------------------------------------------------------------------------

    async def _call(self, operation: Any) -> Any:
        """Await a Redis call, translating driver errors; LEASE_LOST becomes ``LeaseLost``."""
        await self._listen()
        try:
            return await operation
        except ResponseError as error:
            if "LEASE_LOST" in str(error):
                raise LeaseLost("this worker no longer holds the job") from None
            raise StoreUnavailable(f"the job store (Redis) refused a command: {error}") from error
        except (RedisError, OSError) as error:
            raise StoreUnavailable(f"the job store (Redis) is unavailable: {error}") from error

    async def _pipelined(
        self,
        commands: Sequence[tuple[Any, ...]],
        script: str,
        keys: list[str],
        args: list[Any],
    ) -> list[Any]:
        """``commands``, then one of our scripts, in one round trip.

        EVALSHA by hand: a pipeline given a registered script first asks SCRIPT EXISTS, one
        more round trip per call. A Redis that lost the script (restarted, flushed) answers
        NOSCRIPT; it is loaded and the whole round trip, idempotent, is sent again.
        """
        source = self._scripts[script]
        batch = [*commands, ("EVALSHA", source.sha, len(keys), *keys, *args)]
        for attempt in range(2):
            try:
                return await self._round_trip(batch)
            except NoScriptError:
                if attempt:
                    raise
            await self._redis.script_load(source.script)
        raise AssertionError("unreachable")

    async def _round_trip(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """``commands`` written at once on one pooled connection, their raw replies read in
        order: what redis-py's ``Pipeline`` does without a transaction, less its per-call
        objects, hooks and reply callbacks (a tenth of a gateway's CPU per submission,
        bench/gateway.py), and with one timer for the round trip rather than one for each
        write and reply. The same ``Retry`` retries the whole batch on a connection error
        or timeout, after dropping the connection, as ``Pipeline.execute`` does; an error
        reply is raised once every reply is read, so the connection never desyncs."""
        pool = self._redis.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        packed = connection.pack_commands(commands)

        async def send() -> list[Any]:
            await connection.send_packed_command(packed)
            replies = []
            # One deadline for all the replies: redis-py arms a timer for every read. A
            # read cut short drops the connection, as redis-py's own timeout does.
            try:
                async with asyncio.timeout(connection.socket_timeout):
                    for _ in commands:
                        try:
                            replies.append(await connection.read_response(timeout=math.inf))
                        except ResponseError as error:
                            replies.append(error)
            except TimeoutError:
                raise RedisTimeoutError("Timeout reading from Redis") from None
            return replies

        async def drop(error: Exception) -> None:
            await connection.disconnect(error=error)

        try:
            replies: list[Any] = await connection.retry.call_with_retry(send, drop)
        finally:
            await pool.release(connection)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    async def _listen(self, *, submissions: bool = False) -> None:
        """Start, once, the task that turns Redis notifications into local wake-ups; a
        process's first lease subscribes it again to hear new jobs as well. A gateway never
        leases: it is not sent every submission of every gateway in the cluster."""
        if submissions and not self._hears_submissions:
            self._hears_submissions = True
            # Subscribing again wakes every waiter to look once: nothing said in between is lost.
            await self._stop_listening()
        if self._listener is None:
            self._listener = asyncio.create_task(self._relay_events())

    async def _stop_listening(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            # Bounded: a subscription stuck on a dead connection must not hold anything up.
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._listener, LISTENER_STOP_SECONDS)
            self._listener = None

    async def _relay_events(self) -> None:
        """Each message carries the id of the job that changed: only its waiters wake (and
        workers, who wait for any change). Only a job with a webhook costs a sender a round
        trip (its outbox entry made due) and a look at the outbox."""
        changes = self.changes(submissions=self._hears_submissions)
        try:
            async for model, job_id, has_webhook in changes:
                if job_id is None:
                    self._webhook_changes.notify()
                elif has_webhook and self._sends_webhooks and model is not None:
                    with contextlib.suppress(StoreUnavailable):  # the sender also polls
                        await self._webhook_due_now(model, job_id)
                    self._webhook_changes.notify(job_id)
                self._changes.notify(job_id)
        finally:
            # Cancelled mid-body, the generator would keep its subscription open until the
            # garbage collector found it: unsubscribe now.
            await changes.aclose()

    async def _model_of(self, job_id: int) -> str:
        model = await self._call(self._redis.get(f"{self.prefix}:job:{job_id}:model"))
        if model is None:
            raise JobNotFound(job_id)
        return str(model)

    async def _read(self, model: str, job_id: int) -> Job:
        fields = await self._call(self._redis.hgetall(f"{self._job_prefix(model)}{job_id}"))
        if not fields:
            raise JobNotFound(job_id)
        return Job(
            id=job_id,
            model=fields["model"],
            key_id=fields["key_id"],
            params=JobParams.model_validate_json(fields["params"]),
            status=JobStatus(fields["status"]),
            created_at=datetime.fromtimestamp(float(fields["created_at"]), UTC),
            progress=int(fields.get("progress") or 0),
            attempts=int(fields.get("attempts") or 0),
            started_at=_when(fields.get("started_at")),
            finished_at=_when(fields.get("finished_at")),
            error=fields.get("error") or None,
            result=result_from_json(fields.get("result")),
            worker_id=fields.get("worker_id") or None,
            lease_until=_when(fields.get("lease_until")),
            start_by=_when(fields.get("start_by")),
        )

    async def _model_for_lease(self, job_id: int) -> str:
        try:
            return await self._model_of(job_id)
        except JobNotFound:
            raise LeaseLost(f"job {job_id} does not exist") from None

    # -- JobStore ---------------------------------------------------------------------------

    async def submit(
        self,
        model: str,
        key_id: str,
        params: JobParams,
        max_queued: int | None = None,
        queue_name: str | None = None,
        *,
        idempotency: Idempotency | None = None,
        start_by: datetime | None = None,
    ) -> Job:
        queue = queue_name or model
        while True:
            job_id = await self._new_job_id()
            if idempotency is None:
                return await self._enqueue(
                    job_id, model, queue, key_id, params, max_queued, start_by
                )
            claim = self._idempotency_key(key_id, idempotency)
            # The claim names its job before the job exists; it lives a minute until the job
            # is written, so a gateway that dies in between blocks the key only that long.
            mine = json.dumps({"fingerprint": idempotency.fingerprint, "job_id": job_id})
            if await self._call(self._redis.set(claim, mine, nx=True, ex=CLAIM_SECONDS)):
                try:
                    job = await self._enqueue(
                        job_id, model, queue, key_id, params, max_queued, start_by
                    )
                except QueueFull:
                    await self._call(self._redis.delete(claim))
                    raise
                await self._call(self._redis.expire(claim, IDEMPOTENCY_SECONDS))
                return job
            if (first := await self._replay(claim, idempotency)) is not None:
                return first
            # The claim lapsed or its submission was refused: claim the key afresh.

    async def replay(self, key_id: str, idempotency: Idempotency) -> Job | None:
        return await self._replay(self._idempotency_key(key_id, idempotency), idempotency)

    async def _new_job_id(self) -> int:
        async with self._id_lock:
            if (job_id := next(self._ids, None)) is None:
                last = int(
                    await self._call(self._redis.incrby(f"{self.prefix}:next-job-id", ID_BLOCK))
                )
                job_id = last - ID_BLOCK + 1
                self._ids = iter(range(job_id + 1, last + 1))
            return job_id

    def _idempotency_key(self, key_id: str, idempotency: Idempotency) -> str:
        digest = hashlib.sha256(idempotency.key.encode()).hexdigest()
        return f"{self.prefix}:idempotency:{{{key_id}}}:{digest}"

    async def _replay(self, claim: str, idempotency: Idempotency) -> Job | None:
        """The job another submission with this key made (waiting the moment it takes to be
        written), or None once its claim is gone."""
        for _ in range(REPLAY_TRIES):
            held = await self._call(self._redis.get(claim))
            if held is None:
                return None
            first = json.loads(held)
            if first["fingerprint"] != idempotency.fingerprint:
                raise IdempotencyMismatch(int(first["job_id"]))
            with contextlib.suppress(JobNotFound):
                return replace(await self.get(int(first["job_id"])), replayed=True)
            if await self._call(self._redis.ttl(claim)) > CLAIM_SECONDS:
                # Its job was written (the claim got its day) and retention has deleted it
                # since: the key names nothing any more.
                await self._call(self._redis.delete(claim))
                return None
            await asyncio.sleep(REPLAY_POLL_SECONDS)
        raise StoreUnavailable(
            "an earlier submission with this Idempotency-Key is still being written; retry"
        )

    async def _enqueue(
        self,
        job_id: int,
        model: str,
        queue: str,
        key_id: str,
        params: JobParams,
        max_queued: int | None,
        start_by: datetime | None,
    ) -> Job:
        pointer = f"{self.prefix}:job:{job_id}:model"
        deadline = [] if start_by is None else ["start_by", f"{start_by.timestamp():f}"]
        # One round trip, in order: the pointer exists before a worker can lease the job.
        _, _, created = await self._call(
            self._pipelined(
                [("SET", pointer, queue), ("SADD", f"{self.prefix}:models", queue)],
                "submit",
                keys=[
                    self._model_key(queue, "queue"),
                    self._model_key(queue, "queue:order"),
                    self._model_key(queue, "queue:deadlines"),
                    *([self._model_key(queue, "webhooks")] if params.webhook_url else []),
                ],
                args=[
                    f"{self._job_prefix(queue)}{job_id}",
                    job_id,
                    self._model_key(queue, "submitted"),
                    max_queued or 0,
                    "model", model,
                    "key_id", key_id,
                    "params", params.model_dump_json(),
                    "status", JobStatus.QUEUED.value,
                    "progress", 0,
                    "attempts", 0,
                    *deadline,
                    *(("batch", batch) if (batch := batch_key(params)) else ()),
                    *(("webhook", "1") if params.webhook_url else ()),
                ],
            )
        )  # fmt: skip
        if not created:
            await self._call(self._redis.delete(pointer))
            raise QueueFull(model, max_queued or 0, QUEUE_FULL_RETRY_AFTER_SECONDS)
        # The job as submitted, not as re-read: a worker may have leased it already, and the
        # submission answers "queued" whatever happens next.
        return Job(
            id=job_id,
            model=model,
            key_id=key_id,
            params=params,
            status=JobStatus.QUEUED,
            created_at=datetime.fromtimestamp(float(created), UTC),
            start_by=start_by,
        )

    async def get(self, job_id: int) -> Job:
        return await self._read(await self._model_of(job_id), job_id)

    async def _take(self, models: list[str], worker_id: str) -> Job | None:
        for model in models:
            keys, args = self._reclaim_args(model)
            job_id = await self._call(self._scripts["lease"](keys=keys, args=[*args, worker_id]))
            if job_id:
                return await self._read(model, int(job_id))
        return None

    async def lease(self, models: list[str], worker_id: str, wait: float = 0.0) -> Job | None:
        await self._listen(submissions=True)
        return await self._changes.wait_until(
            lambda: self._take(models, worker_id), wait, claims=True
        )

    async def _take_batch(
        self, models: list[str], worker_id: str, max_jobs: int, key: str | None
    ) -> list[Job] | None:
        for model in models:
            keys, args = self._reclaim_args(model)
            ids = await self._call(
                self._scripts["lease_batch"](
                    keys=keys, args=[*args, worker_id, max_jobs, key or "", BATCH_LOOKAHEAD]
                )
            )
            if ids:
                return [await self._read(model, int(job_id)) for job_id in ids]
        return None

    async def lease_batch(
        self,
        models: list[str],
        worker_id: str,
        max_jobs: int,
        wait: float = 0.0,
        key: str | None = None,
    ) -> list[Job]:
        await self._listen(submissions=True)
        jobs = await self._changes.wait_until(
            lambda: self._take_batch(models, worker_id, max_jobs, key), wait, claims=True
        )
        return jobs or []

    async def heartbeat(self, job_id: int, worker_id: str, progress: int) -> None:
        model = await self._model_for_lease(job_id)
        await self._call(
            self._scripts["heartbeat"](
                keys=[self._model_key(model, "leases")],
                args=[
                    self._job_prefix(model),
                    job_id,
                    worker_id,
                    max(0, min(progress, 100)),
                    self.policy.lease_seconds,
                ],
            )
        )

    async def complete(
        self, job_id: int, worker_id: str, result: JobResult, namespace: str = ""
    ) -> Job:
        model = await self._model_for_lease(job_id)
        await self._call(
            self._scripts["complete"](
                keys=[
                    self._model_key(model, "leases"),
                    self._model_key(model, "ledger"),
                    self._model_key(model, "finished"),
                ],
                args=[
                    self._job_prefix(model),
                    job_id,
                    worker_id,
                    result_to_json(result),
                    result.patches,
                    str(result.price),
                    json.dumps([[image.width, image.height] for image in result.images]),
                    self._model_key(model, "events"),
                    str(result.price_per_patch),
                    namespace,
                ],
            )
        )
        return await self._read(model, job_id)

    async def fail(self, job_id: int, worker_id: str, error: str) -> Job:
        model = await self._model_for_lease(job_id)
        await self._call(
            self._scripts["fail"](
                keys=[self._model_key(model, "leases"), self._model_key(model, "finished")],
                args=[
                    self._job_prefix(model),
                    job_id,
                    worker_id,
                    error,
                    self._model_key(model, "events"),
                ],
            )
        )
        return await self._read(model, job_id)

    async def release(self, worker_id: str) -> int:
        released = 0
        for model in await self._call(self._redis.smembers(f"{self.prefix}:models")):
            keys, args = self._reclaim_args(model)
            released += int(
                await self._call(self._scripts["release"](keys=keys, args=[*args, worker_id]))
            )
        return released

    async def cancel(self, job_id: int, reason: str) -> Job:
        model = await self._model_of(job_id)
        keys, args = self._reclaim_args(model)
        was = await self._call(
            self._scripts["cancel"](
                keys=keys, args=[f"{self._job_prefix(model)}{job_id}", job_id, reason, args[3]]
            )
        )
        if not was:
            raise JobNotFound(job_id)
        if was in (JobStatus.COMPLETED.value, JobStatus.FAILED.value):
            raise JobFinished(job_id, str(was))
        return await self._read(model, job_id)

    async def abort_late(self, queue_name: str) -> int:
        keys, args = self._reclaim_args(queue_name)
        return int(await self._call(self._scripts["abort_late"](keys=keys, args=args)))

    async def queue_position(self, job: Job) -> int:
        # ZRANK: O(log n) in the queue's jobs. The job names its public model, not its queue.
        queue = await self._model_of(job.id)
        rank = await self._call(self._redis.zrank(self._model_key(queue, "queue:order"), job.id))
        return 0 if rank is None else int(rank)

    async def wait_for_change(self, job_id: int, status: JobStatus, timeout: float) -> Job:
        return await self._changes.wait_for_status(self.get, job_id, status, timeout)

    async def queue_depth(self, model: str) -> QueueDepth:
        return (await self.queue_depths([model]))[model]

    async def queue_depths(self, models: Sequence[str]) -> dict[str, QueueDepth]:
        """Every model's depth in one round trip: the autoscaler reads hundreds at once."""
        pipe = self._redis.pipeline(transaction=False)
        for model in models:
            pipe.llen(self._model_key(model, "queue"))
            pipe.zcard(self._model_key(model, "leases"))
        counts = await self._call(pipe.execute())
        return {
            model: QueueDepth(queued=int(counts[2 * i]), in_progress=int(counts[2 * i + 1]))
            for i, model in enumerate(models)
        }

    async def record_start(self, model: str, worker_id: str, phases: Mapping[str, float]) -> None:
        """A worker's start-up, phase by phase (wall-clock seconds), for the autoscaler to
        report as the model's cold start; kept a day."""
        key = self._model_key(model, f"start:{worker_id}")
        await self._call(self._redis.set(key, json.dumps(dict(phases)), ex=86400))

    async def starts(self, model: str, worker_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """The recorded start-ups of these workers (those that recorded one)."""
        if not worker_ids:
            return {}
        keys = [self._model_key(model, f"start:{w}") for w in worker_ids]
        values = await self._call(self._redis.mget(keys))
        return {w: json.loads(v) for w, v in zip(worker_ids, values, strict=True) if v}

    async def changes(
        self, *, submissions: bool = True
    ) -> AsyncGenerator[tuple[str | None, int | None, bool], None]:
        """(model, job id, whether the job has a webhook) of every job that changes status,
        and (``submissions``) of every new job, as it happens.

        (None, None, False) each time the subscription starts again: changes made while
        unsubscribed went unheard, so a caller looks at everything once more.
        """
        channels = ("events", "submitted") if submissions else ("events",)
        start = len(self.prefix) + 2  # past "tessera:{"
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.psubscribe(*(f"{self.prefix}:*:{name}" for name in channels))
                    yield None, None, False
                    async for message in pubsub.listen():
                        if message.get("type") == "pmessage":
                            channel = str(message["channel"])
                            model = channel[start : channel.rindex("}:")]
                            yield model, *_event(message.get("data"))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as error:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # The subscription's clean-up after a cancel failed, and its error took
                    # the cancel's place: stop, rather than subscribe again.
                    raise asyncio.CancelledError from error
                log.warning("lost the Redis event subscription (%s); retrying", error)
                await asyncio.sleep(1)

    async def changed_models(self) -> AsyncIterator[str]:
        """The model of every job that is submitted or changes status (a reconnect may drop
        some, so callers also poll)."""
        async for model, _, _ in self.changes():
            if model is not None:
                yield model

    async def expire(self, model: str, queued_for: float, reason: str) -> int:
        keys, args = self._reclaim_args(model)
        return int(
            await self._call(
                self._scripts["expire"](keys=keys, args=[*args, f"{queued_for:f}", reason])
            )
        )

    async def finished_before(self, seconds_ago: float, limit: int = 100) -> list[Job]:
        jobs: list[Job] = []
        for model in await self._call(self._redis.smembers(f"{self.prefix}:models")):
            ids = await self._call(
                self._scripts["finished"](
                    keys=[self._model_key(model, "finished")], args=[f"{seconds_ago:f}", limit]
                )
            )
            for job_id in ids:
                with contextlib.suppress(JobNotFound):  # deleted by an overlapping sweep
                    jobs.append(await self._read(model, int(job_id)))
        jobs.sort(key=lambda job: job.finished_at or job.created_at)
        return jobs[:limit]

    async def delete(self, jobs: Sequence[Job]) -> None:
        # A job's keys are its queue's, which its pointer names (``job.model`` is the public
        # name, and two queues may share one).
        async with self._redis.pipeline(transaction=False) as pipeline:
            for job in jobs:
                pipeline.get(f"{self.prefix}:job:{job.id}:model")
            queues = await self._call(pipeline.execute())
        by_queue: dict[str, list[int]] = {}
        for job, queue in zip(jobs, queues, strict=True):
            if queue is not None:  # None: an overlapping sweep deleted it already
                by_queue.setdefault(str(queue), []).append(job.id)
        for queue, ids in by_queue.items():
            await self._call(
                self._scripts["delete"](
                    keys=[self._model_key(queue, "finished")], args=[self._job_prefix(queue), *ids]
                )
            )
        # The pointers live outside the models' hash slots: one DEL each, so Redis Cluster
        # never sees a cross-slot command. A pointer left behind names a job that is gone.
        async with self._redis.pipeline(transaction=False) as pipeline:
            for job in jobs:
                pipeline.delete(f"{self.prefix}:job:{job.id}:model")
            await self._call(pipeline.execute())

    async def _ledger_id(self) -> str:
        if self._ledger is None:
            key = f"{self.prefix}:ledger-id"
            await self._call(self._redis.set(key, secrets.token_hex(8), nx=True))
            self._ledger = str(await self._call(self._redis.get(key)))
        return self._ledger

    async def _models(self) -> list[str]:
        return sorted(await self._call(self._redis.smembers(f"{self.prefix}:models")))

    async def usage(
        self, since: str = "", until: str | None = None, limit: int = 1000
    ) -> UsagePage:
        positions = LedgerCursor.decode(since)
        ends = None if until is None else LedgerCursor.decode(until)
        ledger_id = await self._ledger_id()
        entries: list[tuple[StreamId, str, str, dict[str, str]]] = []
        for model in await self._models():
            end = "+" if ends is None else ends.get(model)
            if end is None:
                continue  # the model had no record yet when ``until`` was made
            rows = await self._call(
                self._redis.xrange(
                    self._model_key(model, "ledger"),
                    min=f"({positions.get(model, '0-0')}",
                    max=end,
                    count=limit,
                )
            )
            entries.extend((_stream_id(id_), model, id_, fields) for id_, fields in rows)
        # Each model's entries stay in stream order; between models, by time.
        entries.sort(key=lambda entry: (entry[0][0], entry[1], entry[0][1]))
        taken = entries[:limit]
        for _, model, stream_id, _ in taken:
            positions[model] = stream_id
        return UsagePage(
            [_record_from_entry(ledger_id, fields) for *_, fields in taken],
            LedgerCursor.encode(positions),
        )

    async def usage_cursor_at(self, moment: datetime) -> str:
        milliseconds = int(moment.timestamp() * 1000)
        before = f"{milliseconds - 1}-{_LAST_SEQUENCE}" if milliseconds > 0 else "0-0"
        return LedgerCursor.encode({model: before for model in await self._models()})

    async def saved_cursor(self, name: str) -> str:
        saved = await self._call(self._redis.get(self._cursor_key(name)))
        return "" if saved is None else str(saved)

    def _cursor_key(self, name: str) -> str:
        return f"{self.prefix}:usage-cursor:{name}"

    @property
    def _cursor_names(self) -> str:
        return f"{self.prefix}:usage-cursors"

    async def save_cursor(self, name: str, cursor: str) -> None:
        LedgerCursor.decode(cursor)
        async with self._redis.pipeline(transaction=False) as pipeline:
            pipeline.set(self._cursor_key(name), cursor)
            pipeline.sadd(self._cursor_names, name)
            await self._call(pipeline.execute())

    async def saved_cursors(self) -> dict[str, str]:
        names = sorted(await self._call(self._redis.smembers(self._cursor_names)))
        if not names:
            return {}
        # One round trip for all of them, a GET each (the keys share no hash slot); a name
        # whose cursor is gone reads from the start.
        async with self._redis.pipeline(transaction=False) as pipeline:
            for name in names:
                pipeline.get(self._cursor_key(name))
            texts = await self._call(pipeline.execute())
        return {
            name: "" if text is None else str(text) for name, text in zip(names, texts, strict=True)
        }

    async def forget_cursor(self, name: str) -> bool:
        async with self._redis.pipeline(transaction=False) as pipeline:
            pipeline.delete(self._cursor_key(name))
            pipeline.srem(self._cursor_names, name)
            deleted, removed = await self._call(pipeline.execute())
        return bool(deleted or removed)

    async def delivered_cursor(self) -> str:
        cursors = await self.saved_cursors()
        if not cursors:
            return ""
        saved = [LedgerCursor.decode(text) for text in cursors.values()]
        models = {model for positions in saved for model in positions}
        # A model a cursor does not name is read from its start by it: nothing delivered.
        return LedgerCursor.encode(
            {
                model: min((positions.get(model, "0-0") for positions in saved), key=_stream_id)
                for model in models
            }
        )

    async def trim_usage(self, delivered: str, keep_seconds: float) -> int:
        seconds, microseconds = await self._call(self._redis.time())
        cutoff = (int(seconds * 1000 + microseconds // 1000 - keep_seconds * 1000), 0)
        trimmed = 0
        for model, position in LedgerCursor.decode(delivered).items():
            milliseconds, sequence = _stream_id(position)
            keep_from = min((milliseconds, sequence + 1), cutoff)
            trimmed += int(
                await self._call(
                    self._redis.xtrim(
                        self._model_key(model, "ledger"),
                        minid=f"{keep_from[0]}-{keep_from[1]}",
                        approximate=False,
                    )
                )
            )
        return trimmed

    # -- WebhookOutbox -----------------------------------------------------------------------

    def _webhook_keys(self, model: str, job_id: int) -> list[str]:
        return [self._model_key(model, "webhooks"), self._model_key(model, f"webhook:{job_id}")]

    async def _webhook_due_now(self, model: str, job_id: int) -> None:
        await self._call(
            self._scripts["webhook_touch"](
                keys=[*self._webhook_keys(model, job_id), f"{self._job_prefix(model)}{job_id}"],
                args=[job_id],
            )
        )

    async def _claim_webhooks(self, limit: int, hold_seconds: float) -> list[WebhookDue] | None:
        claimed: list[WebhookDue] = []
        for model in await self._models():
            if len(claimed) >= limit:
                break
            found = await self._call(
                self._scripts["webhook_claim"](
                    keys=[self._model_key(model, "webhooks")],
                    args=[limit - len(claimed), hold_seconds, self._model_key(model, "webhook:")],
                )
            )
            for i in range(0, len(found), 4):
                done = tuple(filter(None, str(found[i + 1]).split(",")))
                claimed.append(
                    WebhookDue(int(found[i]), done, int(found[i + 2]), int(found[i + 3]), model)
                )
        return claimed or None

    async def claim_webhooks(
        self, limit: int, hold_seconds: float, wait: float = 0.0
    ) -> list[WebhookDue]:
        self._sends_webhooks = True
        await self._listen()
        found = await self._webhook_changes.wait_until(
            lambda: self._claim_webhooks(limit, hold_seconds), wait, claims=True
        )
        return found or []

    async def settle_webhook(
        self, due: WebhookDue, retry_in: float | None, error: str | None = None
    ) -> None:
        await self._call(
            self._scripts["webhook_settle"](
                keys=self._webhook_keys(due.model, due.job_id),
                args=[
                    due.job_id,
                    "" if retry_in is None else f"{retry_in:f}",
                    ",".join(due.done),
                    due.attempts,
                    error or "",
                    due.changes,
                ],
            )
        )

    async def close(self) -> None:
        await self._stop_listening()
        await self._redis.aclose()
