"""``python -m tests.cluster.localnode``: run one local node's agent (the harness does)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from .agent import NodeAgent, configure_logging


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.localnode")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--node", required=True, help="the Node's name")
    parser.add_argument("--state-dir", type=Path, required=True, help="pods' logs and volumes")
    parser.add_argument("--address-locks", type=Path, required=True, help="shared by all agents")
    parser.add_argument("--h100", action="store_true", help="look like an 8 x H100 node")
    parser.add_argument(
        "--backoff-seconds",
        type=float,
        default=10.0,
        help="first crash-loop delay, doubling to 300 s (the kubelet's is 10 s)",
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    configure_logging(args.verbose)
    agent = NodeAgent(
        args.kubeconfig,
        args.node,
        args.state_dir,
        args.address_locks,
        h100=args.h100,
        backoff_seconds=args.backoff_seconds,
    )
    asyncio.run(agent.run())


if __name__ == "__main__":
    main()
