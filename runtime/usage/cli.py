"""``tessera usage export``, ``push`` and ``cursors``: thin commands over the ledger."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tessera.runtime.settings import (
    UsageCursorsSettings,
    UsageExportSettings,
    UsagePushSettings,
    settings_from,
)
from tessera.runtime.usage.formats import Format

if TYPE_CHECKING:
    from tessera.runtime.jobs.base import JobStore


async def _on_store(queue: str, work: Callable[[JobStore], Awaitable[int]]) -> int:
    """``work``'s exit code on the job store at ``queue``, closed after; a Tessera error is
    its message on stderr and exit 2 (the caller's to fix) or 1 (the store's)."""
    from tessera.runtime.errors import TesseraError
    from tessera.runtime.jobs import open_store

    store = open_store(queue)
    try:
        return await work(store)
    except TesseraError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2 if error.status_code < 500 else 1
    finally:
        await store.close()


def _export(args: argparse.Namespace) -> int:
    settings = settings_from(UsageExportSettings, args)
    return asyncio.run(_run_export(settings))


async def _run_export(settings: UsageExportSettings) -> int:
    from tessera.runtime.usage.export import export_range, trim_delivered

    try:
        out = sys.stdout.buffer if settings.output is None else settings.output.open("wb")
    except OSError as error:
        print(f"error: --output: cannot write {settings.output}: {error.strerror}", file=sys.stderr)
        return 2

    async def export(store: JobStore) -> int:
        since = settings.since
        if since is None:
            name = settings.cursor_name
            since = "" if name is None else await store.saved_cursor(name)
        until = settings.until
        if settings.before is not None:
            until = await store.usage_cursor_at(settings.before)
        cursor = await export_range(store, out, settings.format, since, until, settings.source)
        out.flush()
        if settings.cursor_name is not None:
            # Only once the whole range is out: a crash before exports it again next time.
            await store.save_cursor(settings.cursor_name, cursor)
            await trim_delivered(store, settings.retention_seconds)
        # Last, on its own line: what the next export passes as --since.
        print(f"cursor: {cursor}", file=sys.stderr)
        return 0

    try:
        return await _on_store(settings.queue, export)
    finally:
        if out is not sys.stdout.buffer:
            out.close()


def _push(args: argparse.Namespace) -> int:
    settings = settings_from(UsagePushSettings, args)
    return asyncio.run(_run_push(settings))


async def _run_push(settings: UsagePushSettings) -> int:
    import httpx

    from tessera.runtime.usage.export import Pusher

    headers = {}
    if settings.push_token is not None:
        headers["authorization"] = f"Bearer {settings.push_token.get_secret_value()}"

    async def push(store: JobStore) -> int:
        async with httpx.AsyncClient(headers=headers, timeout=30) as client:
            pusher = Pusher(store, client, settings.to, settings.source, settings.policy())
            # SIGTERM stops it even mid-retry, with the cursor where the last 2xx left it.
            work = asyncio.create_task(pusher.drain() if settings.once else pusher.run())
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, work.cancel)
            with contextlib.suppress(asyncio.CancelledError):
                await work
        return 0

    return await _on_store(settings.queue, push)


def _cursors(args: argparse.Namespace) -> int:
    settings = settings_from(UsageCursorsSettings, args)
    return asyncio.run(_run_cursors(settings))


async def _run_cursors(settings: UsageCursorsSettings) -> int:
    """List the saved cursors, name and position, after forgetting one if asked: a name
    nobody exports under any more holds every record after it in the store."""

    async def cursors(store: JobStore) -> int:
        if settings.forget is not None:
            if not await store.forget_cursor(settings.forget):
                saved = ", ".join(await store.saved_cursors()) or "none"
                print(
                    f"error: --forget: no cursor is saved as {settings.forget!r} (saved: {saved})",
                    file=sys.stderr,
                )
                return 2
            print(f"forgot cursor {settings.forget!r}", file=sys.stderr)
        for name, cursor in (await store.saved_cursors()).items():
            print(f"{name}\t{cursor}")
        return 0

    return await _on_store(settings.queue, cursors)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``usage export``, ``push`` and ``cursors`` to the ``tessera`` command."""
    quiet = argparse.SUPPRESS
    usage = commands.add_parser("usage", help="export or push the usage ledger (billing)")
    actions = usage.add_subparsers(dest="usage_command", required=True, metavar="ACTION")

    export = actions.add_parser(
        "export",
        argument_default=quiet,
        help="write a range of usage records; the cursor to resume from goes to stderr last",
    )
    export.add_argument("--queue", help="the job store: redis://HOST:PORT/DB or sqlite:///path")
    export.add_argument("--since", metavar="CURSOR", help="after this cursor (default: start)")
    export.add_argument("--until", metavar="CURSOR", help="up to this cursor (default: now)")
    export.add_argument(
        "--before", metavar="TIME", help="up to the records that finished before TIME (RFC 3339)"
    )
    export.add_argument("--format", choices=[f.value for f in Format], help="default jsonl")
    export.add_argument("--source", help="the CloudEvents source (default tessera)")
    export.add_argument("--output", type=Path, help="write to this file (default: stdout)")
    export.add_argument(
        "--cursor-name",
        metavar="NAME",
        help="resume from the cursor saved as NAME, and save the one reached; the store then"
        " trims what every saved cursor has passed, after --retention-seconds",
    )
    export.add_argument(
        "--retention-seconds",
        type=float,
        help="with --cursor-name: keep exported records this long in the store (a week)",
    )
    export.set_defaults(handler=_export)

    push = actions.add_parser(
        "push",
        argument_default=quiet,
        help="deliver usage as CloudEvents batches to an HTTP receiver, e.g. OpenMeter",
    )
    push.add_argument("--queue", help="the job store: redis://HOST:PORT/DB or sqlite:///path")
    push.add_argument("--to", help="the receiver, e.g. http://openmeter/api/v1/events")
    push.add_argument("--source", help="the CloudEvents source (default tessera)")
    push.add_argument("--batch-size", type=int, help="events per request (default 100)")
    push.add_argument(
        "--retention-seconds",
        type=float,
        help="keep delivered records this long in the store (default a week)",
    )
    push.add_argument("--retry-max-seconds", type=float, help="longest wait between tries")
    push.add_argument("--idle-seconds", type=float, help="rest this long when caught up")
    push.add_argument("--once", action="store_true", help="deliver what there is, then exit")
    push.set_defaults(handler=_push)

    cursors = actions.add_parser(
        "cursors",
        argument_default=quiet,
        help="list the saved cursors (retention waits for every one), or forget one",
    )
    cursors.add_argument("--queue", help="the job store: redis://HOST:PORT/DB or sqlite:///path")
    cursors.add_argument(
        "--forget",
        metavar="NAME",
        help="drop the cursor saved as NAME (an export nobody runs any more), then list",
    )
    cursors.set_defaults(handler=_cursors)
