"""The operator at fleet scale: 200 ImageModels applied at once on 50 simulated H100 nodes.

Why: a platform team applies a catalogue of models in one go (a Helm release, a GitOps sync),
and the operator must bring them all up quickly without eating the control plane's node.
This prints the figures the operator issue promised (targets: under 30 s to all Ready, and
under 150 MB peak memory):

    python bench/operator_scale.py [--models 200] [--nodes 50] [--name opbench] [--keep]

1. seconds from `kubectl create` of N ImageModels (one GPU each) until every one reports
   condition Ready=True for its generation (worker Deployment created, pod placed on an H100
   node by the real scheduler and made Ready by KWOK);
2. the operator's CPU seconds (user + system) for that burst, and its peak resident memory;
3. a restart over the whole fleet: seconds until every model is resumed, and how many
   objects changed (the answer should be 0: no resourceVersion churn).

The operator runs as `tessera operator` with its ServiceAccount's token, as in the tests.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tessera.operator import render
from tessera.operator.spec import parse
from tests.cluster import harness
from tests.cluster.harness import Cluster, build_binaries, start_cluster, stop_cluster
from tests.operator.process import OperatorProcess, install_crds, service_account_kubeconfig

NAMESPACE = "bench"


def models(count: int) -> dict[str, object]:
    items = [
        {
            "apiVersion": "tessera.dev/v1alpha1",
            "kind": "ImageModel",
            "metadata": {"name": f"model-{i:03d}", "namespace": NAMESPACE},
            "spec": {
                "modelName": f"bench/model-{i:03d}",
                "weights": {"image": {"reference": f"registry.example/weights/model-{i:03d}:1"}},
                "gpu": {"count": 1},
            },
        }
        for i in range(count)
    ]
    return {"apiVersion": "v1", "kind": "List", "items": items}


def create_at_once(cluster: Cluster, items: list[dict[str, object]], parallel: int = 4) -> None:
    """``kubectl create`` in a few parallel processes, as a GitOps sync would apply them."""
    procs = []
    for part in range(parallel):
        chunk = {"apiVersion": "v1", "kind": "List", "items": items[part::parallel]}
        proc = subprocess.Popen(
            [str(cluster.bin_dir / "kubectl"), "create", "-f", "-"],
            env=cluster.env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(chunk))
        proc.stdin.close()
        procs.append(proc)
    for proc in procs:
        assert proc.stderr is not None
        error = proc.stderr.read()
        if proc.wait(timeout=300) != 0:
            raise RuntimeError(f"kubectl create failed: {error}")


def progress(cluster: Cluster) -> tuple[int, int, int]:
    """(worker Deployments that exist, those with a ready pod, ImageModels Ready)."""
    jsonpath = '{range .items[*]}{.kind}:{.status.readyReplicas}{"\\n"}{end}'
    out = cluster.kubectl(
        "-n", NAMESPACE, "get", "deployments", "-o", f"jsonpath={jsonpath}", timeout=60
    ).stdout.splitlines()
    ready_models, _ = ready_count(cluster)
    return len(out), sum(1 for line in out if line.endswith(":1")), ready_models


def control_plane_alone(cluster: Cluster, count: int, timeout: float) -> float:
    """Seconds for the control plane alone to bring up the same worker Deployments the
    operator renders for ``count`` models, created by kubectl (no operator, no ImageModels);
    they are deleted afterwards."""
    namespace = "baseline"
    cluster.kubectl("create", "namespace", namespace)
    time.sleep(2)
    items: list[dict[str, object]] = []
    for body in models(count)["items"]:
        body["metadata"]["namespace"] = namespace  # type: ignore[index]
        items.append(render.deployment(parse(body), render.RenderConfig()))  # type: ignore[arg-type]
    start = time.monotonic()
    create_at_once(cluster, items)
    jsonpath = '{range .items[*]}{.status.readyReplicas}{"\\n"}{end}'
    while True:
        out = cluster.kubectl("-n", namespace, "get", "deployments", "-o", f"jsonpath={jsonpath}")
        if out.stdout.split().count("1") >= count:
            break
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"plain Deployments not Ready after {timeout:.0f} s")
        time.sleep(0.5)
    elapsed = time.monotonic() - start
    cluster.kubectl("delete", "namespace", namespace, "--wait=true", timeout=300)
    return elapsed


def tuned_config(qps: int, directory: Path) -> Path:
    """The test control plane's kwokctl settings, with higher client rate limits for the
    controller manager and the scheduler (their defaults, 20 and 50 requests per second,
    bound how fast any cluster turns Deployments into placed pods)."""
    import yaml  # the test extra

    documents = list(yaml.safe_load_all(harness.KWOKCTL_CONFIG.read_text()))
    args = [
        {"key": "kube-api-qps", "value": str(qps)},
        {"key": "kube-api-burst", "value": str(qps * 2)},
    ]
    for document in documents:
        if document.get("kind") == "KwokctlConfiguration":
            document["componentsPatches"] = [
                {"name": "kube-controller-manager", "extraArgs": args},
                {"name": "kube-scheduler", "extraArgs": args},
            ]
    path = directory / "kwokctl.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    return path


def ready_count(cluster: Cluster) -> tuple[int, int]:
    """(models Ready for their current generation, models seen)."""
    jsonpath = (
        "{range .items[*]}{.metadata.generation}:"
        '{.status.conditions[?(@.type=="Ready")].status}:'
        '{.status.conditions[?(@.type=="Ready")].observedGeneration}{"\\n"}{end}'
    )
    out = cluster.kubectl(
        "-n", NAMESPACE, "get", "imagemodels", "-o", f"jsonpath={jsonpath}", timeout=60
    )
    lines = [line.split(":") for line in out.stdout.splitlines() if line]
    ready = sum(1 for gen, status, seen in lines if status == "True" and seen == gen)
    return ready, len(lines)


def versions(cluster: Cluster) -> dict[str, str]:
    jsonpath = '{range .items[*]}{.kind}/{.metadata.name}={.metadata.resourceVersion}{"\\n"}{end}'
    out = cluster.kubectl(
        "-n", NAMESPACE, "get", "imagemodels,deployments,services", "-o", f"jsonpath={jsonpath}",
        timeout=60,
    )  # fmt: skip
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=50, help="simulated 8-GPU H100 nodes")
    parser.add_argument("--name", default="opbench")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the operator here")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="first time the control plane alone with the same worker Deployments",
    )
    parser.add_argument(
        "--controller-qps",
        type=int,
        help="raise the controller manager's and scheduler's API rate limits to this",
    )
    args = parser.parse_args()

    build_binaries()
    work = Path(tempfile.mkdtemp(prefix="operator-bench-"))
    if args.controller_qps:
        harness.KWOKCTL_CONFIG = tuned_config(args.controller_qps, work)
    start = time.monotonic()
    cluster = start_cluster(args.name, gpu_nodes=args.nodes, cpu_nodes=0)
    limits = f"controller QPS {args.controller_qps}" if args.controller_qps else "default QPS"
    print(
        f"control plane with {args.nodes} H100 nodes ({limits}) up in "
        f"{time.monotonic() - start:.1f} s"
    )
    operator = None
    try:
        install_crds(cluster)
        if args.baseline:
            baseline_seconds = control_plane_alone(cluster, args.models, args.timeout)
            print(
                f"control plane alone: the same {args.models} worker Deployments, created by "
                f"kubectl, to all pods Ready in {baseline_seconds:.1f} s (no operator)"
            )
        cluster.kubectl("create", "namespace", NAMESPACE)
        time.sleep(2)  # the namespace's default ServiceAccount
        kubeconfig = service_account_kubeconfig(cluster, work / "kubeconfig.json")
        prefix = [sys.executable, "-m", "cProfile", "-o", str(args.profile)] if args.profile else []
        operator = OperatorProcess(
            kubeconfig, work / "operator.log", namespaces=[NAMESPACE], prefix=prefix
        )
        operator.start()
        time.sleep(2)  # let start-up settle before taking the baseline
        baseline = operator.usage()

        start = time.monotonic()
        create_at_once(cluster, models(args.models)["items"])  # type: ignore[arg-type]
        created = time.monotonic() - start
        ready = 0
        reached: dict[str, float] = {}
        while ready < args.models:
            operator.check_alive()
            if time.monotonic() - start > args.timeout:
                print(f"FAILED: {ready} of {args.models} Ready after {args.timeout:.0f} s")
                print(operator.tail(40))
                return 1
            time.sleep(0.5)
            deployments, pods, ready = progress(cluster)
            now = time.monotonic() - start
            for what, count in (("deployments", deployments), ("pods", pods)):
                if count >= args.models:
                    reached.setdefault(what, now)
        elapsed = time.monotonic() - start
        burst = operator.usage()
        print(
            f"{args.models} ImageModels created by 4 parallel kubectl processes in {created:.1f} s"
        )
        print(
            f"operator created all {args.models} worker Deployments by "
            f"{reached.get('deployments', elapsed):.1f} s; the control plane had every worker "
            f"pod placed and Ready by {reached.get('pods', elapsed):.1f} s"
        )
        print(
            f"all {args.models} ImageModels Ready {elapsed:.1f} s after the apply began "
            f"(target < 30 s): {'PASS' if elapsed < 30 else 'FAIL'}"
        )
        print(
            f"operator CPU: {burst['cpu_seconds'] - baseline['cpu_seconds']:.1f} s for the burst "
            f"({burst['cpu_seconds']:.1f} s since start); peak RSS {burst['peak_rss_mib']:.0f} MiB "
            f"(target < 150 MB): {'PASS' if burst['peak_rss_mib'] * 1.048576 < 150 else 'FAIL'}"
        )

        time.sleep(3)
        before = versions(cluster)
        operator.stop()
        requests = re.findall(r"API requests: (.*)", operator.output())
        print(f"operator API requests for the burst: {requests[-1] if requests else '?'}")
        if args.profile:
            operator.prefix[-1] = f"{args.profile}.restart"
        start = time.monotonic()
        operator.start()
        for i in range(args.models):
            operator.wait_for_log(
                rf"reconciled {NAMESPACE}/model-{i:03d} \(generation \d+\): unchanged", timeout=120
            )
        resumed = time.monotonic() - start
        time.sleep(3)
        after = versions(cluster)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        restart = operator.usage()
        operator.stop()
        requests = re.findall(r"API requests: (.*)", operator.output())
        print(
            f"restart: {args.models} models resumed in {resumed:.1f} s, "
            f"{restart['cpu_seconds']:.1f} CPU s, peak RSS {restart['peak_rss_mib']:.0f} MiB; "
            f"objects written: {len(changed)} {changed[:5] if changed else ''}"
        )
        print(f"operator API requests for the restart: {requests[-1] if requests else '?'}")
    finally:
        if operator is not None:
            operator.stop()
            print(f"operator log: {operator.log_path}")
        if not args.keep:
            stop_cluster(cluster)
    return 0


if __name__ == "__main__":
    sys.exit(main())
