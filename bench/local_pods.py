"""How fast a pod on a local node really starts: created -> process started -> Ready.

Why: every closed-loop test (operator, gateway, autoscaling, chart) waits for pods on
local nodes, so this latency is paid over and over. Each pod runs ``python -m http.server``
with an HTTP readiness probe every second, as the tests' pods do; then one pod of the CPU
demo's worker Deployment, exactly as the operator renders ``examples/demo-cpu.yaml`` (init
container builds the pipeline, ``tessera worker`` loads it, probes every 5-10 s):

    .venv/bin/python bench/local_pods.py [--pods 10] [--name bench-local]

- created: just before the POST that creates the pod;
- started: the (main) container process's own start time (from /proc, 10 ms resolution);
- Ready: the first time a GET of the pod (every 20 ms) shows its Ready condition.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tessera.operator import render
from tessera.operator.spec import parse
from tests.cluster.harness import Cluster, build_binaries, start_cluster, stop_cluster
from tests.cluster.localnode.kube import NodeApi
from tests.operator.process import create_results_claim
from tests.support.redis_server import RedisServer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "demo-cpu.yaml"

_TICKS = 100  # os.sysconf("SC_CLK_TCK") on Linux
POD_IP = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def web_pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "web",
                    "image": "local/bench:1",
                    "command": ["python", "-m", "http.server", "8000", "--bind", "$(POD_IP)"],
                    "env": [POD_IP],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8000}, "periodSeconds": 1},
                }
            ],
        },
    }


def process_started(pid: int) -> float:
    """Wall-clock start of a process: now, less how long ago it started (its start and
    the uptime are both counted from boot; /proc/stat's boot time is rounded to 1 s)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - (uptime - ticks / _TICKS)


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def demo_worker_pod(queue_url: str) -> dict[str, Any]:
    """The pod of the demo's worker Deployment, as the operator renders it."""
    import yaml  # the test extra

    body = yaml.safe_load(EXAMPLE.read_text()) | {
        "metadata": {"name": "tessera-demo", "namespace": "default"}
    }
    deployment = render.deployment(parse(body), render.RenderConfig(queue_url=queue_url))
    template = deployment["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "demo-worker", "namespace": "default", **template["metadata"]},
        "spec": template["spec"],
    }


def time_one(api: NodeApi, name: str, pod: dict[str, Any] | None = None) -> tuple[float, float]:
    """(created -> started, started -> Ready) in seconds for one new pod."""
    path = f"/api/v1/namespaces/default/pods/{name}"
    created = time.time()
    body = pod or web_pod(name)
    api.kube.request("POST", "/api/v1/namespaces/default/pods", body=body)
    while True:
        pod = api.kube.request("GET", path)
        if is_ready(pod):
            ready = time.time()
            break
        time.sleep(0.02)
    pid = int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("local://"))
    started = process_started(pid)
    api.kube.request("DELETE", path)
    return started - created, ready - started


def report(what: str, values: list[float]) -> None:
    print(
        f"{what}: median {statistics.median(values):.2f} s, "
        f"min {min(values):.2f} s, max {max(values):.2f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=10, help="pods, one after another")
    parser.add_argument("--name", default="bench-local")
    args = parser.parse_args()

    build_binaries()
    cluster: Cluster = start_cluster(args.name, gpu_nodes=0, cpu_nodes=0, local_nodes=1)
    try:
        api = NodeApi(cluster.kubeconfig)
        time_one(api, "warm-up")  # the first pod also pays for the scheduler's caches
        timings = [time_one(api, f"web-{i}") for i in range(args.pods)]
        to_start = [started for started, _ in timings]
        to_ready = [ready for _, ready in timings]
        print(f"{args.pods} pods of python -m http.server on a local node, one at a time")
        report("pod created -> process started", to_start)
        report("process started -> Ready (probe every 1 s)", to_ready)
        report("pod created -> Ready", [a + b for a, b in timings])
        with tempfile.TemporaryDirectory() as work:
            redis = RedisServer(Path(work) / "redis").start()
            try:
                create_results_claim(cluster, "default", Path(work) / "results")
                started, ready = time_one(api, "demo-worker", demo_worker_pod(redis.url))
            finally:
                redis.stop()
        print(
            f"CPU demo worker pod: created -> worker process started {started:.1f} s "
            f"(init container included), -> Ready {started + ready:.1f} s"
        )
    finally:
        stop_cluster(cluster)
    return 0


if __name__ == "__main__":
    sys.exit(main())
