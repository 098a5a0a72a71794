"""The app in a real Chromium (Playwright): set sliders, upload a primer, generate, compare.

Saves docs/app.png and docs/compare.png. Needs /usr/bin/chromium (`apt-get install chromium`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cwcompose.sampling import DEFAULT_SAMPLING, PRESETS

from app_harness import launch_app, shipped_or_tiny_checkpoints

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
RESULT_TIMEOUT_MS = 90_000
ERROR_TOAST = "[data-testid=toast-body].error"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} not found: apt-get install -y chromium (make test does it when it may)"
        pytest.fail(message) if os.environ.get("CI") == "true" else pytest.skip(message)
    from playwright.sync_api import sync_playwright

    # the real checkpoints where shipped, so the saved screenshots show real music
    demo, studio = launch_app(shipped_or_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints")))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(demo.local_url)
        page.wait_for_selector("#generate", timeout=30_000)
        yield page
        browser.close()
    demo.close()
    studio.close()


def set_slider(page, elem_id: str, value: float) -> None:
    """Type a value into a Gradio slider's number box, as a person would."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def wait_for_result(page, selector: str) -> None:
    """Wait until ``selector`` appears; fail at once with the message if an error toast shows instead."""
    page.wait_for_selector(f"{selector}, {ERROR_TOAST}", state="attached", timeout=RESULT_TIMEOUT_MS)
    if page.locator(ERROR_TOAST).count():
        pytest.fail(f"the app showed an error: {page.locator(ERROR_TOAST).first.inner_text()}")


def test_generate_in_the_browser(page, pop909):
    set_slider(page, "bars", 8)
    set_slider(page, "temperature-pitch", 0.6)
    page.locator("#primer input[type=file]").set_input_files(str(pop909 / "001" / "001.mid"))
    page.wait_for_selector("#primer a", timeout=15_000)  # the uploaded file is listed
    page.locator("#random-seed input[type=checkbox]").uncheck()
    page.locator("#seed input").fill("5")
    page.locator("#generate").click()
    wait_for_result(page, "#audio-compose audio[src]")
    page.wait_for_selector("#roll-compose img", timeout=10_000)
    metrics = page.locator("#metrics-compose").inner_text()
    assert "bars generated" in metrics and "8" in metrics and "seed" in metrics
    assert page.locator("#midi-compose a").first.get_attribute("href").endswith(".mid")
    (ROOT / "docs").mkdir(exist_ok=True)
    page.screenshot(path=str(ROOT / "docs" / "app.png"), full_page=True)
    page.locator("#continue").click()  # the result becomes the next primer
    page.wait_for_selector("#primer >> text=cwcompose-28500-seed5", timeout=15_000)


def wait_for_slider(page, elem_id: str, value: float) -> None:
    box = f"document.querySelector('#{elem_id} input[type=number]')"
    page.wait_for_function(f"() => parseFloat({box}.value) === {value}", timeout=10_000)


def test_presets_and_reset_move_the_sliders(page):
    steady, balanced = PRESETS["steady"].temperature["tempo"], DEFAULT_SAMPLING.temperature["tempo"]
    assert steady != balanced
    page.locator("#preset input").click()
    page.get_by_role("option", name="steady").click()
    wait_for_slider(page, "temperature-tempo", steady)
    page.locator("#reset").click()
    wait_for_slider(page, "temperature-tempo", balanced)


def test_compare_in_the_browser(page):
    page.get_by_role("tab", name="Compare checkpoints").click()
    page.locator("#compare").click()
    for step in (10000, 28500, 80000):
        wait_for_result(page, f"#audio-{step} audio[src]")
    page.wait_for_selector("#compare-table >> text=bars generated", timeout=10_000)
    page.screenshot(path=str(ROOT / "docs" / "compare.png"), full_page=True)
