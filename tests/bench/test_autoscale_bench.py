"""bench/autoscale.py's verdict, kept: the simulation is deterministic (seeded traces,
simulated time), so a change to ``decide`` that loses the issue's goal on the bursty trace
fails here rather than in the next reading of docs/benchmarks.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench" / "autoscale.py"


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_autoscale", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_the_policy_meets_the_goal_on_the_bursty_trace() -> None:
    autoscale = bench()
    arrivals = autoscale.load(autoscale.TRACES / "bursty.csv")
    cluster = autoscale.Cluster(gpus=12, service=4.5, cold=60, warm=10)
    runs = [
        autoscale.simulate(arrivals, scaler, cluster)
        for scaler in autoscale.scalers(max_replicas=16, fixed=6, delay=60)
    ]
    assert all(len(r.waits) == len(arrivals) for r in runs)
    assert autoscale.missed_goals(runs) == [], [
        (r.policy, round(r.gpu_hours, 2), r.quantile(0.95)) for r in runs
    ]


def test_a_policy_that_never_scales_down_misses_the_goal() -> None:
    """The verdict can fail: Tessera's own decide with a window of an hour keeps a burst's
    replicas as long as HPA's does, and more."""
    autoscale = bench()
    arrivals = autoscale.load(autoscale.TRACES / "bursty.csv")
    cluster = autoscale.Cluster(gpus=12, service=4.5, cold=60, warm=10)
    *others, _ = autoscale.scalers(max_replicas=16, fixed=6, delay=60)
    slow = autoscale.scalers(max_replicas=16, fixed=6, delay=3600)[-1]
    runs = [autoscale.simulate(arrivals, scaler, cluster) for scaler in (*others, slow)]
    assert "HPA-like" in autoscale.missed_goals(runs)
