"""Figures for the test control plane: warm start, memory, and a 1,000-node fleet.

Why: the cluster tests start a control plane per session, so its start time is paid by
every run, and the autoscaler tests want fleets far larger than a laptop holds. This
prints the three numbers the control-plane issue promised:

    python bench/cluster_nodes.py [--nodes 1000] [--name bench]

1. warm start: ``start_cluster`` with the default 2 H100 + 1 CPU nodes, binaries cached
   (the build is run first and not timed; a cold build is timed by ``tests/cluster/build``);
2. the resident memory of each control-plane process, idle and after the fleet;
3. the time from creating N more H100 nodes to all of them Ready.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cluster.harness import (
    Cluster,
    _cluster_pids,
    build_binaries,
    start_cluster,
    stop_cluster,
)


def rss_by_process(cluster: Cluster) -> dict[str, int]:
    """Resident memory (KiB) of each process of the cluster, by process name."""
    found: dict[str, int] = {}
    for pid in _cluster_pids(cluster.workdir):
        proc = Path(f"/proc/{pid}")
        try:
            name = (proc / "comm").read_text().strip()
            status = (proc / "status").read_text()
        except OSError:
            continue
        kib = next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")
        )
        found[name] = found.get(name, 0) + kib
    return found


def print_rss(title: str, cluster: Cluster) -> None:
    rss = rss_by_process(cluster)
    parts = ", ".join(f"{name} {kib / 1024:.0f}" for name, kib in sorted(rss.items()))
    print(f"{title}: {sum(rss.values()) / 1024:.0f} MiB RSS in all ({parts})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000, help="H100 nodes to add (default 1000)")
    parser.add_argument("--name", default="bench")
    args = parser.parse_args()

    build_binaries()
    start = time.monotonic()
    cluster = start_cluster(args.name, gpu_nodes=2, cpu_nodes=1)
    print(f"warm start (2 H100 + 1 CPU nodes Ready): {time.monotonic() - start:.1f} s")
    try:
        time.sleep(5)  # let start-up allocations settle before reading memory
        print_rss("control plane, idle", cluster)
        start = time.monotonic()
        cluster.add_nodes(gpu_nodes=args.nodes, prefix="fleet")
        print(f"{args.nodes} more H100 nodes created and Ready: {time.monotonic() - start:.1f} s")
        print_rss(f"control plane with {args.nodes + 3} nodes", cluster)
    finally:
        start = time.monotonic()
        stop_cluster(cluster)
        print(f"stop: {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
