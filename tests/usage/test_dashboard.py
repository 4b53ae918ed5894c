"""The Grafana dashboard (docs/grafana/tessera.json) asks only for metrics the code exports,
in PromQL that a real Prometheus accepts."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tessera.runtime import metrics
from tests.support.metrics import exported_series
from tests.support.prometheus import PrometheusServer

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "tessera.json"
# Grafana's variables, as it would expand them.
VARIABLES = {"$model": ".*", "$__rate_interval": "1m", "$__range": "1h"}


def queries(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for name, value in node.items():
            if name in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for child in node:
            yield from queries(child)


def expanded(query: str) -> str:
    for variable, value in VARIABLES.items():
        query = query.replace(variable, value)
    return query


def test_every_metric_the_dashboard_names_is_exported() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    named = {name for query in queries(dashboard) for name in re.findall(r"tessera_\w+", query)}
    assert named, "the dashboard asks for no metric at all"
    exported = exported_series(metrics).keys()
    assert named <= exported, named - exported
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("patches", "spend", "backlog", "wait, p95", "run time, p95"):
        assert topic in titles


def test_every_query_is_promql_prometheus_accepts(tmp_path: Path) -> None:
    prometheus = PrometheusServer(tmp_path / "prometheus", []).start()
    try:
        for query in queries(json.loads(DASHBOARD.read_text())):
            if query.startswith("label_values("):
                continue  # Grafana's own function, not PromQL
            answer = httpx.get(
                prometheus.url + "/api/v1/query", params={"query": expanded(query)}, timeout=10
            )
            assert answer.status_code == 200, (query, answer.text)
    finally:
        prometheus.stop()
