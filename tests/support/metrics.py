"""What the code's Prometheus collectors can write, for tests that check queries (the
Grafana dashboard, the chart's alerts) ask only for series that exist."""

from __future__ import annotations

from types import ModuleType

from prometheus_client.metrics import MetricWrapperBase

# The sample names each kind of collector writes, after its family name.
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}


def exported_series(*modules: ModuleType) -> dict[str, set[str]]:
    """Every sample name the collectors of these modules can write, with its label names."""
    series: dict[str, set[str]] = {}
    for module in modules:
        for collector in vars(module).values():
            if isinstance(collector, MetricWrapperBase):
                for family in collector.describe():
                    for suffix in SUFFIXES[family.type]:
                        series[family.name + suffix] = set(collector._labelnames)
    return series
