"""A real Prometheus scraping tessera processes on loopback, asked in PromQL.

The binary comes from ``tests/tools/build-prometheus`` (built once into the cache outside
the repository; ``scripts/bootstrap --test`` runs it first). A failed build is an error with
the build's own words, never a skip.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from tests.support.build import run_build_script
from tests.support.server import free_port, stop_process, wait_for_http
from tests.support.waiting import wait_until

BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "build-prometheus"
PROMTOOL_BUILD_SCRIPT = BUILD_SCRIPT.with_name("build-promtool")
SCRAPE_SECONDS = 0.5


def promtool() -> Path:
    """promtool, built like Prometheus: ``check metrics`` lints an exposition against
    Prometheus' naming conventions, ``check rules`` and ``test rules`` the chart's alerts."""
    return run_build_script(PROMTOOL_BUILD_SCRIPT)


@dataclass
class PrometheusServer:
    directory: Path
    # Full metrics URLs (http://127.0.0.1:PORT/metrics/), one scrape job each.
    targets: list[str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusServer:
        binary = run_build_script(BUILD_SCRIPT)  # a tenth of a second once built
        self.directory.mkdir(parents=True, exist_ok=True)
        jobs = []
        for index, target in enumerate(self.targets):
            parts = urlsplit(target)
            jobs.append(
                {
                    "job_name": f"tessera-{index}",
                    "metrics_path": parts.path,
                    "static_configs": [{"targets": [parts.netloc]}],
                }
            )
        config = self.directory / "prometheus.yml"
        interval = f"{int(SCRAPE_SECONDS * 1000)}ms"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": interval, "evaluation_interval": interval},
                    "scrape_configs": jobs,
                }
            )
        )
        log = (self.directory / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_http(self.url + "/-/ready", self.process, "prometheus", self.log, 60)
        return self

    def log(self) -> str:
        return (self.directory / "prometheus.log").read_text(errors="replace")[-4000:]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's vector: ``[{"metric": {...}, "value": [t, "v"]}]``."""
        answer = httpx.get(self.url + "/api/v1/query", params={"query": promql}, timeout=10)
        answer.raise_for_status()
        data = answer.json()["data"]
        assert data["resultType"] == "vector", data
        return data["result"]  # type: ignore[no-any-return]

    def by_label(self, promql: str, label: str) -> dict[str, float]:
        return {row["metric"].get(label, ""): float(row["value"][1]) for row in self.query(promql)}

    def wait_for_fresh_scrapes(self, timeout: float = 30) -> None:
        """Until every target was scraped, successfully, after this call began."""
        since = time.time()

        def all_fresh() -> bool:
            targets = httpx.get(self.url + "/api/v1/targets", timeout=10).json()["data"]
            active = targets["activeTargets"]
            return len(active) == len(self.targets) and all(
                target["health"] == "up"
                and _parse_time(target["lastScrape"]) > since + SCRAPE_SECONDS / 10
                for target in active
            )

        wait_until("a fresh scrape of every target", all_fresh, timeout, self.log)

    def stop(self) -> None:
        stop_process(self.process)


def _parse_time(text: str) -> float:
    """RFC 3339 with Go's nanoseconds, which ``fromisoformat`` does not take."""
    from datetime import datetime

    text = re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00")
    return datetime.fromisoformat(text).timestamp()
