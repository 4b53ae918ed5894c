"""The operator's Prometheus gauges: each model's worker replicas as the autoscaler saw them
on its last pass, so alerts can say "a backlog and no ready worker" or "pods that cannot be
scheduled" without reading the ImageModel status.

The runtime's metrics (``tessera.runtime.metrics``) say what happened to jobs and how deep
each queue is; these say what serves it. Series carry the ``model`` label the runtime's
carry, so rules can join the two. ``tessera operator --metrics-port`` serves them.
"""

from __future__ import annotations

from prometheus_client import Gauge

from tessera.operator.reconcile import Key

LABELS = ("namespace", "imagemodel", "model")

DESIRED = Gauge(
    "tessera_model_desired_replicas", "Worker replicas the autoscaler asks for.", LABELS
)
READY = Gauge("tessera_model_ready_replicas", "Worker pods that are ready.", LABELS)
UNSCHEDULABLE = Gauge(
    "tessera_model_unschedulable_replicas",
    "Worker pods the scheduler cannot place (no free GPU of the kind asked for).",
    LABELS,
)
GAUGES = (DESIRED, READY, UNSCHEDULABLE)

# Each model's label values, so a deleted model's series go with it.
_series: dict[Key, tuple[str, str, str]] = {}


def observe(
    key: Key,
    model_name: str,
    *,
    desired: int,
    ready: int,
    unschedulable: int,
) -> None:
    values = (key[0], key[1], model_name)
    if _series.get(key, values) != values:
        forget(key)  # spec.modelName changed: the old series would linger
    _series[key] = values
    for gauge, value in zip(GAUGES, (desired, ready, unschedulable), strict=True):
        gauge.labels(*values).set(value)


def forget(key: Key) -> None:
    values = _series.pop(key, None)
    if values is not None:
        for gauge in GAUGES:
            gauge.remove(*values)
