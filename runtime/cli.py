"""The ``tessera`` command.

Subcommands from other parts of the distribution (``tessera operator``) register through the
``tessera.commands`` entry-point group, so this module never imports them.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from urllib.parse import urlsplit

from tessera.runtime import client_cli
from tessera.runtime.params import IntRange, ParameterLimits, Task

DEFAULT_DATA_DIR = Path(os.environ.get("TESSERA_DATA_DIR", "~/.local/share/tessera")).expanduser()
DEMO_MODELS = {"tessera-demo": Task.TEXT_TO_IMAGE, "tessera-demo-edit": Task.IMAGE_TO_IMAGE}
# The demo pipelines make a 1024x1024 image in well under a second on one CPU core at four
# steps; they publish limits that keep every request within a few seconds.
DEMO_LIMITS = ParameterLimits(
    max_side=2048,
    num_inference_steps=IntRange(min=1, max=50, default=4),
)


def _model_argument(value: str) -> tuple[str, Path, Task]:
    """``NAME=PATH[:TASK]``."""
    name, sep, location = value.partition("=")
    if not sep or not name or not location:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH[:TASK], not {value!r}")
    task = Task.TEXT_TO_IMAGE
    path, colon, suffix = location.rpartition(":")
    if colon and suffix in {t.value for t in Task}:
        location, task = path, Task(suffix)
    return name, Path(location).expanduser(), task


def _origin_argument(value: str) -> str:
    """``*`` or ``scheme://host[:port]``, as browsers send it in ``Origin``: a path or a
    trailing slash would never match, and CORS would fail without saying why."""
    origin = value.rstrip("/")
    if origin == "*":
        return origin
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
        raise argparse.ArgumentTypeError(
            f"expected an origin such as https://app.example.com (or '*'), not {value!r}"
        )
    return origin


def _network_argument(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a network such as 10.20.0.0/16, not {value!r}"
        ) from None


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from tessera.runtime.api.app import create_app
    from tessera.runtime.config import ServerConfig
    from tessera.runtime.keys import KeyRing, new_key, write_key_file
    from tessera.runtime.models import ModelSpec
    from tessera.runtime.sources import SourceLimits

    data_dir: Path = args.data_dir.expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    models = []
    if args.demo:
        from tessera.runtime.demo import ensure_demo_pipeline

        for name, task in DEMO_MODELS.items():
            print(f"preparing demo model {name} ...", file=sys.stderr, flush=True)
            path = ensure_demo_pipeline(data_dir / "models" / name, task)
            models.append(
                ModelSpec(
                    name=name,
                    task=task,
                    weights=str(path),
                    limits=DEMO_LIMITS,
                    description="A tiny random-weight Flux pipeline for trying the API on a CPU; "
                    "its images are coloured noise.",
                )
            )
    for name, path, task in args.model:
        if not (path / "model_index.json").exists():
            print(f"error: {path} holds no diffusers pipeline (model_index.json)", file=sys.stderr)
            return 2
        models.append(ModelSpec(name=name, task=task, weights=str(path)))
    if not models:
        print("error: nothing to serve: pass --demo or --model NAME=PATH", file=sys.stderr)
        return 2

    created_key = None
    if args.api_keys_file:
        keys = KeyRing.from_file(args.api_keys_file)
    elif os.environ.get("TESSERA_API_KEYS"):
        keys = KeyRing.from_keys(k.strip() for k in os.environ["TESSERA_API_KEYS"].split(","))
    else:
        key_file = data_dir / "api-keys.json"
        if key_file.exists():
            keys = KeyRing.from_file(key_file)
        else:
            created_key = new_key()
            write_key_file(key_file, [created_key])
            keys = KeyRing.from_keys([created_key])
    if not len(keys):
        print("error: no API keys configured", file=sys.stderr)
        return 2

    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host  # noqa: S104
    public_url = (args.public_url or f"http://{shown_host}:{args.port}").rstrip("/")
    config = ServerConfig(
        data_dir=data_dir,
        models=models,
        keys=keys,
        public_url=public_url,
        sources=SourceLimits(
            allow_private_addresses=args.allow_private_image_urls,
            allowed_networks=tuple(args.allow_image_network),
        ),
        device=args.device,
        cors_origins=tuple(args.cors_origin),
    )
    print(f"Tessera image API: {public_url}/v1  (docs: {public_url}/docs)", flush=True)
    print(f"models: {', '.join(m.name for m in models)}", flush=True)
    if created_key:
        print(f"API key (shown once, stored hashed in {data_dir}): {created_key}", flush=True)
    elif not args.api_keys_file and not os.environ.get("TESSERA_API_KEYS"):
        print(
            f"API key: the one printed when {data_dir} was first used (only its hash is kept;"
            f" delete {data_dir / 'api-keys.json'} to make a new one)",
            flush=True,
        )
    uvicorn.run(
        create_app(config),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.log_level == "debug",
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    import asyncio

    from tessera.runtime.worker.main import WorkerSettings, run_worker

    queue: str = args.queue
    storage = args.storage
    if storage is None:
        if not queue.startswith("sqlite:///"):
            print("error: --storage is required with this queue", file=sys.stderr)
            return 2
        storage = Path(queue.removeprefix("sqlite://")).parent / "files"
    settings = WorkerSettings(
        model=args.model,
        weights=args.weights,
        queue=queue,
        task=Task(args.task),
        storage=storage,
        port=args.port,
        host=args.host,
        device=args.device,
        dtype=args.dtype,
    )
    asyncio.run(run_worker(settings))
    return 0


def _demo_model(args: argparse.Namespace) -> int:
    from tessera.runtime.demo import build_demo_pipeline

    path = build_demo_pipeline(args.path, Task(args.task))
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tessera", description="Serve diffusers image models behind one image API."
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the image API with an embedded store and worker (one process)"
    )
    serve.add_argument("--demo", action="store_true", help="serve two tiny demo models")
    serve.add_argument(
        "--model",
        action="append",
        default=[],
        type=_model_argument,
        metavar="NAME=PATH[:TASK]",
        help="serve the diffusers pipeline in PATH as NAME (task: text-to-image by default)",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    serve.add_argument("--public-url", help="base URL clients reach this server at")
    serve.add_argument("--api-keys-file", type=Path, help="file of API keys (see docs)")
    serve.add_argument("--device", help="torch device for the pipelines (default: cuda if any)")
    serve.add_argument(
        "--allow-private-image-urls",
        action="store_true",
        help="let image_url reach private and loopback addresses (off: SSRF protection)",
    )
    serve.add_argument(
        "--allow-image-network",
        action="append",
        default=[],
        type=_network_argument,
        metavar="CIDR",
        help="let image_url reach this network though it is not public (an internal image "
        "host, e.g. 10.20.0.0/16); repeatable",
    )
    serve.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        type=_origin_argument,
        metavar="ORIGIN",
        help="let web pages from ORIGIN (e.g. https://app.example.com) call the API from a "
        "browser; repeatable, '*' for any",
    )
    serve.set_defaults(handler=_serve)

    worker = commands.add_parser("worker", help="run one model's worker against a job queue")
    worker.add_argument("--model", required=True, help="the model's public name")
    worker.add_argument("--weights", required=True, type=Path, help="diffusers pipeline folder")
    worker.add_argument("--queue", required=True, help="job store URL, e.g. sqlite:///data/jobs.db")
    worker.add_argument("--task", choices=[t.value for t in Task], default=Task.TEXT_TO_IMAGE.value)
    worker.add_argument(
        "--storage", type=Path, help="folder for results (default: beside a sqlite queue)"
    )
    worker.add_argument("--port", type=int, default=8080, help="health and metrics port")
    worker.add_argument(
        "--host",
        default="0.0.0.0",  # noqa: S104 - a worker's probes come from outside its pod
        help="address the health and metrics port listens on",
    )
    worker.add_argument("--device", help="torch device (default: cuda if any, else cpu)")
    worker.add_argument("--dtype", help="torch dtype, e.g. bfloat16 (default per device)")
    worker.set_defaults(handler=_worker)

    demo = commands.add_parser("demo-model", help="write a tiny random-weight pipeline to PATH")
    demo.add_argument("path", type=Path)
    demo.add_argument("--task", choices=[t.value for t in Task], default=Task.TEXT_TO_IMAGE.value)
    demo.set_defaults(handler=_demo_model)
    client_cli.register(commands)

    for entry in entry_points(group="tessera.commands"):
        try:
            register = entry.load()
        except ImportError as error:  # that part's extra is not installed
            logging.getLogger(__name__).debug("skipping %s: %s", entry.name, error)
            continue
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
