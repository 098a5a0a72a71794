"""The app in a real Chromium (Playwright) at a desktop (1400x1000) and a phone (390x844) size.

What a person does, checked on the values the page shows: Generate is on the first screen; a
16-bar compose with a chord lock streams (Web Audio plays chunks and the roll grows before
the request ends; the playhead follows); 4 variations show 4 players; Undo removes a take;
rewinding keeps the first N bars note for note (read back from the MIDI the page links);
Compare's A/B switch keeps the playback position; axe-core finds no serious or critical
accessibility violation on either tab. Tiny untrained stand-in checkpoints: the music does
not matter here. Needs /usr/bin/chromium (`scripts/setup_system.sh --browser`).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import miditoolkit
import pytest

from app_harness import launch_app, make_tiny_checkpoints

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--autoplay-policy=no-user-gesture-required"]
DESKTOP, PHONE = {"width": 1400, "height": 1000}, {"width": 390, "height": 844}
RESULT_TIMEOUT_MS = 90_000
ERROR_TOAST = "[data-testid=toast-body].error"
TICKS_PER_BAR = 4 * 480

# Records, on every change of the main roll, whether the request was still running (data-done),
# how many bars the roll showed and whether the Web Audio stream had started sounding.
RECORD_STREAM = """() => {
  window.cwLog = [];
  const seen = new Set();
  new MutationObserver(() => {
    const r = document.querySelector('#roll .cw-roll[data-bars]');
    if (!r) return;
    const s = r.dataset.stream && window.cw.streams[r.dataset.stream];
    const key = [r.dataset.done, r.dataset.bars, !!(s && s.started)].join();
    if (seen.has(key)) return;
    seen.add(key);
    window.cwLog.push({done: r.dataset.done, bars: +r.dataset.bars, sounding: !!(s && s.started),
                       title: r.querySelector('.cw-roll-title').textContent});
  }).observe(document.querySelector('#roll'), {subtree: true, childList: true, attributes: true});
}"""


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} not found: run scripts/setup_system.sh --browser (make test does it when it may)"
        pytest.fail(message) if os.environ.get("CI") == "true" else pytest.skip(message)
    demo, studio = launch_app(make_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints")))
    yield demo.local_url
    demo.close()
    studio.close()


@pytest.fixture(scope="module")
def browser(app_url):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, url, viewport):
    page = browser.new_page(viewport=viewport)
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url)
    page.wait_for_selector("#generate", timeout=30_000)
    page.wait_for_function("() => window.cw !== undefined")
    page.js_errors = errors
    return page


@pytest.fixture(scope="module")
def desktop(browser, app_url):
    page = open_page(browser, app_url, DESKTOP)
    yield page
    assert not page.js_errors, f"JavaScript errors: {page.js_errors}"
    page.close()


@pytest.fixture(scope="module")
def phone(browser, app_url):
    page = open_page(browser, app_url, PHONE)
    yield page
    page.close()


# ---------------------------------------------------------------- helpers


def fill(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(str(value))
    box.press("Tab")


def table(page, elem_id: str) -> list[list[str]]:
    """The rows of a Gradio 6 Dataframe as shown (its cells are role=gridcell divs)."""
    return page.evaluate("""(id) => {
      const rows = {};
      document.querySelectorAll(`#${id} [role=gridcell][data-row]`).forEach((c) => {
        (rows[c.dataset.row] = rows[c.dataset.row] || [])[+c.dataset.col] = c.innerText.trim(); });
      return Object.keys(rows).sort((a, b) => a - b).map((k) => rows[k]);
    }""", elem_id)


def shown_numbers(page) -> dict[str, str]:
    return {row[0]: row[1] for row in table(page, "numbers") if row and row[0]}


def takes_shown(page) -> list[list[str]]:
    return [row for row in table(page, "takes") if row and row[0]]


def run_and_wait(page, button: str, takes_after: int) -> None:
    """Click ``button`` and wait until the takes table holds ``takes_after`` rows and the roll is
    final; fail at once with the message if an error toast shows instead."""
    page.locator(f"#{button}").click()
    page.wait_for_function(
        """([n, toast]) => document.querySelector(toast) || (
             document.querySelectorAll('#takes [role=gridcell][data-col="0"]').length >= 0 &&
             [...document.querySelectorAll('#takes [role=gridcell][data-col="0"]')]
               .filter((c) => c.innerText.trim()).length === n &&
             document.querySelector('#roll .cw-roll[data-done="1"]'))""",
        arg=[takes_after, ERROR_TOAST], timeout=RESULT_TIMEOUT_MS)
    if page.locator(ERROR_TOAST).count():
        pytest.fail(f"the app showed an error: {page.locator(ERROR_TOAST).first.inner_text()}")


def midi_notes(page, link_selector: str) -> list[tuple[int, int, int, int]]:
    href = page.locator(link_selector).first.get_attribute("href")
    assert href.endswith(".mid"), href
    midi = miditoolkit.MidiFile(file=io.BytesIO(page.request.get(href).body()))
    return sorted((n.start, n.end, n.pitch, n.velocity) for n in midi.instruments[0].notes)


def within_viewport(page, selector: str) -> bool:
    box, view = page.locator(selector).bounding_box(), page.viewport_size
    return box is not None and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= view["width"] \
        and box["y"] + box["height"] <= view["height"]


def axe_violations(page) -> list[str]:
    page.add_script_tag(path=str(AXE))
    found = page.evaluate("""async () => {
      const r = await axe.run(document, {resultTypes: ['violations']});
      return r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')
        .map((v) => `${v.impact} ${v.id}: ${v.help} -- ` + v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(' | '));
    }""")
    return found


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_generate_is_on_the_first_screen(request, size):
    page = request.getfixturevalue(size)
    page.evaluate("window.scrollTo(0, 0)")
    for button in ("generate", "stop", "undo"):
        assert within_viewport(page, f"#{button}"), f"{button} is not on the first screen at {page.viewport_size}"
    assert page.locator("#fine-tune").bounding_box()["y"] > page.locator("#chords").bounding_box()["y"]
    # and reachable from the keyboard, in this order, from the top of the page
    page.evaluate("document.activeElement && document.activeElement.blur()")
    focused = []
    for _ in range(12):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id"))
    reached = [i for i in focused if i in ("generate", "stop", "undo")]
    assert reached[:3] == ["generate", "stop", "undo"], focused


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_a_locked_16_bar_compose_streams_and_plays(request, size):
    page = request.getfixturevalue(size)
    fill(page, "bars", 16)
    fill(page, "chords", "C G Am F")
    page.get_by_text("Primer bars and seed").click()
    page.locator("#random-seed input[type=checkbox]").uncheck()
    fill(page, "seed", 5)
    page.evaluate(RECORD_STREAM)
    run_and_wait(page, "generate", takes_after=1)

    log = page.evaluate("window.cwLog")
    while_running = [e for e in log if e["done"] == "0"]
    assert while_running and while_running[0]["bars"] >= 1, log
    assert any(e["sounding"] for e in while_running), f"no sound before the request finished: {log}"
    bars_seen = [int(re.search(r"bar (\d+) of 16", e["title"])[1]) for e in while_running]
    assert bars_seen == sorted(bars_seen) and bars_seen[0] >= 1

    # the numbers shown are the request's: 16 bars, seed 5, checkpoint 28500, the lock
    numbers = shown_numbers(page)
    assert numbers["bars generated"] == "16" and numbers["seed"] == "5" and numbers["checkpoint"] == "28500"
    assert numbers["chords"] == "C G Am F"
    assert page.locator("#seed input").input_value() == "5"
    title = page.locator("#roll .cw-roll-title").inner_text()
    assert re.match(r"checkpoint 28500, seed 5 — 16 bars, \d+ notes", title), title
    assert int(re.search(r"(\d+) notes", title)[1]) == int(numbers["notes generated"])
    assert takes_shown(page)[-1][1:4] == ["28500", "5", "16"]
    notes = midi_notes(page, "#midi a")
    assert len(notes) == int(numbers["notes generated"]) and max(n[0] for n in notes) < 16 * TICKS_PER_BAR

    # Web Audio: every chunk decoded and scheduled back to back (as long as the whole WAV), and playing
    page.wait_for_function("""() => { const r = document.querySelector('#roll .cw-roll');
      return cw.streams[r.dataset.stream].next === JSON.parse(r.dataset.chunks).length; }""", timeout=10_000)
    stream = page.evaluate("""() => { const r = document.querySelector('#roll .cw-roll');
      const s = cw.streams[r.dataset.stream];
      return {chunks: JSON.parse(r.dataset.chunks).length, next: s.next, seconds: s.scheduled, late: s.late,
              state: cw.ctx.state, now: cw.streamTime(s.id)}; }""")
    assert stream["next"] == stream["chunks"] and stream["state"] == "running"
    assert stream["late"] == 0, "a chunk arrived after its turn to play: a gap in the sound"
    wav_seconds = page.evaluate("""async () => { const a = document.querySelector('#audio a[download]');
      const b = await (await fetch(a.href)).arrayBuffer(); return (b.byteLength - 44) / 4 / 44100; }""")
    assert abs(stream["seconds"] - wav_seconds) < 0.01, (stream, wav_seconds)
    # the playhead follows the stream
    page.wait_for_function("() => +document.querySelector('#roll .cw-roll').dataset.playhead > 0")
    first = float(page.locator("#roll .cw-roll").get_attribute("data-playhead"))
    page.wait_for_timeout(400)
    later = float(page.locator("#roll .cw-roll").get_attribute("data-playhead"))
    assert later > first
    x = float(page.locator("#roll .cw-playhead").get_attribute("x1"))
    assert x > 0

    # the roll's Play button stops and plays it again from the start, the playhead with it
    play = page.locator("#roll .cw-play")
    play.click()
    page.wait_for_function("() => document.querySelector('#roll .cw-play').textContent === 'Play'")
    play.click()
    page.wait_for_function("() => document.querySelector('#roll .cw-play').textContent === 'Stop'")
    again = page.evaluate("cw.streamTime(document.querySelector('#roll .cw-roll').dataset.stream)")
    assert again is not None and again < 1.0
    play.click()

    # the whole take's WAV is in the audio player, which plays it
    page.locator("#audio button[aria-label='Play']").click()
    page.wait_for_selector("#audio button[aria-label='Pause']", timeout=10_000)
    page.locator("#audio button[aria-label='Pause']").click()


def test_four_variations_show_four_players(desktop):
    page = desktop
    fill(page, "bars", 4)
    fill(page, "variations", 4)
    fill(page, "seed", 11)
    run_and_wait(page, "generate", takes_after=2)
    page.wait_for_selector("#variations-view .cw-variation audio", state="attached")
    headings = page.locator("#variations-view .cw-variation h4").all_inner_texts()
    assert headings == [f"Variation {i + 1} (seed {11 + i})" for i in range(4)]
    assert page.locator("#variations-view .cw-variation audio").count() == 4
    durations = page.evaluate("""() => Promise.all([...document.querySelectorAll('#variations-view audio')].map(
      (a) => a.readyState >= 1 ? a.duration : new Promise((ok) => a.addEventListener('loadedmetadata',
        () => ok(a.duration), {once: true}))))""")
    assert all(d > 0 for d in durations)
    assert shown_numbers(page)["variation"] == "1"
    fill(page, "variations", 1)


def test_undo_removes_a_take(desktop):
    page = desktop
    before = takes_shown(page)
    assert len(before) == 2
    page.locator("#undo").click()
    page.wait_for_function("""() => [...document.querySelectorAll('#takes [role=gridcell][data-col="0"]')]
      .filter((c) => c.innerText.trim()).length === 1""")
    assert takes_shown(page) == before[:1]
    assert shown_numbers(page)["seed"] == "5" and shown_numbers(page)["bars generated"] == "16"


def test_rewind_keeps_the_first_bars(desktop):
    page = desktop
    kept_bars = 5
    original = midi_notes(page, "#midi a")
    fill(page, "rewind-bar", kept_bars)
    fill(page, "seed", 9)
    run_and_wait(page, "rewind", takes_after=2)
    numbers = shown_numbers(page)
    assert numbers["primer bars"] == str(kept_bars) and numbers["bars generated"] == str(16 - kept_bars)
    assert numbers["seed"] == "9"
    rewound = midi_notes(page, "#midi a")
    cut = kept_bars * TICKS_PER_BAR
    assert [n for n in rewound if n[0] < cut] == [n for n in original if n[0] < cut]
    assert rewound != original


def test_compare_switch_keeps_the_position(desktop):
    page = desktop
    fill(page, "bars", 8)
    page.get_by_role("tab", name="Compare checkpoints").click()
    page.locator("#compare").click()
    page.wait_for_function("() => document.querySelectorAll('#compare-view .cw-ab audio').length === 3",
                           timeout=RESULT_TIMEOUT_MS)
    rows = {r[0]: r[1:] for r in table(page, "compare-table")}
    assert rows["bars generated"] == ["8", "8", "8"] and len(set(rows["seed"])) == 1
    page.get_by_role("tab", name="Compose").click()
    if page.locator("#seed input").is_hidden():  # alone, no earlier test has opened the accordion
        page.get_by_text("Primer bars and seed").click()
    assert rows["seed"][0] == page.locator("#seed input").input_value()
    page.get_by_role("tab", name="Compare checkpoints").click()
    page.wait_for_function("() => [...document.querySelectorAll('#compare-view audio')].every((a) => a.readyState >= 2)")
    page.locator("#compare-view [data-ab-play]").click()
    page.wait_for_function("() => document.querySelector('#compare-view audio.cw-ab-on').currentTime > 1.0")
    page.locator('#compare-view [data-cw="ab-B"]').click()
    state = page.evaluate("""() => { const [a, b] = document.querySelectorAll('#compare-view audio');
      return {a: a.currentTime, b: b.currentTime, aPaused: a.paused, bPaused: b.paused,
              on: document.querySelector('#compare-view audio.cw-ab-on').dataset.ab,
              pressed: document.querySelector('#compare-view [data-cw="ab-B"]').getAttribute('aria-pressed')}; }""")
    assert state["on"] == "B" and state["pressed"] == "true" and state["aPaused"] and not state["bPaused"]
    assert abs(state["b"] - state["a"]) < 0.3, state
    page.wait_for_timeout(300)
    assert page.evaluate("document.querySelector('#compare-view audio.cw-ab-on').currentTime") > state["b"]
    page.locator("#compare-view [data-ab-play]").click()  # pause


def test_axe_finds_no_serious_violations(desktop, phone):
    for page in (desktop, phone):
        for tab in ("Compose", "Compare checkpoints"):
            page.get_by_role("tab", name=tab).click()
            page.wait_for_timeout(200)
            found = axe_violations(page)
            assert found == [], f"{tab} at {page.viewport_size}:\n" + "\n".join(found)


def test_presets_and_reset_move_the_sliders(desktop):
    from cwcompose.sampling import DEFAULT_SAMPLING, PRESETS
    page = desktop
    page.get_by_role("tab", name="Compose").click()
    steady, balanced = PRESETS["steady"].temperature["tempo"], DEFAULT_SAMPLING.temperature["tempo"]
    assert steady != balanced
    page.get_by_text("Fine-tune sampling").click()
    page.locator("#preset input").click()
    page.get_by_role("option", name="steady").click()
    slider = "document.querySelector('#temperature-tempo input[type=number]').value"
    page.wait_for_function(f"() => parseFloat({slider}) === {steady}", timeout=10_000)
    page.locator("#reset").click()
    page.wait_for_function(f"() => parseFloat({slider}) === {balanced}", timeout=10_000)
    found = axe_violations(page)  # the sixteen sliders, open
    assert found == [], "\n".join(found)


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_compare_numbers_fit_the_screen(request, size):
    """The compare table shows every checkpoint's column without the page scrolling sideways:
    at 1400 px wide and on a 390 px phone (the table may scroll inside its own box on a phone,
    but each of its cells is readable: no cell is cut narrower than its longest word)."""
    page = request.getfixturevalue(size)
    page.get_by_role("tab", name="Compose").click()  # the pages are shared: another test may have left Compare open
    fill(page, "bars", 3)
    page.get_by_role("tab", name="Compare checkpoints").click()
    page.locator("#compare").click()
    page.wait_for_function("""() => [...document.querySelectorAll('#compare-table [role=gridcell][data-col="0"]')]
      .some((c) => c.innerText.trim() === 'bars generated' &&
                   c.parentElement.innerText.split(/\\s+/).filter((t) => t === '3').length === 3)""",
                           timeout=RESULT_TIMEOUT_MS)
    rows = {r[0]: r[1:] for r in table(page, "compare-table")}
    assert rows["bars generated"] == ["3", "3", "3"]
    fit = page.evaluate("""() => {
      const box = document.querySelector('#compare-table').getBoundingClientRect();
      const cells = [...document.querySelectorAll('#compare-table [role=gridcell]')];
      return {pageWidth: document.documentElement.scrollWidth, viewport: window.innerWidth,
              right: box.right, cut: cells.filter((c) => c.scrollWidth > c.clientWidth + 1).map((c) => c.innerText)};
    }""")
    assert fit["pageWidth"] <= fit["viewport"], fit
    assert fit["right"] <= fit["viewport"] + 1, fit
    assert not fit["cut"], fit


def reset_settings(page) -> None:
    """Click Reset and wait until it has put back the default sampling and the default 16 bars."""
    page.locator("#reset").click()
    page.wait_for_function("""() => document.querySelector('#bars input').value === '16' &&
      parseFloat(document.querySelector('#temperature-pitch input[type=number]').value) === 1""", timeout=10_000)


def test_a_slider_changes_the_take_and_reset_brings_it_back(desktop):
    """Same seed, same request: pitch temperature 0 (always the likeliest pitch) writes other
    notes than the default 1.0, the numbers shown say so, and Reset gives the first take again."""
    page = desktop
    page.get_by_role("tab", name="Compose").click()
    if page.locator("#temperature-pitch").is_hidden():
        page.get_by_text("Fine-tune sampling").click()
    fill(page, "bars", 5)
    reset_settings(page)
    fill(page, "bars", 4)
    fill(page, "chords", "")
    if page.locator("#random-seed input[type=checkbox]").is_hidden():
        page.get_by_text("Primer bars and seed").click()
    page.locator("#random-seed input[type=checkbox]").uncheck()
    fill(page, "seed", 11)
    takes = len(takes_shown(page))

    def take() -> tuple[list, dict]:
        nonlocal takes
        takes += 1
        run_and_wait(page, "generate", takes_after=min(takes, 20))
        return midi_notes(page, "#midi a"), shown_numbers(page)

    default_notes, default_numbers = take()
    fill(page, "temperature-pitch", 0)
    greedy_notes, greedy_numbers = take()
    reset_settings(page)
    fill(page, "bars", 4)
    again_notes, _ = take()
    assert default_numbers["seed"] == greedy_numbers["seed"] == "11" and default_numbers["bars generated"] == "4"
    assert [n[2] for n in greedy_notes] != [n[2] for n in default_notes], "pitch temperature 0 changed no pitch"
    assert again_notes == default_notes, "Reset and the same seed give the same take"
