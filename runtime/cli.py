"""The ``tessera`` command.

Subcommands from other parts of the distribution (``tessera operator``) register through the
``tessera.commands`` entry-point group, so this module never imports them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from tessera.runtime import client_cli
from tessera.runtime.config import ConfigError, ServerConfig, gateway_config, serve_config
from tessera.runtime.params import Task
from tessera.runtime.settings import (
    ApiSettings,
    GatewaySettings,
    ServeSettings,
    WorkerSettings,
    parse_image_model_argument,
    parse_model_argument,
    parse_network,
    parse_origin,
    parse_rates,
    settings_from,
)
from tessera.runtime.usage import cli as usage_cli


def _origin_argument(value: str) -> str:
    try:
        return parse_origin(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _network_argument(value: str) -> IPv4Network | IPv6Network:
    try:
        return parse_network(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _rates_argument(value: str) -> str:
    try:
        return parse_rates(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{value!r}: {error}") from None


def _model_argument(value: str) -> str:
    try:
        parse_model_argument(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def _image_model_argument(value: str) -> str:
    try:
        parse_image_model_argument(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def _run_api(config: ServerConfig, settings: ApiSettings, log_level: str) -> int:
    import uvicorn

    from tessera.runtime.api.app import create_app
    from tessera.runtime.api.protocol import DeadlineProtocol

    print(
        f"Tessera image API: {config.public_url}/v1  (docs: {config.public_url}/docs)", flush=True
    )
    print(f"OpenAI-compatible: {config.public_url}/openai/v1", flush=True)
    print(f"models: {', '.join(m.name for m in config.models)}", flush=True)
    if config.metrics_port is not None:
        print(f"metrics: http://{config.metrics_host}:{config.metrics_port}/metrics", flush=True)
    uvicorn.run(
        create_app(config),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=log_level == "debug",
        http=DeadlineProtocol.with_deadlines(config.client_deadlines),
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    settings = settings_from(ServeSettings, args)
    # Everything this process writes (the job database and its WAL, images, secrets) is
    # its user's alone.
    os.umask(0o077)
    if settings.demo:
        print("preparing demo models ...", file=sys.stderr, flush=True)
    try:
        assembled = serve_config(settings)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    data_dir = settings.data_dir
    if assembled.created_key:
        print(
            f"API key (an admin key, shown once, stored hashed in {data_dir}): "
            f"{assembled.created_key}",
            flush=True,
        )
    elif settings.api_keys_file is None and not settings.api_keys:
        print(
            f"API key: the one printed when {data_dir} was first used (only its hash is kept;"
            f" delete {data_dir / 'api-keys.json'} to make a new one)",
            flush=True,
        )
    return _run_api(assembled.config, settings, args.log_level)


def _gateway(args: argparse.Namespace) -> int:
    settings = settings_from(GatewaySettings, args)
    try:
        assembled = gateway_config(settings)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return _run_api(assembled.config, settings, args.log_level)


def _worker(args: argparse.Namespace) -> int:
    import asyncio

    from tessera.runtime.worker.main import run_worker

    settings = settings_from(WorkerSettings, args)
    try:
        asyncio.run(run_worker(settings))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _demo_model(args: argparse.Namespace) -> int:
    from tessera.runtime.demo import build_demo_pipeline

    path = build_demo_pipeline(args.path, Task(args.task))
    print(path)
    return 0


def _api_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of every command that answers the image API."""
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8000)")
    parser.add_argument("--public-url", help="base URL clients reach this server at")
    parser.add_argument("--api-keys-file", type=Path, help="file of API keys (see docs)")
    parser.add_argument(
        "--signing-secret-file",
        type=Path,
        help="the secret that signs result and upload URLs (every replica needs the same)",
    )
    parser.add_argument("--url-ttl-seconds", type=int, help="how long signed URLs last")
    parser.add_argument(
        "--retention-seconds",
        type=float,
        help="how long a finished job and its images are kept (default 86400: 24 h)",
    )
    parser.add_argument(
        "--allow-private-image-urls",
        action="store_true",
        help="let image_url reach private and loopback addresses (off: SSRF protection)",
    )
    parser.add_argument(
        "--allow-image-network",
        action="append",
        type=_network_argument,
        metavar="CIDR",
        help="let image_url reach this network though it is not public (an internal image "
        "host, e.g. 10.20.0.0/16); repeatable",
    )
    parser.add_argument(
        "--allow-private-webhook-urls",
        action="store_true",
        help="let webhook_url reach private and loopback addresses (off: SSRF protection)",
    )
    parser.add_argument(
        "--allow-webhook-network",
        action="append",
        type=_network_argument,
        metavar="CIDR",
        help="let webhook_url reach this network though it is not public; repeatable",
    )
    parser.add_argument(
        "--webhook-retry-seconds",
        type=float,
        metavar="SECONDS",
        help="wait before retrying a failed webhook, doubled on each failure up to an hour "
        "(default 5)",
    )
    parser.add_argument(
        "--webhook-max-attempts",
        type=int,
        metavar="N",
        help="attempts at one webhook event before giving it up (default 10)",
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        type=_origin_argument,
        metavar="ORIGIN",
        help="let web pages from ORIGIN (e.g. https://app.example.com) call the API from a "
        "browser; repeatable, '*' for any",
    )
    parser.add_argument(
        "--openai-wait-seconds",
        type=float,
        metavar="SECONDS",
        help="longest an /openai/v1 image request waits for its job (default: 5 minutes)",
    )
    parser.add_argument(
        "--openai-max-waiting",
        type=int,
        metavar="N",
        help="/openai/v1 image requests one API key may hold open at once (default: 16)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on this port, apart from the API (default: not served)",
    )
    parser.add_argument(
        "--metrics-host", help="address of the metrics listener (default 127.0.0.1)"
    )
    parser.add_argument(
        "--max-json-bytes",
        type=int,
        metavar="N",
        help="largest JSON request body; larger ones get 413 (default 1 MiB; edits may add "
        "one source image as a data URL)",
    )
    for flag, what in (
        ("--rate-limit-submit", "submissions and upload URLs"),
        ("--rate-limit-poll", "task polls"),
        ("--rate-limit-b64", "MiB of results sent inline as b64_json"),
    ):
        parser.add_argument(
            flag,
            type=_rates_argument,
            metavar="LIMITS",
            help=f"per-key limits on {what}, such as '20/second;600/minute'; over them the "
            "answer is 429 with Retry-After (counted per process)",
        )
    parser.add_argument(
        "--upload-ttl",
        type=float,
        metavar="SECONDS",
        help="delete an uploaded source image this long after its upload (default 3600; "
        "jobs keep their own copy)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        metavar="SECONDS",
        help="cut a request whose headers take longer than this (default 5)",
    )
    parser.add_argument(
        "--min-body-rate",
        type=int,
        metavar="BYTES_PER_S",
        help="cut a request body that arrives slower than this on average, after the first "
        "--header-timeout seconds (default 1024)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tessera", description="Serve diffusers image models behind one image API."
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # Defaults live in the settings models (tessera.runtime.settings), so a flag that is not
    # given leaves room for its TESSERA_* variable.
    quiet = argparse.SUPPRESS
    serve = commands.add_parser(
        "serve",
        argument_default=quiet,
        help="run the image API with an embedded store and worker (one process)",
    )
    serve.add_argument("--demo", action="store_true", help="serve two tiny demo models")
    serve.add_argument(
        "--model",
        action="append",
        type=_model_argument,
        metavar="NAME=PATH[:TASK]",
        help="serve the diffusers pipeline in PATH as NAME (task: text-to-image by default)",
    )
    serve.add_argument(
        "--image-model",
        action="append",
        type=_image_model_argument,
        metavar="FILE=PATH",
        help="serve the pipeline in PATH as the ImageModel in FILE says (name, task, "
        "parameters, pipeline options, price), as a cluster would",
    )
    serve.add_argument(
        "--data-dir", type=Path, help="job store, images, keys (default ~/.local/share/tessera)"
    )
    serve.add_argument("--device", help="torch device for the pipelines (default: cuda if any)")
    _api_arguments(serve)
    serve.set_defaults(handler=_serve)

    gateway = commands.add_parser(
        "gateway",
        argument_default=quiet,
        help="run the image API alone, over a Redis queue and shared storage (no pipelines)",
    )
    gateway.add_argument("--queue", help="the shared job queue: redis://HOST:PORT/DB")
    gateway.add_argument("--storage", help="shared storage for results and uploads: file:///path")
    gateway.add_argument(
        "--models", type=Path, help="a file or folder of ImageModel YAML documents to serve"
    )
    gateway.add_argument(
        "--public-downloads",
        choices=["presigned", "gateway"],
        help="with s3:// storage, who serves result downloads and upload PUTs: presigned URLs "
        "of the store (default) or the gateway, for stores clients cannot reach",
    )
    _api_arguments(gateway)
    gateway.set_defaults(handler=_gateway)

    worker = commands.add_parser(
        "worker", argument_default=quiet, help="run one model's worker against a job queue"
    )
    worker.add_argument("--model", help="the model's public name")
    worker.add_argument("--weights", type=Path, help="diffusers pipeline folder")
    worker.add_argument("--queue", help="job store URL, e.g. redis://HOST:PORT/DB or sqlite:///")
    worker.add_argument(
        "--queue-name",
        metavar="NAMESPACE/NAME",
        help="the ImageModel whose queue it works (default: the --model name, as a gateway "
        "keys a model that no namespaced resource declares)",
    )
    worker.add_argument("--task", choices=[t.value for t in Task], help="default text-to-image")
    worker.add_argument(
        "--storage",
        help="results and edit sources: file:///path, s3://bucket/prefix or a mounted folder "
        "(default: beside a sqlite queue)",
    )
    worker.add_argument("--host", help="address of the health and metrics port (default all)")
    worker.add_argument("--port", type=int, help="health and metrics port (default 8080)")
    worker.add_argument("--device", help="torch device (default: cuda if any, else cpu)")
    worker.add_argument("--dtype", help="torch dtype, e.g. bfloat16 (default per device)")
    worker.add_argument("--lease-seconds", type=float, help="job lease, renewed while running")
    worker.add_argument(
        "--model-parameters", metavar="JSON", help="the model's limits (ImageModel spec.parameters)"
    )
    worker.add_argument("--price-per-patch", help="price of one 16x16 patch, a decimal")
    worker.add_argument("--pipeline", metavar="JSON", help="loading options (spec.pipeline)")
    worker.add_argument(
        "--batch-max-size",
        type=int,
        help="most compatible jobs run as one pipeline call (spec.batch.maxSize, default 1)",
    )
    worker.add_argument(
        "--batch-max-wait-ms",
        type=int,
        help="how long a batch's first job waits for others to join (default 0)",
    )
    worker.add_argument("--worker-id", help="this worker's name in leases (default host-pid)")
    worker.add_argument("--namespace", help="the ImageModel's namespace, for usage records")
    worker.set_defaults(handler=_worker)

    demo = commands.add_parser("demo-model", help="write a tiny random-weight pipeline to PATH")
    demo.add_argument("path", type=Path)
    demo.add_argument("--task", choices=[t.value for t in Task], default=Task.TEXT_TO_IMAGE.value)
    demo.set_defaults(handler=_demo_model)
    client_cli.register(commands)
    usage_cli.register(commands)

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
