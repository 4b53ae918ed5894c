"""A web app on another origin calls the API from Chromium: allowed only with --cors-origin.

The page is served from ``http://localhost:PORT`` and calls ``http://127.0.0.1:PORT``: a
different origin to the browser, and the same loopback address, so Chromium's local-network
rules play no part and only CORS decides.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from tests.conftest import new_server
from tests.support.server import ServerProcess, free_port

pytestmark = pytest.mark.browser

# Submit a tiny job, long-poll it, and download the image: the whole client path.
CLIENT_SCRIPT = """
async ([api, key]) => {
  try {
    const headers = {api_key: key, "content-type": "application/json"};
    const body = JSON.stringify({
      model: "tessera-demo", prompt: "a red kite", image_size: {width: 64, height: 64},
      num_inference_steps: 1, seed: 7,
    });
    const submitted = await (await fetch(`${api}/images/generations`,
                                         {method: "POST", headers, body})).json();
    let task;
    do {
      task = await (await fetch(`${api}/images/tasks/${submitted.job_id}?wait=20`,
                                {headers})).json();
    } while (task.status === "queued" || task.status === "in_progress");
    const image = await fetch(task.result.data[0].url);
    return {status: task.status, type: image.headers.get("content-type"),
            bytes: (await image.arrayBuffer()).byteLength};
  } catch (error) {
    return {error: String(error)};
  }
}
"""


@pytest.fixture(scope="module")
def cors_server(
    tmp_path_factory: pytest.TempPathFactory, demo_models_dir: Path
) -> Iterator[ServerProcess]:
    port = free_port()
    server = new_server(
        tmp_path_factory.mktemp("cors"),
        demo_models_dir,
        "--cors-origin",
        f"http://localhost:{port}/",  # the trailing slash a user may type is accepted
        port=port,
    ).start()
    yield server
    server.stop()


def call_from_other_origin(browser: Browser, server: ServerProcess) -> dict[str, Any]:
    context = browser.new_context()
    try:
        page: Page = context.new_page()
        page.goto(f"http://localhost:{server.port}/healthz")
        result: dict[str, Any] = page.evaluate(CLIENT_SCRIPT, [server.api_url, server.api_key])
        return result
    finally:
        context.close()


def test_an_allowed_origin_submits_polls_and_downloads(
    browser: Browser, cors_server: ServerProcess
) -> None:
    result = call_from_other_origin(browser, cors_server)
    assert result.get("status") == "completed", result
    assert result["type"] == "image/png" and result["bytes"] > 100, result


def test_without_cors_origin_the_browser_refuses(
    browser: Browser, demo_server: ServerProcess
) -> None:
    result = call_from_other_origin(browser, demo_server)
    assert "Failed to fetch" in result.get("error", ""), result
