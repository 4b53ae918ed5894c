"""Where a gateway's time per submission goes: py-spy's raw stacks sorted into the parts of
the request path, each as a share of samples and in ms per submission. Prints, asserts
nothing.

Record while bench/gateway.py loads two gateways (GIL-held samples only, so time waiting
in epoll is left out; a thread preempted inside a socket write still holds the GIL, so on
shared cores the writes that wake another process weigh more than their CPU):

    .venv/bin/python bench/gateway.py --jobs 25000 --clients 16 --polls 20 &
    sleep 15; .venv/bin/py-spy record -p GATEWAY_PID -d 15 -r 200 --gil -f raw -o gw.raw
    .venv/bin/python bench/gateway_profile.py gw.raw --cpu-ms 0.90

``--cpu-ms``: the run's gateway CPU-seconds per 1,000 jobs (bench/gateway.py prints it).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

# The first part any of whose markers occurs anywhere in a stack gets the sample.
PARTS = [
    ("start-up (imports, lifespan)", ["_find_and_load", "lifespan (", "Config.load"]),
    ("webhook sender and sweeps", ["WebhookSender.run", "_expire_waiting_jobs", "_expire_uploads"]),
    ("Redis events relay (every job's)", ["_relay_events", "PubSub."]),
    ("thread pool hand-offs", ["run_in_threadpool", "Thread._bootstrap"]),
    ("rate limiter", ["ratelimit.py", "limits/"]),
    ("key check", ["keys.py", "authenticate ("]),
    ("metrics", ["prometheus_client"]),
    ("Redis client (the submission's round trips)", ["redis/"]),
    ("parameters and service", ["params.py", "service.py", "control.py"]),
    ("pydantic validation and serialisation", ["pydantic", "serialize_response"]),
    ("JSON body", ["Request.json", "Request.body", "json/"]),
    ("HTTP response write (uvicorn)", ["RequestResponseCycle.send"]),
    ("FastAPI/Starlette middleware, routing, dependencies", ["run_asgi"]),
    ("HTTP parsing (httptools)", ["httptools_impl.py", "protocol.py"]),
]
OTHER = "event loop and the rest"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, help="py-spy record -f raw output")
    parser.add_argument("--cpu-ms", type=float, help="gateway CPU-ms per submission")
    args = parser.parse_args()
    samples: Counter[str] = Counter()
    for line in args.raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():  # a stack py-spy could not read whole
            continue
        part = next((name for name, marks in PARTS if any(m in stack for m in marks)), OTHER)
        samples[part] += int(count)
    samples.pop(PARTS[0][0], None)  # not the request path
    total = sum(samples.values())
    for part, count in samples.most_common():
        share = count / total
        per_submit = f"   {share * args.cpu_ms:5.3f} ms/submit" if args.cpu_ms else ""
        print(f"{share * 100:5.1f}%  {part:<52}{per_submit}")
    print(f"{total} samples")


if __name__ == "__main__":
    main()
