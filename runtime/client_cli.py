"""``tessera generate``, ``tessera edit`` and ``tessera models``: the API from a shell.

These commands use only ``tessera.runtime.client``, the public API, so they work against any
compatible server (Hyperstack's included) given its base URL and key. Every error the API can
answer ends as one ``error: ...`` line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from tessera.runtime.client import (
    DEFAULT_BASE_URL,
    ClientError,
    TaskInfo,
    TesseraClient,
)

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")
_REMOTE = ("http://", "https://", "data:")


class UsageError(Exception):
    """A problem with the command line itself (exit status 2)."""


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``generate``, ``edit`` and ``models`` to the ``tessera`` command."""
    server = argparse.ArgumentParser(add_help=False)
    group = server.add_argument_group("server")
    group.add_argument(
        "--base-url",
        default=None,
        help=f"the API's base URL (env TESSERA_BASE_URL; default {DEFAULT_BASE_URL})",
    )
    # No default shown from the environment: --help must never print a key.
    group.add_argument("--api-key", default=None, help="API key (env TESSERA_API_KEY)")
    group.add_argument(
        "--timeout", type=float, default=600, help="give up waiting after this many seconds"
    )

    job = argparse.ArgumentParser(add_help=False)
    job.add_argument("prompt", help="what the image should show")
    job.add_argument("--model", "-m", help="model name (default: the first one of this task)")
    job.add_argument("--size", help="a preset (square_hd, landscape_4_3, ...) or WIDTHxHEIGHT")
    job.add_argument("--steps", type=int, help="num_inference_steps")
    job.add_argument("--guidance", type=float, help="guidance_scale")
    job.add_argument("--seed", type=int, help="seed; the same seed makes the same image")
    job.add_argument("--num-images", "-n", type=int, help="1 to 4")
    job.add_argument("--negative-prompt", help="what the image should not show")
    job.add_argument("--format", choices=["png", "jpeg", "jpg", "webp"], help="output_format")
    job.add_argument(
        "-o", "--output", help="file, or folder (ending in / or existing) for the images; default ."
    )
    job.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    generate = commands.add_parser(
        "generate", parents=[job, server], help="make images from a prompt (text-to-image)"
    )
    generate.set_defaults(handler=_guarded(_generate))

    edit = commands.add_parser(
        "edit", parents=[job, server], help="edit an image with a prompt (image-to-image)"
    )
    edit.add_argument(
        "--image",
        "-i",
        required=True,
        help="source image: a local file (uploaded via a signed URL) or an http(s) URL",
    )
    edit.set_defaults(handler=_guarded(_edit))

    follow = commands.add_parser(
        "wait", parents=[server], help="follow a submitted job to the end and save its images"
    )
    follow.add_argument("job_id", type=int, help="the job id that generate or edit printed")
    follow.add_argument("-o", "--output", help="file, or folder for the images; default .")
    follow.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    follow.set_defaults(handler=_guarded(_wait))

    models = commands.add_parser("models", parents=[server], help="list the models a server offers")
    models.add_argument("--task", choices=["text-to-image", "image-to-image"])
    models.set_defaults(handler=_guarded(_models))


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn every client error into one line on stderr and an exit status."""

    def run(args: argparse.Namespace) -> int:
        if args.log_level != "debug":
            logging.getLogger("httpx").setLevel(logging.WARNING)
        try:
            return command(args)
        except UsageError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_USAGE
        except ClientError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_ERROR
        except OSError as error:
            print(
                f"error: {error.strerror or error}: {error.filename or ''}".rstrip(": "),
                file=sys.stderr,
            )
            return EXIT_ERROR
        except KeyboardInterrupt:
            print("interrupted (a submitted job keeps running on the server)", file=sys.stderr)
            return EXIT_INTERRUPTED

    return run


def _client(args: argparse.Namespace) -> TesseraClient:
    base_url = args.base_url or os.environ.get("TESSERA_BASE_URL") or DEFAULT_BASE_URL
    key = args.api_key or os.environ.get("TESSERA_API_KEY")
    if not key:
        raise UsageError("no API key: pass --api-key or set TESSERA_API_KEY")
    return TesseraClient(base_url, key)


def _request(args: argparse.Namespace, model: str) -> dict[str, Any]:
    """The request body: only what was asked for, so the model's own defaults apply."""
    body: dict[str, Any] = {"model": model, "prompt": args.prompt}
    if args.size:
        match = _SIZE.match(args.size)
        # The contract's form is an object; a preset name (or anything else) goes as given,
        # and the server, which knows its presets, says whether it exists.
        body["image_size"] = (
            {"width": int(match.group(1)), "height": int(match.group(2))} if match else args.size
        )
    optional = {
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "seed": args.seed,
        "num_images": args.num_images,
        "negative_prompt": args.negative_prompt,
        "output_format": {"jpg": "jpeg"}.get(args.format, args.format),
    }
    body.update({name: value for name, value in optional.items() if value is not None})
    return body


