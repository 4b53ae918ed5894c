"""Hostile and careless clients over real sockets: bodies, slow clients, rate limits, files.

One server with tight limits for the whole module (the limits are per key, and each test
that spends a key's allowance uses a key of its own), so the deadlines are seconds, not
the defaults' tens of seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import stat
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.api.helpers import FAST, assert_error, png_bytes, submit, wait
from tests.conftest import new_server
from tests.support.server import ServerProcess, free_port
from tests.support.waiting import wait_until

HEADER_TIMEOUT = 2.0
KEYS = tuple(
    f"test-key-{name}" for name in ("plain", "submit", "poll", "b64", "upload", "files", "replay")
)
MiB = 1024 * 1024
JOB = {**FAST, "model": "tessera-demo", "prompt": "a lighthouse"}


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, demo_models_dir: Path, metrics_port: int
) -> Iterator[ServerProcess]:
    process = new_server(
        tmp_path_factory.mktemp("hostile"),
        demo_models_dir,
        "--header-timeout",
        str(HEADER_TIMEOUT),
        "--rate-limit-submit",
        "4/minute",
        "--rate-limit-poll",
        "6/minute",
        "--rate-limit-b64",
        "2/minute",
        "--upload-ttl",
        "3",
        "--metrics-port",
        str(metrics_port),
    )
    process.keys = KEYS
    yield process.start()
    process.stop()


def connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def status_of(sock: socket.socket) -> int:
    """The status code of the response on ``sock``; the socket's timeout bounds the wait."""
    head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 "), head
    return int(head.split()[1])


def rss(server: ServerProcess) -> int:
    assert server.process is not None
    return int(psutil.Process(server.process.pid).memory_info().rss)


# -- bodies -----------------------------------------------------------------------------------


def test_a_huge_body_without_a_key_is_refused_before_any_of_it_is_read(
    server: ServerProcess,
) -> None:
    before = rss(server)
    with connect(server) as sock:
        sock.sendall(
            b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (300 * MiB)
        )
        started = time.monotonic()
        # Not one byte of the body is sent: the answer cannot have waited for it.
        sock.settimeout(5)
        assert status_of(sock) == 401
        answered_in = time.monotonic() - started
        # The client may go on sending: the server discards it without keeping it.
        chunk = b" " * MiB
        with contextlib.suppress(OSError):
            for _ in range(300):
                sock.sendall(chunk)
    assert answered_in < 2
    assert rss(server) - before < 50 * MiB


