"""``tessera operator``: run the ImageModel operator against the current cluster.

Credentials come from the in-cluster service account or the kubeconfig (``KUBECONFIG``),
as with kubectl. Registered with the ``tessera`` command through the ``tessera.commands``
entry point, so the runtime never imports the operator.

Two replicas, one active: apply ``crds/kopf-peering.yaml`` and ``crds/kopf-peering-tessera.yaml``,
and run every replica with ``--peering tessera``. Each replica announces itself with a
priority in the shared peering object; a replica that sees a higher priority pauses until
that peer's heartbeat expires (about a minute after it stops), then takes over. Replicas
with equal priorities would all pause, so without ``--priority`` each draws a random one.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys
from typing import Any

DEFAULT_LIVENESS = "http://0.0.0.0:8081/healthz"


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "operator",
        help="run the ImageModel operator (kopf) against the current kubeconfig or cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NAMESPACE",
        help="watch this namespace (repeatable; globs such as 'team-*' work)",
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="watch every namespace (the default when no --namespace is given)",
    )
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument(
        "--standalone",
        action="store_true",
        help="run alone: no peering objects, no leader election",
    )
    peering.add_argument(
        "--peering",
        metavar="NAME",
        help="elect one active replica through the kopf peering object NAME",
    )
    parser.add_argument(
        "--priority",
        type=int,
        help="this replica's peering priority; the highest live one is active (default: random)",
    )
    parser.add_argument(
        "--liveness",
        metavar="URL",
        default=os.environ.get("TESSERA_OPERATOR_LIVENESS", DEFAULT_LIVENESS),
        help=f"serve a liveness probe at this URL, or 'none' (default {DEFAULT_LIVENESS})",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        default=os.environ.get("TESSERA_OPERATOR_METRICS_PORT") or None,
        help="serve each model's queue and replicas as Prometheus gauges on this port "
        "(default: $TESSERA_OPERATOR_METRICS_PORT, else not served)",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of the metrics listener (default 127.0.0.1)",
    )
    parser.add_argument(
        "--queue-url",
        default=None,
        help="the job queue workers use (default: $TESSERA_QUEUE_URL or redis://tessera-redis:6379/0)",
    )
    parser.add_argument(
        "--results-claim",
        default=None,
        help="the PersistentVolumeClaim workers write results to "
        "(default: $TESSERA_RESULTS_CLAIM or tessera-results)",
    )
    parser.add_argument(
        "--worker-image",
        default=None,
        help="the worker image for models that name none (default: $TESSERA_WORKER_IMAGE)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: kopf's too)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.set_defaults(handler=run)


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.getLogger().setLevel(level)
    logging.getLogger("tessera").setLevel(level)
    # kopf logs every handler run at INFO; keep that for -vv.
    logging.getLogger("kopf").setLevel(logging.DEBUG if args.verbose > 1 else logging.WARNING)
    # But always say when this replica pauses for a peer or resumes (leader election).
    logging.getLogger("kopf._core.engines.peering").setLevel(min(level, logging.INFO))
    for noisy in ("urllib3", "kubernetes", "aiohttp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(args: argparse.Namespace) -> int:
    import kopf

    from tessera.operator import handlers, render
    from tessera.operator.reconcile import Reconciler

    if args.queue_url:
        os.environ["TESSERA_QUEUE_URL"] = args.queue_url
    if args.worker_image:
        os.environ["TESSERA_WORKER_IMAGE"] = args.worker_image
    if args.results_claim:
        os.environ["TESSERA_RESULTS_CLAIM"] = args.results_claim
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _configure_logging(args)

    from tessera.operator.apply import Kube

    try:
        kube = Kube()
    except Exception as error:
        print(f"error: cannot load Kubernetes credentials: {error}", file=sys.stderr)
        return 2

    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, args.metrics_host)

    memo = kopf.Memo()
    liveness = None if args.liveness in ("", "none") else args.liveness
    options: dict[str, Any] = {
        "clusterwide": not args.namespace,
        "namespaces": args.namespace,
        "liveness_endpoint": liveness,
        "memo": memo,
    }
    if args.standalone:
        options["standalone"] = True
    elif args.peering:
        options["peering_name"] = args.peering
        options["priority"] = (
            args.priority if args.priority is not None else secrets.randbelow(2**31 - 1) + 1
        )
    elif args.priority is not None:
        options["priority"] = args.priority

    async def main() -> None:
        # kopf stops gracefully on SIGINT and SIGTERM by itself.
        memo["reconciler"] = Reconciler(kube, render.RenderConfig.from_env())
        await kopf.operator(**options)

    logging.getLogger(__name__).info(
        "tessera operator: %s, %s",
        "all namespaces" if not args.namespace else "namespaces " + ", ".join(args.namespace),
        "standalone" if args.standalone else f"peering {args.peering or 'auto'}",
    )
    assert handlers.model_event is not None  # the import registered the handlers
    asyncio.run(main())
    return 0