def _pick_model(client: TesseraClient, task: str) -> str:
    models = client.models(task)
    if not models:
        raise UsageError(f"the server offers no {task} model; pass --model")
    name = str(models[0].name)
    print(f"model: {name} (choose another with --model)", file=sys.stderr)
    return name


def _targets(output: str | None, job_id: int, task: TaskInfo) -> list[Path]:
    """Where each image goes: ``-o`` names a file (numbered if several) or a folder."""
    count = len(task.images)
    names = [f"tessera-{job_id}-{i}.{image.extension}" for i, image in enumerate(task.images)]
    if output is None:
        return [Path(name) for name in names]
    path = Path(output).expanduser()
    if output.endswith(("/", os.sep)) or path.is_dir() or not path.suffix:
        return [path / name for name in names]
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(count)]


def _follow(client: TesseraClient, job_id: int, args: argparse.Namespace) -> TaskInfo:
    """Wait for the job with a progress bar on stderr (none with --quiet or off a terminal)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(stderr=True)
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    disable = args.quiet or not console.is_terminal
    with Progress(*columns, console=console, transient=True, disable=disable) as bar:
        row = bar.add_task(f"job {job_id} queued", total=100)

        def show(info: TaskInfo) -> None:
            label = {"in_progress": "generating"}.get(info.status, info.status)
            bar.update(row, description=f"job {job_id} {label}", completed=info.progress or 0)

        return client.wait(job_id, on_progress=show, timeout=args.timeout)


def _run_job(args: argparse.Namespace, *, edit: bool) -> int:
    task_kind = "image-to-image" if edit else "text-to-image"
    source = _source(args.image) if edit else None
    with _client(args) as client:
        model = args.model or _pick_model(client, task_kind)
        body = _request(args, model)
        if source is not None:
            body["image_url"] = source if isinstance(source, str) else str(client.upload(source))
        job_id = client.submit_edit(body) if edit else client.submit_generation(body)
        return _deliver(client, job_id, args, submitted=True)


def _wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _deliver(client, args.job_id, args)


def _deliver(
    client: TesseraClient, job_id: int, args: argparse.Namespace, *, submitted: bool = False
) -> int:
    """Follow the job, save its images, print what it cost; Ctrl-C offers to cancel it."""
    try:
        if submitted:
            # At once, so a client cut off later still knows which job to resume.
            print(f"job {job_id} submitted", file=sys.stderr, flush=True)
        task = _follow(client, job_id, args)
    except KeyboardInterrupt:
        return _interrupted(client, job_id)
    for image, target in zip(task.images, _targets(args.output, job_id, task), strict=True):
        client.download(image, target)
        print(target)
    details = [f"job {job_id}", str(task.raw.get("model") or "")]
    if task.seed is not None:
        details.append(f"seed {task.seed}")
    if task.parameters.get("num_inference_steps"):
        details.append(f"{task.parameters['num_inference_steps']} steps")
    billed = "?" if task.patches is None else f"{task.patches:,}"
    print(f"{billed} patches billed ({', '.join(details)})")
    return 0


def _interrupted(client: TesseraClient, job_id: int) -> int:
    """Cancel only when a person at a terminal says so; a script's Ctrl-C (or SIGINT) with
    no terminal to ask leaves the job running, resumable."""
    resume = f"job {job_id} keeps running; resume with: tessera wait {job_id}"
    if not sys.stdin.isatty():
        print(f"\ninterrupted; {resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        print(f"\ncancel job {job_id}? [y/N] ", end="", file=sys.stderr, flush=True)
        answer = sys.stdin.readline().strip().lower()
    except KeyboardInterrupt:
        answer = ""
    if answer in ("y", "yes"):
        client.cancel(job_id)
        print(f"job {job_id} cancelled; it is not billed", file=sys.stderr)
    else:
        print(resume, file=sys.stderr)
    return EXIT_INTERRUPTED


def _source(image: str) -> str | Path:
    """A URL is sent as is; a local file (checked before anything is sent) is uploaded."""
    if image.startswith(_REMOTE):
        return image
    path = Path(image).expanduser()
    if not path.is_file():
        raise UsageError(f"no such image file: {image} (or pass an http(s) URL)")
    return path


def _generate(args: argparse.Namespace) -> int:
    return _run_job(args, edit=False)


def _edit(args: argparse.Namespace) -> int:
    return _run_job(args, edit=True)


def _money(value: Any) -> str:
    """``"0.79000000"`` -> ``$0.79``; prices are decimal strings in the API."""
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return "-"
    text = format(amount.normalize(), "f")
    return f"${text}" if "." in text else f"${text}.00"


def _models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        models = client.models(args.task)
    if not models:
        print("no models", file=sys.stderr)
        return 0
    rows = [("MODEL", "TASK", "PROVIDER", "STEPS", "PRICE / 1M PATCHES")]
    for model in models:
        pricing = model.raw.get("pricing") or {}
        steps = model.default("num_inference_steps")
        rows.append(
            (
                model.name,
                model.task,
                model.provider or "-",
                "-" if steps is None else str(steps),
                _money(pricing.get("price_per_million_patches")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0
