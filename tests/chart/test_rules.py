"""The chart's PrometheusRule, checked by promtool (tests/tools/build-promtool): every rule
is well formed, and each alert fires on the series that mean it and stays quiet on the ones
that do not (`promtool test rules`, the alerts' unit tests). Every metric the rules read is
one the code exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tessera.operator import metrics as operator_metrics
from tessera.runtime import metrics as runtime_metrics
from tests.support.metrics import exported_series
from tests.support.prometheus import promtool as build_promtool

from .render import render

VALUES = {"monitoring.prometheusRule.enabled": "true"}


@pytest.fixture(scope="module")
def promtool() -> Path:
    return build_promtool()


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = render(VALUES).get("PrometheusRule", "tessera")["spec"]["groups"]
    return groups


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "tessera-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups()}))
    return path


def run(promtool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_accepts_every_rule(promtool: Path, rules_file: Path) -> None:
    result = run(promtool, "check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout


def test_promtool_refuses_a_broken_expression(promtool: Path, tmp_path: Path) -> None:
    # The check above means something: a typo in PromQL fails it.
    groups = rule_groups()
    groups[0]["rules"][0]["expr"] = "max by (model) (tessera_queue_jobs{state=queued})"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"groups": groups}))
    result = run(promtool, "check", "rules", str(broken))
    assert result.returncode != 0
    assert "parse error" in result.stdout + result.stderr


def test_every_metric_and_label_a_rule_reads_is_exported() -> None:
    names = exported_series(runtime_metrics, operator_metrics)
    for rule in rule_groups()[0]["rules"]:
        used = set(re.findall(r"\btessera_\w+", rule["expr"]))
        assert used, rule["alert"]
        assert used <= names.keys(), f"{rule['alert']} reads {used - names.keys()}: not exported"
        for name, matchers in re.findall(r"\b(tessera_\w+)\{([^}]*)\}", rule["expr"]):
            labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
            assert labels <= names[name], f"{rule['alert']}: {name} has no {labels - names[name]}"


# Each case: input series (promtool's expanding notation, one sample a minute), the time to
# evaluate at, the alert, and what promtool must find firing then (labels and expanded
# annotations), or None for nothing.
CASES: dict[str, tuple[list[dict[str, str]], str, str, dict[str, Any] | None]] = {
    "backlog growing": (
        [{"series": 'tessera_queue_jobs{model="flux", state="queued"}', "values": "0+2x40"}],
        "35m",
        "TesseraBacklogGrowing",
        {
            "exp_labels": {"model": "flux", "severity": "warning"},
            "exp_annotations": {
                "summary": "The queue of flux has grown for 15m",
                "description": "70 jobs wait for flux and more arrive than its workers finish: "
                "raise spec.scaling.maxReplicas, or see whether its pods can be scheduled.",
            },
        },
    ),
    "backlog steady": (
        [{"series": 'tessera_queue_jobs{model="flux", state="queued"}', "values": "30x40"}],
        "35m",
        "TesseraBacklogGrowing",
        None,
    ),
    "jobs failing": (
        [
            {
                "series": 'tessera_jobs_finished_total{model="flux", outcome="completed"}',
                "values": "0+8x30",
            },
            {
                "series": 'tessera_jobs_finished_total{model="flux", outcome="failed"}',
                "values": "0+2x30",
            },
        ],
        "25m",
        "TesseraJobsFailing",
        {
            "exp_labels": {"model": "flux", "severity": "warning"},
            "exp_annotations": {
                "summary": "More than 10% of the jobs of flux fail",
                "description": "20% of the jobs of flux failed or expired over 10 minutes: "
                "read the failed tasks' errors and the workers' logs.",
            },
        },
    ),
    "few jobs failing": (
        [
            {
                "series": 'tessera_jobs_finished_total{model="flux", outcome="completed"}',
                "values": "0+99x30",
            },
            {
                "series": 'tessera_jobs_finished_total{model="flux", outcome="failed"}',
                "values": "0+1x30",
            },
        ],
        "25m",
        "TesseraJobsFailing",
        None,
    ),
    "unschedulable": (
        [
            {
                "series": "tessera_model_unschedulable_replicas"
                '{namespace="ml", imagemodel="flux-dev", model="flux"}',
                "values": "2x20",
            }
        ],
        "15m",
        "TesseraModelUnschedulable",
        {
            "exp_labels": {
                "namespace": "ml",
                "imagemodel": "flux-dev",
                "model": "flux",
                "severity": "warning",
            },
            "exp_annotations": {
                "summary": "Pods of the ImageModel ml/flux-dev cannot be scheduled",
                "description": "2 worker pods of flux-dev found no node (no free GPU of the "
                "kind asked for): kubectl -n ml describe imagemodel flux-dev.",
            },
        },
    ),
    "no ready worker with a backlog": (
        [
            {"series": 'tessera_queue_jobs{model="flux", state="queued"}', "values": "5x20"},
            {
                "series": 'tessera_model_ready_replicas{namespace="ml", imagemodel="flux-dev", '
                'model="flux"}',
                "values": "0x20",
            },
        ],
        "15m",
        "TesseraNoReadyWorker",
        {
            "exp_labels": {"model": "flux", "severity": "critical"},
            "exp_annotations": {
                "summary": "flux has queued jobs and no ready worker",
                "description": "5 jobs wait for flux and none of its workers has been ready "
                "for 10m: see the ImageModel's conditions and its pods.",
            },
        },
    ),
    "a ready worker with a backlog": (
        [
            {"series": 'tessera_queue_jobs{model="flux", state="queued"}', "values": "5x20"},
            {
                "series": 'tessera_model_ready_replicas{namespace="ml", imagemodel="flux-dev", '
                'model="flux"}',
                "values": "1x20",
            },
        ],
        "15m",
        "TesseraNoReadyWorker",
        None,
    ),
}


@pytest.mark.parametrize(("series", "at", "name", "firing"), list(CASES.values()), ids=list(CASES))
def test_the_alert_fires_only_when_it_should(
    promtool: Path,
    rules_file: Path,
    tmp_path: Path,
    series: list[dict[str, str]],
    at: str,
    name: str,
    firing: dict[str, Any] | None,
) -> None:
    expected = [] if firing is None else [firing]
    suite = {
        "rule_files": [str(rules_file)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [{"eval_time": at, "alertname": name, "exp_alerts": expected}],
            }
        ],
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    result = run(promtool, "test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
