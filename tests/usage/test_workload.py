"""A randomized workload under failures: jobs that fail, workers killed with SIGKILL mid-job
(their jobs run again), and the push exporter killed too, against a receiver that fails at
random. Afterwards the ledger must agree with the API to the patch, per model and per key:
every completed job exactly once, no failed job at all, and the receiver must hold exactly
the ledger's event ids."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tessera.runtime.jobs.base import JobStatus
from tessera.runtime.jobs.redis import RedisJobStore
from tests.api.helpers import png_bytes, submit
from tests.support.gateway import GatewayDeployment, demo_image_models, write_models
from tests.support.params import job_params
from tests.support.redis_server import RedisServer
from tests.support.server import KEYS, ServerProcess, stop_process
from tests.support.usage_receiver import UsageReceiver
from tests.support.waiting import wait_until
from tests.support.worker import WorkerProcess

SOURCE = "data:image/png;base64," + base64.b64encode(png_bytes(80, 64)).decode()
SIZES = ["48x48", "64x48", "100x60", "128x96", "80x80"]
CLI = [sys.executable, "-m", "tessera.runtime.cli"]
# Long enough on the tiny demo pipeline (seconds) that a kill lands while it runs.
SLOW = {
    "model": "tessera-demo",
    "prompt": "a slow lighthouse",
    "image_size": "square_hd",
    "num_inference_steps": 50,
}
# One model has two workers; killing one leaves the other working.
WORKERS = {"tessera-demo": 2, "tessera-demo-edit": 1}


@dataclass
class Cluster:
    directory: Path
    redis: RedisServer
    gateway: ServerProcess
    models: Path
    storage: str
    receiver: UsageReceiver
    workers: list[WorkerProcess] = field(default_factory=list)
    exporter: subprocess.Popen[bytes] | None = None
    kills: Counter[str] = field(default_factory=Counter)
    spawned: int = 0

    def worker(self, model: str) -> WorkerProcess:
        self.spawned += 1
        return WorkerProcess(
            model,
            self.models / model,
            self.redis.url,
            self.storage,
            self.directory / f"worker-{self.spawned}-{model}.log",
            task="image-to-image" if model.endswith("edit") else "text-to-image",
            # A short lease: a killed worker's job runs again within seconds.
            env={"TESSERA_LEASE_SECONDS": "2"},
        )

    def start_exporter(self, *extra: str) -> subprocess.Popen[bytes]:
        command = [
            *CLI, "usage", "push",
            "--queue", self.redis.url,
            "--to", self.receiver.url,
            "--batch-size", "3",
            "--idle-seconds", "0.2",
            "--retry-max-seconds", "0.2",
            *extra,
        ]  # fmt: skip
        log = (self.directory / "exporter.log").open("ab")
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def chaos(self, chance: random.Random) -> None:
        """Kill one process with SIGKILL and start its replacement: a worker first, the
        exporter second (each is then surely killed once, however fast the jobs run), then
        either at random."""
        workers_killed = self.kills["worker busy"] + self.kills["worker idle"]
        exporter_due = workers_killed >= 1 and not self.kills["exporter"]
        if (
            self.exporter is not None
            and workers_killed
            and (exporter_due or chance.random() < 0.35)
        ):
            self.exporter.kill()
            self.exporter.wait()
            self.kills["exporter"] += 1
            self.exporter = self.start_exporter()
            return
        alive = [w for w in self.workers if w.process is not None and w.process.poll() is None]
        busy = [w for w in alive if _busy(w)]
        victim = chance.choice(busy or alive)
        self.kill_worker(victim, busy=victim in busy)

    def kill_worker(self, victim: WorkerProcess, busy: bool) -> None:
        """SIGKILL one worker and start its replacement."""
        assert victim.process is not None
        victim.process.kill()
        victim.process.wait()
        self.kills["worker busy" if busy else "worker idle"] += 1
        self.workers.remove(victim)
        self.workers.append(self.worker(victim.model).spawn())

    def replace_the_dead(self) -> None:
        """A worker that exited by itself (say it lost a race for its port at start) is
        replaced, and counted: the workload needs every model served to finish."""
        for worker in list(self.workers):
            if worker.process is not None and worker.process.poll() is not None:
                self.kills["died by itself"] += 1
                self.workers.remove(worker)
                self.workers.append(self.worker(worker.model).spawn())

    def logs(self) -> str:
        """The tail of every worker's log and the gateway's, for a failure message."""
        tails = [f"== {w.log_path.name}\n{w.log()[-1500:]}" for w in self.workers]
        return "\n".join([*tails, f"== gateway\n{self.gateway.log()[-1500:]}"])

    def stop(self) -> None:
        stop_process(self.exporter)
        for worker in self.workers:
            worker.stop()
        self.gateway.stop()


def _busy(worker: WorkerProcess) -> bool:
    try:
        return bool(httpx.get(worker.base_url + "/readyz", timeout=1).json().get("busy"))
    except (httpx.HTTPError, ValueError):
        return False


@pytest.fixture
def cluster(tmp_path: Path, demo_models_dir: Path) -> Iterator[Cluster]:
    redis = RedisServer(tmp_path / "redis").start()
    receiver = UsageReceiver(failure_rate=0.5, seed=99)
    models = write_models(tmp_path / "models.yaml", demo_image_models())
    deployment = GatewayDeployment(tmp_path, demo_models_dir, redis, models_file=models)
    cluster = Cluster(
        tmp_path, redis, deployment.gateway(models), demo_models_dir, deployment.storage, receiver
    )
    cluster.gateway.start()
    cluster.workers = [
        cluster.worker(model) for model, count in WORKERS.items() for _ in range(count)
    ]
    for worker in cluster.workers:
        worker.spawn()
    for worker in cluster.workers:
        worker.wait_ready()
    try:
        yield cluster
    finally:
        cluster.stop()
        receiver.close()
        redis.stop()


def _inject_failing_jobs(cluster: Cluster, count: int) -> list[int]:
    """Jobs the pipeline refuses (a source image for a text-to-image pipeline): they fail on
    the worker, the way a real pipeline error does, and must never be billed."""
    source_key = "uploads/key_failing/upload-src.png"
    folder = Path(cluster.storage.removeprefix("file://"))
    (folder / source_key).parent.mkdir(parents=True, exist_ok=True)
    (folder / source_key).write_bytes(png_bytes(64, 48))

    async def submit_all() -> list[int]:
        store = RedisJobStore(cluster.redis.url)
        try:
            params = job_params(source_images=(source_key,))
            return [
                (await store.submit("tessera-demo", "key_failing", params)).id for _ in range(count)
            ]
        finally:
            await store.close()

    return asyncio.run(submit_all())


def _jobs(cluster: Cluster, ids: list[int]) -> dict[int, tuple[JobStatus, int]]:
    async def read() -> dict[int, tuple[JobStatus, int]]:
        store = RedisJobStore(cluster.redis.url)
        try:
            return {job.id: (job.status, job.attempts) for job in [await store.get(i) for i in ids]}
        finally:
            await store.close()

    return asyncio.run(read())


def test_the_ledger_bills_every_completed_job_once_whatever_crashes(cluster: Cluster) -> None:
    chance = random.Random(1313)
    submitted: dict[int, tuple[str, str]] = {}  # job id -> (the key that submitted it, model)
    clients = {key: cluster.gateway.client(key) for key in KEYS}
    # One slow job first, for the first kill to land mid-run for sure: the others take a
    # fraction of a second, and a worker seen busy with one may be done before the kill.
    slow = submit(clients[KEYS[0]], SLOW)
    submitted[slow] = (KEYS[0], SLOW["model"])
    for _ in range(20):
        key = chance.choice(KEYS)
        body = {
            "prompt": "p",
            "image_size": chance.choice(SIZES),
            "num_images": chance.randint(1, 2),
            "num_inference_steps": chance.randint(1, 2),
        }
        if chance.random() < 0.4:
            body |= {"model": "tessera-demo-edit", "image_url": SOURCE}
            job_id = submit(clients[key], body, "/images/edits")
        else:
            body["model"] = "tessera-demo"
            job_id = submit(clients[key], body)
        submitted[job_id] = (key, body["model"])
    failing = _inject_failing_jobs(cluster, 3)
    everything = [*submitted, *failing]

    cluster.exporter = cluster.start_exporter()

    def slow_mid_run() -> bool:
        task = clients[KEYS[0]].get(f"/images/tasks/{slow}").json()
        return task["status"] == "in_progress" and 0 < task["progress"] < 80

    # The first kill takes the slow job's worker between its first step and its last (with
    # any other busy worker of its model): that job surely runs again.
    wait_until("the slow job mid-run", slow_mid_run, 120)
    for worker in [w for w in cluster.workers if w.model == SLOW["model"] and _busy(w)]:
        cluster.kill_worker(worker, busy=True)
    deadline = time.monotonic() + 240
    while True:
        states = _jobs(cluster, everything)
        # Finished, and the exporter killed once at least (it runs on after the jobs).
        if all(status.finished for status, _ in states.values()) and cluster.kills["exporter"]:
            break
        assert time.monotonic() < deadline, f"jobs never finished: {states}\n{cluster.logs()}"
        cluster.replace_the_dead()
        if sum(cluster.kills.values()) < 8:
            cluster.chaos(chance)
        time.sleep(chance.uniform(0.5, 2.0))
    assert cluster.kills["worker busy"] >= 1 and cluster.kills["exporter"] >= 1, cluster.kills
    assert states[slow][1] >= 2, "the slow job was killed mid-run and ran again"

    # The exporter settles: a last run delivers whatever the killed ones left.
    stop_process(cluster.exporter, signal.SIGKILL)
    final = cluster.start_exporter("--once")
    assert final.wait(300) == 0, (cluster.directory / "exporter.log").read_text()[-3000:]

    # What the API says each completed job cost, asked with the key that submitted it.
    tokens: dict[int, int] = {}
    for job_id, (key, _) in submitted.items():
        task = clients[key].get(f"/images/tasks/{job_id}").json()
        if task["status"] == "completed":
            tokens[job_id] = task["result"]["usage"]["output_tokens"]
    for client in clients.values():
        client.close()
    exported = subprocess.run(
        [*CLI, "usage", "export", "--queue", cluster.redis.url, "--format", "jsonl"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    records = [json.loads(line) for line in exported.stdout.splitlines()]

    ids = [record["job_id"] for record in records]
    assert len(ids) == len(set(ids)), "no job billed twice"
    assert set(ids) == set(tokens), "every completed job billed, and only those"
    assert not set(ids) & {i for i, (s, _) in states.items() if s is JobStatus.FAILED}
    assert all(records_for["patches"] == tokens[records_for["job_id"]] for records_for in records)
    key_ids = {submitted[record["job_id"]][0]: record["key_id"] for record in records}
    assert len(set(key_ids.values())) == len(key_ids), "one key id per key"
    ledger_by_model: Counter[str] = Counter()
    ledger_by_key: Counter[str] = Counter()
    for record in records:
        assert record["key_id"] == key_ids[submitted[record["job_id"]][0]]
        ledger_by_model[record["model"]] += record["patches"]
        ledger_by_key[record["key_id"]] += record["patches"]
    api_by_model: Counter[str] = Counter()
    api_by_key: Counter[str] = Counter()
    for job_id, patches in tokens.items():
        key, model = submitted[job_id]
        api_by_model[model] += patches
        api_by_key[key_ids[key]] += patches
    assert ledger_by_model == api_by_model
    assert ledger_by_key == api_by_key

    failed = sum(status is JobStatus.FAILED for status, _ in states.values())
    retried = sum(attempts >= 2 for _, attempts in states.values())
    print(  # the run's figures, for -s
        f"\nkills {dict(cluster.kills)}; {len(records)} completed, {failed} failed, {retried} ran"
        f" again; {len(cluster.receiver.received)} events received for {len(records)} records,"
        f" receiver answers {dict(Counter(cluster.receiver.answers))}"
    )
    received = set(cluster.receiver.received)
    assert received == {record["event_id"] for record in records}
    assert len(cluster.receiver.received) >= len(records)
