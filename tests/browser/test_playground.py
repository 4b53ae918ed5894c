"""The Playground in Debian's Chromium (headless, through Playwright) against a real server.

Every test leaves screenshots in test-artifacts/playground/ for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, Locator, Page, expect

from tests.support.server import ServerProcess

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "playground"
JOB_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module", autouse=True)
def _artifacts() -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)


@pytest.fixture
def page(browser: Browser, demo_server: ServerProcess) -> Iterator[Page]:
    """A fresh tab; uncaught script errors and CSP refusals fail the test."""
    context = browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(message.text)
            if message.type == "error" and ("Refused" in message.text or "Uncaught" in message.text)
            else None
        ),
    )
    page.set_default_timeout(20_000)
    yield page
    context.close()
    assert not problems, problems


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def sign_in(page: Page, server: ServerProcess, key: str | None = None) -> None:
    page.goto(server.base_url + "/")
    page.get_by_label("API key").fill(key or server.api_key)
    page.get_by_role("button", name="Sign in").click()


def signed_in(page: Page, server: ServerProcess) -> None:
    sign_in(page, server)
    expect(page.get_by_label("Prompt")).to_be_visible()


def panel(page: Page, letter: str = "A") -> Locator:
    """Model A's or B's settings: a region, or with Compare on, the tab panel of tab "Model A"."""
    return page.get_by_role("region", name=f"Settings {letter}").or_(
        page.get_by_role("tabpanel", name=f"Model {letter}", exact=True)
    )


def tab(page: Page, letter: str) -> Locator:
    return page.get_by_role("tab", name=f"Model {letter}", exact=True)


def showing(page: Page, letter: str) -> None:
    """Tab `letter` is the selected one, and its panel the only one shown."""
    other = "B" if letter == "A" else "A"
    expect(tab(page, letter)).to_have_attribute("aria-selected", "true")
    expect(tab(page, other)).to_have_attribute("aria-selected", "false")
    # The tab points at its panel, and the panel is named by its tab.
    controlled = page.locator(f"#{tab(page, letter).get_attribute('aria-controls')}")
    expect(controlled).to_have_accessible_name(f"Model {letter}")
    expect(panel(page, letter)).to_be_visible()
    expect(panel(page, other)).to_be_hidden()
    expect(page.get_by_role("tabpanel")).to_have_count(1)


def choose_model(page: Page, name: str, letter: str = "A") -> None:
    panel(page, letter).get_by_label("Model", exact=True).click()
    page.get_by_role("combobox", name="Search").fill(name)
    page.get_by_role("option", name=name, exact=True).click()
    expect(panel(page, letter).get_by_label("Model", exact=True)).to_contain_text(name)


def advanced(page: Page, letter: str = "A") -> Locator:
    settings = panel(page, letter)
    toggle = settings.get_by_role("switch", name="Show advanced settings")
    if not toggle.is_checked():
        toggle.check(force=True)
    return settings


def custom_size(page: Page, width: int, height: int, letter: str = "A") -> None:
    settings = advanced(page, letter)
    settings.get_by_label("Image Size").select_option("custom")
    settings.get_by_label("Width").fill(str(width))
    settings.get_by_label("Height").fill(str(height))


def generate(page: Page, prompt: str) -> None:
    page.get_by_label("Prompt").fill(prompt)
    page.get_by_role("button", name="Generate").click()


def latest(page: Page, letter: str = "A") -> Locator:
    return page.locator(".run").first.get_by_role("region", name=f"Result {letter}")


def completed(page: Page, letter: str = "A") -> Locator:
    result = latest(page, letter)
    expect(result.get_by_role("status").first).to_have_text("Completed", timeout=JOB_TIMEOUT_MS)
    return result


def natural_size(image: Locator) -> tuple[int, int]:
    expect(image).to_be_visible()
    image.evaluate("img => img.decode()")
    return tuple(image.evaluate("img => [img.naturalWidth, img.naturalHeight]"))  # type: ignore[return-value]


def upload_source(page: Page, path: Path, letter: str = "A") -> None:
    settings = panel(page, letter)
    settings.get_by_label("Source image", exact=True).set_input_files(str(path))
    expect(settings.get_by_text("Uploaded")).to_be_visible()


def write_png(path: Path, width: int = 96, height: int = 64) -> Path:
    Image.new("RGB", (width, height), "orange").save(path)
    return path


def shown_image(result: Locator) -> bytes:
    """The bytes of the image a result shows."""
    src = result.get_by_role("img").get_attribute("src")
    assert src
    return httpx.get(src, timeout=30).content


def run_script(script: str, server: ServerProcess, cwd: Path) -> tuple[bytes, str]:
    """Run a copied Python snippet with the key in the environment: (the image it saved, its
    output)."""
    assert server.api_key not in script
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "TESSERA_API_KEY": server.api_key},
        cwd=cwd,
        timeout=120,
        check=True,
    )
    saved = re.search(r"saved (\S+)", run.stdout)
    assert saved, run.stdout
    return (cwd / saved.group(1)).read_bytes(), run.stdout


def test_sign_in_generate_and_see_the_patch_line(page: Page, demo_server: ServerProcess) -> None:
    sign_in(page, demo_server)
    assert page.url == demo_server.base_url + "/playground/"
    expect(page.get_by_label("Prompt")).to_be_visible()
    # The key lives in this tab's sessionStorage only, never in the URL.
    assert demo_server.api_key not in page.url
    stored = page.evaluate("Object.values(sessionStorage)")
    assert demo_server.api_key in stored
    assert page.evaluate("Object.values(localStorage)") == []
    shot(page, "01-signed-in")

    choose_model(page, "tessera-demo")
    generate(page, "a lighthouse at dusk, volumetric fog")
    expect(latest(page).get_by_role("status").first).to_have_text(
        re.compile(r"Submitting|Queued|Generating|Completed")
    )
    shot(page, "02-running")
    result = completed(page)
    # The schema's defaults: landscape_4_3 (1024x768 = 3,072 patches), 4 steps.
    assert natural_size(result.get_by_role("img")) == (1024, 768)
    meta = result.locator(".result-meta")
    expect(meta).to_contain_text(
        re.compile(r"tessera-demo · 4 steps · [\d.]+ (s|min) · 3,072 patches billed")
    )
    shot(page, "03-generated")

    # Full size in a dialog, and a download of the very bytes the API serves.
    result.get_by_role("button", name="Open full size").click(force=True)
    expect(page.get_by_role("dialog")).to_be_visible()
    shot(page, "04-full-size")
    with page.expect_download() as download:
        page.get_by_role("dialog").get_by_role("button", name="Download").click()
    saved = Path(download.value.path())
    src = result.get_by_role("img").get_attribute("src")
    assert src
    assert saved.read_bytes() == httpx.get(src, timeout=30).content
    assert download.value.suggested_filename.endswith("-0.png")
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_be_hidden()

    # The key survives a reload of the tab, and Sign out forgets it.
    page.reload()
    expect(page.get_by_label("Prompt")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key")).to_be_visible()
    assert page.evaluate("Object.values(sessionStorage)") == []


def test_model_dropdown_searches_and_tags_each_model(
    page: Page, demo_server: ServerProcess
) -> None:
    signed_in(page, demo_server)
    panel(page).get_by_label("Model", exact=True).click()
    options = page.get_by_role("option")
    expect(options).to_have_count(2)
    text_model = page.get_by_role("option", name="tessera-demo", exact=True)
    expect(text_model).to_contain_text("Text to Image")
    expect(page.get_by_role("option", name="tessera-demo-edit")).to_contain_text("Image to Image")
    expect(options.first).to_contain_text("Tessera")
    page.get_by_role("combobox", name="Search").fill("image to image")
    expect(options).to_have_count(1)
    shot(page, "05-model-search")
    page.get_by_role("combobox", name="Search").fill("no such thing")
    expect(options).to_have_count(0)
    expect(panel(page).get_by_text("No model matches")).to_be_visible()
    page.keyboard.press("Escape")

    # An image-to-image model asks for a source image; a text-to-image one does not.
    choose_model(page, "tessera-demo-edit")
    expect(panel(page).get_by_text("Source image", exact=True)).to_be_visible()
    choose_model(page, "tessera-demo")
    expect(panel(page).get_by_text("Source image", exact=True)).to_have_count(0)


def test_advanced_settings_follow_the_model_schema(page: Page, demo_server: ServerProcess) -> None:
    signed_in(page, demo_server)
    settings = advanced(page)
    steps = settings.get_by_label("Num Inference Steps")
    guidance = settings.get_by_label("Guidance Scale")
    count = settings.get_by_label("Num Images")
    # The demo model narrows steps to a default of 4; the rest are the API's own ranges.
    assert [steps.get_attribute(a) for a in ("min", "max")] == ["1", "50"]
    expect(steps).to_have_value("4")
    assert [guidance.get_attribute(a) for a in ("min", "max")] == ["1", "20"]
    expect(guidance).to_have_value("4.5")
    assert [count.get_attribute(a) for a in ("min", "max")] == ["1", "4"]
    size = settings.get_by_label("Image Size")
    expect(size).to_have_value("landscape_4_3")
    presets = size.locator("option").evaluate_all("options => options.map(o => o.value)")
    assert presets == [
        "square_hd",
        "square",
        "portrait_4_3",
        "portrait_16_9",
        "landscape_4_3",
        "landscape_16_9",
        "custom",
    ]
    expect(settings.get_by_label("Seed")).to_have_value("")

    custom_size(page, 96, 64)
    assert settings.get_by_label("Width").get_attribute("max") == "2048"
    settings.get_by_role("button", name="More images").click()
    expect(count).to_have_value("2")
    steps.fill("3")
    guidance.fill("7")
    settings.get_by_label("Seed").fill("77")
    expect(page.locator("#estimate")).to_have_text("≈ 48 patches")
    shot(page, "06-advanced-settings")

    generate(page, "two small tiles")
    result = completed(page)
    images = result.get_by_role("img")
    expect(images).to_have_count(2)
    assert natural_size(images.nth(1)) == (96, 64)
    meta = result.locator(".result-meta")
    expect(meta).to_contain_text("3 steps")
    expect(meta).to_contain_text("48 patches billed")
    expect(meta).to_contain_text("seed 77")
    shot(page, "07-two-images")


def test_ui_api_shows_requests_that_make_the_same_image(
    page: Page, demo_server: ServerProcess, tmp_path: Path
) -> None:
    signed_in(page, demo_server)
    custom_size(page, 64, 48)
    panel(page).get_by_label("Seed").fill("1234")
    generate(page, "a red fox in snow, 'quoted' \"twice\"")
    result = completed(page)
    shown = shown_image(result)

    result.get_by_role("switch", name="UI / API").check(force=True)
    curl = result.locator("code[data-snippet=curl]")
    expect(curl).to_be_visible()
    command = curl.inner_text()
    shot(page, "08-api-curl")
    assert demo_server.api_key not in command
    assert "$TESSERA_API_KEY" in command
    assert f"{demo_server.api_url}/images/generations" in command

    env = {**os.environ, "TESSERA_API_KEY": demo_server.api_key}
    answer = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, env=env, timeout=60, check=True
    )
    job_id = json.loads(answer.stdout)["job_id"]
    with demo_server.client() as client:
        for _ in range(20):
            task = client.get(f"/images/tasks/{job_id}", params={"wait": 10}).json()
            if task["status"] in ("completed", "failed"):
                break
    assert task["status"] == "completed", task
    assert task["result"]["parameters"]["seed"] == 1234
    assert httpx.get(task["result"]["data"][0]["url"], timeout=30).content == shown

    # The Python tab is a whole script: submit, long-poll, save.
    result.get_by_role("tab", name="Python").click()
    script = result.locator("code[data-snippet=python]").inner_text()
    shot(page, "09-api-python")
    saved, output = run_script(script, demo_server, tmp_path)
    assert saved == shown
    assert "patches billed: 12" in output

    # The OpenAI SDK tab: the same request through /openai/v1, one call that waits.
    result.get_by_role("tab", name="OpenAI SDK").click()
    expect(result.get_by_role("tab", name="OpenAI SDK")).to_have_attribute("aria-selected", "true")
    script = result.locator("code[data-snippet=openai]").inner_text()
    shot(page, "09b-api-openai-sdk")
    assert f'base_url="{demo_server.base_url}/openai/v1"' in script
    assert 'size="64x48"' in script and '"seed": 1234' in script
    saved, output = run_script(script, demo_server, tmp_path)
    assert saved == shown
    assert "patches billed: 12" in output

    result.get_by_role("switch", name="UI / API").uncheck(force=True)
    expect(result.get_by_role("img")).to_be_visible()


def test_a_drawn_seed_is_written_into_the_code(page: Page, demo_server: ServerProcess) -> None:
    signed_in(page, demo_server)
    custom_size(page, 32, 32)
    generate(page, "no seed given")
    result = completed(page)
    seed = re.search(r"seed (\d+)", result.locator(".result-meta").inner_text())
    assert seed
    result.get_by_role("switch", name="UI / API").check(force=True)
    expect(result.locator("code[data-snippet=curl]")).to_contain_text(f'"seed": {seed.group(1)}')
    expect(result.get_by_text("was drawn by the server")).to_be_visible()


def test_edit_with_an_uploaded_image(
    page: Page, demo_server: ServerProcess, tmp_path: Path
) -> None:
    signed_in(page, demo_server)
    choose_model(page, "tessera-demo-edit")
    upload_source(page, write_png(tmp_path / "source.png"))
    custom_size(page, 64, 64)
    shot(page, "10-edit-source")
    generate(page, "make it teal")
    result = completed(page)
    assert natural_size(result.get_by_role("img")) == (64, 64)
    expect(result.locator(".result-meta")).to_contain_text("16 patches billed")
    shot(page, "11-edited")
    shown = shown_image(result)
    result.get_by_role("switch", name="UI / API").check(force=True)
    curl = result.locator("code[data-snippet=curl]")
    expect(curl).to_contain_text("/images/edits")
    expect(curl).to_contain_text('"image_url": "upload-')

    # Through the OpenAI SDK the source is a file: the same one makes the same image, since
    # the seed the server drew is filled in.
    expect(result.get_by_text("was drawn by the server")).to_be_visible()
    result.get_by_role("tab", name="OpenAI SDK").click()
    script = result.locator("code[data-snippet=openai]").inner_text()
    expect(result.get_by_text("Save the source image as source.png")).to_be_visible()
    shot(page, "11b-edit-openai-sdk")
    assert "client.images.edit(" in script and 'open("source.png", "rb")' in script
    saved, output = run_script(script, demo_server, tmp_path)
    assert saved == shown
    assert "patches billed: 16" in output


def test_compare_runs_one_prompt_through_two_models(
    page: Page, demo_server: ServerProcess, tmp_path: Path
) -> None:
    signed_in(page, demo_server)
    tabs = page.get_by_role("tablist", name="Compared models")
    expect(tabs).to_be_hidden()
    expect(panel(page, "B")).to_be_hidden()
    page.get_by_role("switch", name="Compare").check(force=True)
    # Compare opens on tab B: the panel that just appeared is the one to set up next.
    expect(tabs).to_be_visible()
    showing(page, "B")

    choose_model(page, "tessera-demo-edit", "B")
    expect(tab(page, "B")).to_contain_text("tessera-demo-edit")
    expect(tab(page, "B")).to_have_accessible_description("tessera-demo-edit")
    upload_source(page, write_png(tmp_path / "b.png"), "B")
    custom_size(page, 96, 48, "B")
    advanced(page, "B").get_by_label("Num Inference Steps").fill("2")

    tab(page, "A").click()
    showing(page, "A")
    choose_model(page, "tessera-demo", "A")
    expect(tab(page, "A")).to_contain_text("tessera-demo")
    custom_size(page, 64, 64, "A")

    # The keyboard, as WAI-ARIA tabs: one tab stop, and the arrows move between the two tabs.
    tab(page, "A").focus()
    expect(tab(page, "A")).to_have_attribute("tabindex", "0")
    expect(tab(page, "B")).to_have_attribute("tabindex", "-1")
    page.keyboard.press("ArrowRight")
    expect(tab(page, "B")).to_be_focused()
    showing(page, "B")
    # B's settings are all still there behind its tab.
    expect(panel(page, "B").get_by_text("Uploaded")).to_be_visible()
    expect(panel(page, "B").get_by_label("Num Inference Steps")).to_have_value("2")
    page.keyboard.press("ArrowLeft")
    expect(tab(page, "A")).to_be_focused()
    showing(page, "A")
    page.keyboard.press("ArrowLeft")
    expect(tab(page, "B")).to_be_focused()
    showing(page, "B")
    page.keyboard.press("ArrowRight")
    showing(page, "A")

    expect(page.locator("#estimate")).to_have_text("≈ 34 patches")
    generate(page, "a harbour at night")

    a, b = completed(page, "A"), completed(page, "B")
    expect(a).to_contain_text("tessera-demo")
    expect(b).to_contain_text("tessera-demo-edit")
    assert natural_size(a.get_by_role("img")) == (64, 64)
    assert natural_size(b.get_by_role("img")) == (96, 48)
    expect(a.locator(".result-meta")).to_contain_text("4 steps · ")
    expect(b.locator(".result-meta")).to_contain_text("2 steps · ")
    expect(b.locator(".result-meta")).to_contain_text("18 patches billed")
    # Side by side, each with its own switch.
    box_a, box_b = a.bounding_box(), b.bounding_box()
    assert box_a
    assert box_b
    assert box_b["x"] > box_a["x"] + box_a["width"] - 1
    assert abs(box_a["y"] - box_b["y"]) < 2
    expect(page.locator(".run").first.get_by_role("switch", name="UI / API")).to_have_count(2)
    shot(page, "12-compare")
    tab(page, "B").click()
    showing(page, "B")
    b.get_by_role("switch", name="UI / API").check(force=True)
    expect(b.locator("code[data-snippet=curl]")).to_contain_text("/images/edits")
    expect(a.get_by_role("img")).to_be_visible()
    shot(page, "13-compare-api")

    # Compare off: no tabs, panel A alone with its settings kept; on again opens tab B.
    page.get_by_role("switch", name="Compare").uncheck(force=True)
    expect(tabs).to_be_hidden()
    expect(page.get_by_role("tabpanel")).to_have_count(0)
    expect(panel(page, "A")).to_be_visible()
    expect(panel(page, "A").get_by_label("Width")).to_have_value("64")
    expect(panel(page, "B")).to_be_hidden()
    expect(page.locator("#estimate")).to_have_text("≈ 16 patches")
    page.get_by_role("switch", name="Compare").check(force=True)
    showing(page, "B")

    page.get_by_role("button", name="Clear").click()
    expect(page.locator(".run")).to_have_count(0)
    expect(page.get_by_text("What will you make?")).to_be_visible()


def test_errors_read_as_messages_never_a_blank_canvas(
    page: Page, demo_server: ServerProcess
) -> None:
    sign_in(page, demo_server, key="not-a-real-key")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("This key was refused: invalid API key (HTTP 401)")
    expect(page.get_by_label("API key")).to_be_visible()
    shot(page, "14-bad-key")

    signed_in(page, demo_server)
    custom_size(page, 5000, 64)
    generate(page, "too wide")
    result = latest(page)
    error = result.get_by_role("alert")
    expect(error).to_contain_text("Invalid parameters")
    expect(error).to_contain_text("image_size.width must be between 16 and 2048 pixels")
    expect(error).to_contain_text("HTTP 422 · parameter.invalid")
    expect(panel(page).get_by_label("Width")).to_have_attribute("aria-invalid", "true")
    shot(page, "15-invalid-size")

    choose_model(page, "tessera-demo-edit")
    generate(page, "no source image")
    expect(latest(page).get_by_role("alert")).to_contain_text("choose a source image first")

    panel(page).get_by_role("radio", name="URL").click()
    panel(page).get_by_label("Image URL").fill("http://127.0.0.1:9/private.png")
    generate(page, "a private address")
    expect(latest(page).get_by_role("alert")).to_contain_text("image_url")
    shot(page, "16-edit-errors")


def test_cancel_stops_a_running_job_unbilled(page: Page, demo_server: ServerProcess) -> None:
    signed_in(page, demo_server)
    choose_model(page, "tessera-demo")
    custom_size(page, 1024, 1024)
    advanced(page).get_by_label("Num Inference Steps").fill("50")
    generate(page, "a lighthouse nobody waits for")
    result = latest(page)
    expect(result.get_by_role("status").first).to_have_text(
        re.compile(r"Generating \d+%"), timeout=JOB_TIMEOUT_MS
    )
    shot(page, "cancel-01-running")
    result.get_by_role("button", name="Cancel").click()
    expect(result.get_by_role("status").first).to_have_text("Cancelled", timeout=JOB_TIMEOUT_MS)
    expect(result.get_by_role("alert")).to_contain_text("not billed")
    expect(result.get_by_role("button", name="Cancel")).to_be_hidden()
    shot(page, "cancel-02-cancelled")
    job_id = int(re.search(r"Job (\d+)", result.get_by_role("alert").inner_text()).group(1))  # type: ignore[union-attr]
    with demo_server.client() as client:
        task = client.get(f"/images/tasks/{job_id}").json()
    assert task["status"] == "cancelled" and "result" not in task
