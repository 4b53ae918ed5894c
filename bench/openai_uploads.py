"""Hostile multipart uploads to ``/openai/v1/images/edits`` against a real `tessera serve
--demo`: prints figures, asserts nothing.

For each probe: the HTTP status (and the error's param), the server's peak RSS growth while
it ran and the worst `/healthz` latency meanwhile (how long the event loop stalled), measured
as bench/hostile_input.py measures them. Run it with the interpreter of the checkout:

    .venv/bin/python bench/openai_uploads.py [--parallel 4]
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

# The repository root, for bench and tests.support.
sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from bench.hostile_input import Watch, watched_server
from tessera.runtime.openai import OpenAISettings
from tests.support.server import ServerProcess

EDITS = "/openai/v1/images/edits"
MIB = 1024 * 1024
FIELDS = {"model": "tessera-demo-edit", "prompt": "make it blue", "size": "64x64"}


def noise_png(side: int) -> bytes:
    """An uncompressed PNG of noise: the largest real image per pixel."""
    buffer = io.BytesIO()
    Image.effect_noise((side, side), 64).convert("RGB").save(buffer, "PNG", compress_level=0)
    return buffer.getvalue()


def outcome_of(response: httpx.Response) -> dict[str, Any]:
    try:
        error = response.json().get("error") or {}
    except ValueError:
        error = {}
    return {"status": response.status_code, "param": error.get("param")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallel", type=int, default=4, help="clients at once")
    args = parser.parse_args()
    with watched_server() as (server, watch):
        run_probes(server, watch, args.parallel)


def run_probes(server: ServerProcess, watch: Watch, parallel: int) -> None:
    client = httpx.Client(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=300,
    )

    def edit(files: list[tuple[str, tuple[str, bytes, str]]], **fields: Any) -> dict[str, Any]:
        return outcome_of(client.post(EDITS, files=files, data={**FIELDS, **fields}))

    def at_once(files: list[tuple[str, tuple[str, bytes, str]]]) -> list[dict[str, Any]]:
        with ThreadPoolExecutor(parallel) as pool:
            outcomes = list(pool.map(lambda _: edit(files), range(parallel)))
        return [dict(t) for t in {tuple(o.items()) for o in outcomes}]

    image = noise_png(2500)
    junk = b"\0" * (19 * MIB)
    outcome: dict[str, Any] = {"bytes": len(image)}
    with watch.probe(f"one {len(image) // MIB} MiB noise PNG, edited", outcome):
        outcome.update(edit([("image", ("a.png", image, "image/png"))]))
    # The same image through the native API, for comparison: a signed upload, and a data: URL.
    native = server.client(timeout=300)
    body = {"model": "tessera-demo-edit", "prompt": "make it blue", "image_size": "64x64"}
    outcome = {"bytes": len(image)}
    with watch.probe("native: the same PNG by signed upload", outcome):
        grant = native.get("/images/signed-url").json()
        httpx.put(grant["signed_url"], content=image, timeout=300)
        answer = native.post("/images/edits", json={**body, "image_url": grant["filename"]})
        outcome["submit"] = answer.status_code
    outcome = {"bytes": len(image)}
    with watch.probe("native: the same PNG as a data: URL", outcome):
        reference = "data:image/png;base64," + base64.b64encode(image).decode()
        answer = native.post("/images/edits", json={**body, "image_url": reference})
        outcome["submit"] = answer.status_code
    native.close()
    outcome = {"parallel": parallel, "bytes_each": len(image)}
    with watch.probe(f"{parallel} x one {len(image) // MIB} MiB noise PNG at once", outcome):
        outcome["answers"] = at_once([("image", ("a.png", image, "image/png"))])
    outcome = {"parallel": parallel}
    with watch.probe(f"{parallel} x 3 x 19 MiB files, model takes 1", outcome):
        outcome["answers"] = at_once([("image[]", ("a.png", junk, "image/png"))] * 3)
    outcome = {"parallel": parallel}
    with watch.probe(f"{parallel} x one 19 MiB file that is no image", outcome):
        outcome["answers"] = at_once([("image", ("a.png", junk, "image/png"))])
    over = OpenAISettings().max_body_bytes // (19 * MIB) + 1
    outcome = {"files": over}
    with watch.probe(f"{over} x 19 MiB: past the body limit", outcome):
        outcome.update(edit([("image[]", ("a.png", junk, "image/png"))] * over))
    client.close()


if __name__ == "__main__":
    main()
