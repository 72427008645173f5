"""The served pages in real headless Chromium with every request off the loopback
aborted: the live page with a fake microphone fed from a generated clip, the upload
form, and the API docs at ``/docs`` and ``/redoc``.

Starts ``ser serve`` on a free loopback port. The live test plays silence, speech and
a long silence once, and checks the page before, during and after the speech (a
screenshot takes seconds on a busy machine, so only the last state is photographed;
copied to ``$SER_SCREENSHOT_DIR`` when set; docs/generators/live_screenshots.py makes
the ones of all three states in docs/images/). Skipped, with
the reason, without Chromium or Playwright (CI installs both).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from tests.support.fakes import EMOTION_HZ
from tests.support.livepage import (
    AFTER_SPEECH,
    BEFORE_SPEECH,
    CHROMIUM,
    DURING_SPEECH,
    launch,
    microphone_clip,
    open_offline,
    problems,
)
from tests.support.servers import serving
from tests.support.signals import gliding_tone, non_speech

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the skip says why
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)"
    ),
    pytest.mark.skipif(
        sync_playwright is None, reason="playwright not installed (pip install '.[test]')"
    ),
    pytest.mark.slow,
]
# What the page calls the labels the tiny run may have.
NAMES = {
    "neutral": "neutral",
    "calm": "calm",
    "happy": "happy",
    "sad": "sad",
    "angry": "angry",
    "fear": "fear",
    "disgust": "disgust",
    "ps": "pleasant surprise",
    "boredom": "boredom",
}
REDOC_CREDIT_LOGO = "/redoc/logo-mini.svg"
LIVE_STATE = """() => ({
    now: document.getElementById('live-emotion').textContent,
    nowLabel: document.getElementById('live-emotion').title,
    barsGreyed: document.getElementById('bars').classList.contains('stale'),
    boldLabels: document.querySelectorAll('#bars .bar-label.top').length,
    barWidths: [...document.querySelectorAll('#bars .bar-fill')]
        .map(b => parseFloat(b.style.width || '0')),
    summaryTitle: document.getElementById('summary-title').textContent,
    summaryLabel: document.getElementById('summary-emotion').title,
    summaryWidths: [...document.querySelectorAll('#summary-bars .bar-fill')]
        .map(b => parseFloat(b.style.width || '0')),
    ticks: [...document.querySelectorAll('#timeline .cell[data-tick]')].map(c => c.dataset.tick),
    speechCells: document.querySelectorAll('#timeline .cell.speech').length,
    silentCells: document.querySelectorAll('#timeline .cell.silence').length,
})"""


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "serve.log"
    options = ["--stream-window", "1", "--stream-hop", "0.5", "--log-level", "warning"]
    with serving(run_dir, log, *options) as url:
        yield url


@pytest.fixture(scope="module")
def labels(server) -> list[str]:
    return httpx.get(f"{server}/model").json()["labels"]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = launch(p)
        yield chromium
        chromium.close()


def state_when(page, condition: str) -> dict:
    """``LIVE_STATE`` read at a moment when ``condition`` holds (in the same JavaScript
    task, so no stream message changes the page in between)."""
    both = f"() => ({condition})() && ({LIVE_STATE})()"
    return page.wait_for_function(both, timeout=60_000).json_value()


def save_screenshot(page, path: Path) -> Path:
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("SER_SCREENSHOT_DIR"):
        target = Path(os.environ["SER_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / path.name)
    return path


def test_live_page_before_during_and_after_speech(server, labels, tmp_path):
    microphone = microphone_clip(tmp_path / "microphone.wav")
    with sync_playwright() as p:
        chromium = launch(p, microphone)
        try:
            page = open_offline(chromium, server)
            page.click("#start")

            before = state_when(page, BEFORE_SPEECH)
            assert before["now"] == "no speech" and before["speechCells"] == 0
            assert before["summaryTitle"] == "This utterance" and before["summaryLabel"] == ""
            assert sum(before["barWidths"]) == 0 and sum(before["summaryWidths"]) == 0

            during = state_when(page, DURING_SPEECH)
            assert during["speechCells"] >= 3
            assert not during["barsGreyed"] and during["boldLabels"] == 1
            assert sum(during["barWidths"]) == pytest.approx(100, abs=2)
            assert sum(during["summaryWidths"]) == pytest.approx(100, abs=2)
            assert during["summaryTitle"] == "This utterance" and during["summaryLabel"] in labels
            assert page.locator("#timeline .cell.speech").first.get_attribute("data-emotion") in (
                labels
            )
            assert page.text_content("#status").startswith("listening")

            after = state_when(page, AFTER_SPEECH)
            assert after["now"] == "no speech" and after["nowLabel"] == ""
            assert after["barsGreyed"] and after["boldLabels"] == 0
            assert after["summaryTitle"] == "Last utterance" and after["summaryLabel"] in labels
            # The summary names the utterance's top emotion in full, with its label as tooltip.
            summary = page.locator("#summary-emotion")
            assert summary.text_content() == NAMES[summary.get_attribute("title")]
            # The axis is in seconds: ticks every 2 s at a 0.5 s hop, from 0 s on.
            assert after["ticks"][:2] == ["0 s", "2 s"]
            assert after["silentCells"] >= 6
            shot = save_screenshot(page, tmp_path / "live-after.png")
            assert shot.stat().st_size > 10_000

            page.click("#stop")
            assert page.text_content("#status") == "stopped"
            # A new recording starts with an empty timeline, bars and summary.
            page.click("#start")
            again = page.evaluate(LIVE_STATE)
            assert again["speechCells"] == again["silentCells"] == 0
            assert again["summaryTitle"] == "This utterance" and again["summaryLabel"] == ""
            assert sum(again["barWidths"]) == 0 and not again["barsGreyed"]
            page.click("#stop")
            assert problems(page) == []
        finally:
            chromium.close()


def test_emotions_are_shown_by_full_name_with_the_label_as_tooltip(server, browser, labels):
    page = open_offline(browser, server)
    for selector in ("#bars .bar-label", "#summary-bars .bar-label", "#legend span"):
        shown = page.eval_on_selector_all(
            selector, "items => items.map(i => [i.textContent, i.title])"
        )
        assert shown == [[NAMES[label], label] for label in labels]
    assert problems(page) == []


def test_favicon_is_served_and_the_page_loads_without_console_errors(server, browser):
    for path in ("/favicon.ico", "/static/favicon.svg"):
        response = httpx.get(f"{server}{path}")
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("image/svg+xml")
        assert b"<svg" in response.content
    page = open_offline(browser, server)
    icon = page.get_attribute("link[rel=icon]", "href")
    assert httpx.get(f"{server}{icon}").status_code == 200
    page.goto(f"{server}/model")  # a JSON page: the browser asks for /favicon.ico
    page.wait_for_timeout(500)
    assert problems(page) == []


def test_upload_on_the_page_shows_the_prediction_and_timeline(server, browser, labels, tmp_path):
    clip = tmp_path / "long.flac"
    sf.write(clip, gliding_tone(3.0, EMOTION_HZ["sad"]), 16000)
    page = open_offline(browser, server)
    page.set_input_files("#file", str(clip))
    page.click("#upload-button")
    page.wait_for_selector("#upload-result:not([hidden])", timeout=30_000)
    label = page.get_attribute("#upload-emotion", "title")
    assert label in labels and page.text_content("#upload-emotion") == NAMES[label]
    assert "5 windows" in page.text_content("#upload-detail")
    assert page.locator("#upload-timeline .cell").count() == 5
    ticks = page.eval_on_selector_all(
        "#upload-timeline .cell[data-tick]", "c => c.map(x => x.dataset.tick)"
    )
    assert ticks == ["0 s", "2 s"]
    save_screenshot(page, tmp_path / "upload.png")
    assert problems(page) == []


def test_upload_button_says_predicting_while_the_request_is_in_flight(server, browser, tmp_path):
    clip = tmp_path / "clip.wav"
    sf.write(clip, gliding_tone(1.0, EMOTION_HZ["happy"]), 16000)
    page = open_offline(browser, server)
    held = []
    page.route("**/predict", lambda route: held.append(route))  # held until checked
    page.set_input_files("#file", str(clip))
    page.click("#upload-button")
    page.wait_for_function("() => document.body.dataset.uploading === '1'", timeout=10_000)
    button = page.locator("#upload-button")
    assert button.is_disabled() and button.text_content() == "Predicting…"
    assert page.text_content("#upload-status") == "predicting clip.wav…"
    for _ in range(100):  # Playwright hands the held request over while the test waits
        if held:
            break
        page.wait_for_timeout(100)
    assert len(held) == 1
    held[0].continue_()
    page.wait_for_selector("#upload-result:not([hidden])", timeout=30_000)
    assert button.is_enabled() and button.text_content() == "Predict"
    assert page.text_content("#upload-status") == ""
    assert problems(page) == []


def test_upload_of_a_clip_without_speech_says_so(server, browser, tmp_path):
    clip = tmp_path / "quiet.wav"
    sf.write(clip, non_speech(1.0)["loud_white_noise"], 16000)  # the server's own answer
    page = open_offline(browser, server)
    page.set_input_files("#file", str(clip))
    page.click("#upload-button")
    page.wait_for_selector("#upload-result:not([hidden])", timeout=30_000)
    assert page.text_content("#upload-emotion") == "no speech detected"
    assert page.get_attribute("#upload-emotion", "title") is None
    assert page.text_content("#upload-detail") == "1.0 s"
    widths = page.eval_on_selector_all(
        "#upload-bars .bar-fill", "bars => bars.map(b => parseFloat(b.style.width || '0'))"
    )
    assert widths and sum(widths) == 0
    assert page.locator("#upload-timeline .cell").count() == 0
    assert problems(page) == []


def test_upload_of_a_non_audio_file_shows_the_reason(server, browser, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio")
    page = open_offline(browser, server)
    page.set_input_files("#file", str(notes))
    page.click("#upload-button")
    page.wait_for_selector("#upload-error:not([hidden])", timeout=30_000)
    message = page.text_content("#upload-error")
    assert (
        message.startswith("415:") and "notes.txt" in message and "not readable as audio" in message
    )


def test_swagger_docs_render_with_no_network(server, browser):
    page = open_offline(browser, f"{server}/docs", wait_for_ready=False)
    predict = page.locator(".opblock-summary-path[data-path='/predict']")
    predict.wait_for(timeout=30_000)
    assert predict.is_visible()
    assert page.locator(".opblock-summary-path[data-path='/predict/batch']").is_visible()
    assert problems(page) == []


def test_redoc_renders_with_no_network(server, browser):
    page = open_offline(browser, f"{server}/redoc", wait_for_ready=False)
    heading = page.get_by_role("heading", name="emotion of one clip")
    heading.wait_for(timeout=30_000)
    assert heading.is_visible()
    assert page.locator("[data-section-id^='tag/'], [data-section-id^='operation/']").count() >= 3
    # ReDoc's sidebar credit loads its logo from the vendor's CDN and hides it when that
    # fails; offline, that decorative image is all that is missing.
    unexpected = [p for p in problems(page) if REDOC_CREDIT_LOGO not in p and "ERR_FAILED" not in p]
    assert unexpected == []
    assert all(REDOC_CREDIT_LOGO in url for url in page.blocked)
