"""The live page in real headless Chromium with a fake microphone fed from a generated clip.

Starts ``ser serve`` on a free loopback port, opens ``/`` in Debian's Chromium
(driven by Playwright), clicks "Start listening" and waits for window predictions
and a silent window to appear on the page; saves a screenshot (also copied to
``$SER_SCREENSHOT_DIR`` when set). Skipped, with the reason, without Chromium or
Playwright (CI installs both).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.support.fakes import EMOTION_HZ
from tests.support.servers import serving
from tests.support.tiny_run import silence, tone

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
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
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "serve.log"
    options = ["--stream-window", "1", "--stream-hop", "0.5", "--log-level", "warning"]
    with serving(run_dir, log, *options) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def open_page(browser, url: str, microphone: Path | None = None):
    context = browser.new_context(
        permissions=["microphone"], viewport={"width": 1000, "height": 900}
    )
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    return page


def save_screenshot(page, path: Path) -> Path:
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("SER_SCREENSHOT_DIR"):
        target = Path(os.environ["SER_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / path.name)
    return path


def test_live_microphone_predictions_appear_on_the_page(server, run_dir, tmp_path):
    # The fake device plays this file in a loop: speech, then two seconds of silence.
    clip = tmp_path / "microphone.wav"
    wave = np.concatenate([tone(2.5, EMOTION_HZ["angry"], sr=44100), silence(2.0, sr=44100)])
    sf.write(clip, wave, 44100, subtype="PCM_16")
    assert clip.is_file()  # a missing file would silently give a silent microphone
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={clip}"],
        )
        try:
            page = open_page(chromium, server)
            page.click("#start")
            page.wait_for_function(  # a function, not an expression: the page's CSP forbids eval
                "() => Number(document.body.dataset.predictions || 0) >= 3"
                " && Number(document.body.dataset.silences || 0) >= 1",
                timeout=60_000,
            )
            labels = httpx.get(f"{server}/model").json()["labels"]
            speech = page.locator("#timeline .cell.speech")
            assert speech.count() >= 3
            assert page.locator("#timeline .cell.silence").count() >= 1
            assert speech.first.get_attribute("data-emotion") in labels
            widths = page.eval_on_selector_all(
                "#bars .bar-fill", "bars => bars.map(b => parseFloat(b.style.width || '0'))"
            )
            assert len(widths) == len(labels) and sum(widths) == pytest.approx(100, abs=2)
            now = page.text_content("#live-emotion")
            assert now in [*labels, "no speech"]
            assert page.text_content("#status").startswith("listening")
            shot = save_screenshot(page, tmp_path / "live-page.png")
            assert shot.stat().st_size > 10_000
            page.click("#stop")
            assert page.text_content("#status") == "stopped"
            assert page.errors == []
        finally:
            chromium.close()


def test_upload_on_the_page_shows_the_prediction_and_timeline(server, browser, tmp_path):
    clip = tmp_path / "long.flac"
    sf.write(clip, tone(3.0, EMOTION_HZ["sad"]), 16000)
    page = open_page(browser, server)
    page.set_input_files("#file", str(clip))
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#upload-result:not([hidden])", timeout=30_000)
    labels = httpx.get(f"{server}/model").json()["labels"]
    assert page.text_content("#upload-emotion") in labels
    assert "5 windows" in page.text_content("#upload-detail")
    assert page.locator("#upload-timeline .cell").count() == 5
    save_screenshot(page, tmp_path / "upload.png")
    assert page.errors == []


def test_upload_of_a_non_audio_file_shows_the_reason(server, browser, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio")
    page = open_page(browser, server)
    page.set_input_files("#file", str(notes))
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#upload-error:not([hidden])", timeout=30_000)
    message = page.text_content("#upload-error")
    assert (
        message.startswith("415:") and "notes.txt" in message and "not readable as audio" in message
    )