def test_a_json_body_over_the_limit_is_413_naming_the_body(server: ServerProcess) -> None:
    key = {"api_key": server.keys[0]}
    with connect(server) as sock:
        sock.sendall(
            b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\napi_key: %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (key["api_key"].encode(), 300 * MiB)
        )
        sock.settimeout(5)
        assert status_of(sock) == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"model": "tessera-demo", "prompt": "'
        for _ in range(3):
            yield b"a" * (MiB // 2)
        yield b'"}'

    response = httpx.post(
        server.api_url + "/images/generations", headers=key, content=chunks(), timeout=30
    )
    body = assert_error(response, 413, field="body")
    assert body["rule"] == "max_bytes" and "1048576" in body["message"]


# -- slow clients -----------------------------------------------------------------------------


def trickle(server: ServerProcess, first: bytes, pieces: list[bytes]) -> tuple[int | None, float]:
    """Send ``first``, then a piece every half second; the status and when it came."""
    with connect(server) as sock:
        sock.sendall(first)
        started = time.monotonic()
        sock.settimeout(0.5)
        for piece in pieces:
            try:
                return status_of(sock), time.monotonic() - started
            except TimeoutError:
                pass
            try:
                sock.sendall(piece)
            except OSError:
                break
        sock.settimeout(5)
        try:
            return status_of(sock), time.monotonic() - started
        except (AssertionError, OSError):
            return None, time.monotonic() - started


def test_headers_sent_a_line_at_a_time_are_cut_at_the_header_timeout(
    server: ServerProcess,
) -> None:
    status, after = trickle(
        server, b"GET /healthz HTTP/1.1\r\n", [b"X-Slow-%d: 1\r\n" % n for n in range(40)]
    )
    assert status == 408
    assert HEADER_TIMEOUT - 0.5 < after < HEADER_TIMEOUT + 1.5


def test_a_body_sent_a_byte_at_a_time_is_cut(server: ServerProcess) -> None:
    head = (
        b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\napi_key: %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n" % server.keys[0].encode()
    )
    status, after = trickle(server, head, [b" "] * 40)
    assert status == 408
    # The grace period equals the header timeout; the rate is checked twice a second.
    assert HEADER_TIMEOUT - 0.5 < after < HEADER_TIMEOUT + 1.5


def test_a_steady_body_slower_than_the_grace_period_still_arrives(server: ServerProcess) -> None:
    """48 KB at 16 KB/s takes three seconds, more than the grace period, well above 1 KB/s."""

    def chunks() -> Iterator[bytes]:
        for _ in range(12):
            yield b" " * 4096
            time.sleep(0.25)
        yield b"{}"

    response = httpx.post(
        server.api_url + "/images/generations",
        headers={"api_key": server.keys[0], "Content-Type": "application/json"},
        content=chunks(),
        timeout=30,
    )
    assert_error(response, 422, field="model")


# Linux's struct tcp_info: tcpi_data_segs_in, the data segments this socket received.
TCP_INFO_DATA_SEGS_IN = 152


def data_segments_in(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_DATA_SEGS_IN + 8)
    return int(struct.unpack_from("I", info, TCP_INFO_DATA_SEGS_IN)[0])


def test_an_answer_leaves_in_one_segment_and_a_head_request_is_not_held(
    server: ServerProcess,
) -> None:
    """uvicorn writes a response's head and body apart, two segments and two wake-ups of
    the client per answer; the API sends a response of known length in one write. A HEAD
    request, whose body is never written, gets its head at once."""
    with connect(server) as sock:
        for answered in range(1, 4):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            response = b""
            while not response.endswith(b'{"status":"ok"}'):
                response += sock.recv(4096)
            assert data_segments_in(sock) == answered
        sock.settimeout(5)
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(sock) == 307


# -- uploads ----------------------------------------------------------------------------------


def test_a_signed_upload_url_takes_one_put_and_the_upload_expires(server: ServerProcess) -> None:
    with server.client(KEYS[4]) as client:
        signed = client.get("/images/signed-url").json()
        assert httpx.put(signed["signed_url"], content=png_bytes()).status_code == 204
        again = httpx.put(signed["signed_url"], content=png_bytes(colour="red"))
        assert assert_error(again, 409)["error"] == "upload.used"
        uploads = server.data_dir / "files" / "uploads"
        stored = next(uploads.rglob(signed["filename"]))
        # --upload-ttl 3: the sweeper deletes it a few seconds later.
        wait_until("the upload to expire", lambda: not stored.exists(), timeout=15)
        edit = {**JOB, "model": "tessera-demo-edit", "image_url": signed["filename"]}
        response = client.post("/images/edits", json=edit)
        assert_error(response, 422, field="image_url")


# -- rate limits ------------------------------------------------------------------------------


def test_submits_and_polls_over_the_key_limit_get_429_with_retry_after(
    server: ServerProcess,
) -> None:
    with server.client(KEYS[1]) as client:
        for _ in range(4):
            submit(client, JOB)
        refused = client.post("/images/generations", json=JOB)
    body = assert_error(refused, 429)
    assert body["error"] == "rate.limited"
    assert 1 <= body["retry_after"] <= 60
    assert int(refused.headers["retry-after"]) == body["retry_after"]
    with server.client(KEYS[2]) as client:  # another key is not held back
        job_id = submit(client, JOB)
        statuses = [client.get(f"/images/tasks/{job_id}").status_code for _ in range(7)]
    assert statuses == [200] * 6 + [429]


def test_idempotent_replays_spend_the_submit_limit(server: ServerProcess) -> None:
    """A replay costs the gateway a store read and answers a job: it is a submission to the
    limiter, so a loop of retries is held back like a loop of submits."""
    headers = {"Idempotency-Key": "one-key"}
    with server.client(KEYS[6]) as client:
        answers = [client.post("/images/generations", json=JOB, headers=headers) for _ in range(5)]
    assert [a.status_code for a in answers] == [200] * 4 + [429]
    assert [a.headers.get("Idempotent-Replayed") for a in answers[:4]] == [None] + ["true"] * 3
    assert len({a.json()["job_id"] for a in answers[:4]}) == 1
    body = assert_error(answers[4], 429)
    assert "job_id" not in body


def test_b64_results_count_against_their_own_limit(server: ServerProcess) -> None:
    with server.client(KEYS[3]) as client:
        job_id = submit(
            client,
            {**JOB, "image_size": "256x256", "response_format": "b64_json"},
        )
        task = wait(client, job_id)
        assert task["status"] == "completed" and task["result"]["data"][0]["b64_json"]
        # --rate-limit-b64 2/minute: the first full answer was 1 MiB (rounded up), one more
        # fits, the third is refused.
        assert client.get(f"/images/tasks/{job_id}").status_code == 200
        assert_error(client.get(f"/images/tasks/{job_id}"), 429)


# -- metrics and key ids ----------------------------------------------------------------------


def test_metrics_are_off_the_api_port_and_carry_no_key(
    server: ServerProcess, metrics_port: int
) -> None:
    with server.client(KEYS[0]) as client:
        job_id = submit(client, JOB)
        assert wait(client, job_id)["status"] == "completed"
    assert httpx.get(server.base_url + "/metrics/").status_code == 404
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    patches = [line for line in text.splitlines() if line.startswith("tessera_patches_total{")]
    assert patches == [next(p for p in patches if 'model="tessera-demo"' in p)]
    assert "key_id" not in text
    # The key's id (in the job's upload paths and the ledger) is not derivable from the key.
    signed = httpx.get(server.api_url + "/images/signed-url", headers={"api_key": KEYS[0]})
    derivable = "key_" + hashlib.sha256(KEYS[0].encode()).hexdigest()[:10]
    assert "/v1/uploads/key_" in signed.json()["signed_url"]
    assert derivable not in signed.json()["signed_url"]


# -- the data directory -----------------------------------------------------------------------


def test_the_data_directory_is_its_owners_alone(server: ServerProcess) -> None:
    with server.client(KEYS[5]) as client:
        assert wait(client, submit(client, JOB))
    data = server.data_dir
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    private = [data / "jobs.db", data / "jobs.db-wal", data / "jobs.db-shm"]
    private += list((data / "files").rglob("*")) + list(data.glob("*.key"))
    assert any(path.suffix == ".png" for path in private)
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (path, oct(path.stat().st_mode))


def test_a_data_directory_made_before_is_narrowed(tmp_path: Path, demo_models_dir: Path) -> None:
    """An upgrade: the directory and the database were created world-readable."""
    server = new_server(tmp_path / "old", demo_models_dir)
    server.data_dir.chmod(0o755)
    (server.data_dir / "jobs.db").touch(mode=0o644)
    server.start()
    try:
        assert stat.S_IMODE(server.data_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((server.data_dir / "jobs.db").stat().st_mode) == 0o600
    finally:
        server.stop()


# -- long polls -------------------------------------------------------------------------------


def test_two_hundred_long_polls_answer_within_a_second_of_their_wait(
    tmp_path: Path, demo_models_dir: Path
) -> None:
    """Many waiters share the store's one thread; none may be answered late because of it.

    The job waited on stays queued behind a large job that keeps the one worker busy. Each
    waiter is a bare socket, so the clock measures the server rather than a client library
    parsing two hundred responses at once.
    """
    server = new_server(tmp_path / "polls", demo_models_dir).start()
    wait_seconds = 8.0
    heavy = {"num_images": 4, "image_size": "2048x2048", "num_inference_steps": 50}
    request = b"GET /v1/images/tasks/%d?wait=%g HTTP/1.1\r\nHost: x\r\napi_key: %s\r\n\r\n"

    async def one(job_id: int) -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        started = time.monotonic()
        writer.write(request % (job_id, wait_seconds, server.api_key.encode()))
        head = await reader.readuntil(b"\r\n\r\n")
        took = time.monotonic() - started
        length = int(
            next(line for line in head.split(b"\r\n") if line.startswith(b"content-length:")).split(
                b":"
            )[1]
        )
        body = await reader.readexactly(length)
        writer.close()
        return took, body

    try:
        with server.client() as client:
            submit(client, {**JOB, **heavy})
            job_id = submit(client, JOB)

        async def all_of_them() -> list[tuple[float, bytes]]:
            return await asyncio.gather(*(one(job_id) for _ in range(200)))

        answers = asyncio.run(all_of_them())
    finally:
        server.kill()
    durations = sorted(took for took, _ in answers)
    assert all(b'"status":"queued"' in body for _, body in answers)
    assert durations[0] >= wait_seconds - 0.05
    assert durations[-1] < wait_seconds + 1, durations[-5:]
