"""The served page in headless Chromium (Debian's, driven by Playwright) with no network
but the loopback: for the page tests and the screenshot generator
(docs/generators/live_screenshots.py).

The fake microphone plays a WAV file (Chromium's ``--use-file-for-fake-audio-capture``);
``microphone_clip`` writes one with silence, speech and a long silence, played once
(``%noloop``) so that the page goes through "before", "during" and "after" speech.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import soundfile as sf

from tests.support.fakes import EMOTION_HZ
from tests.support.signals import gliding_tone
from tests.support.tiny_run import silence

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
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
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
MICROPHONE_RATE = 44100  # what the fake device delivers whatever the file's rate
# The microphone clip: seconds of silence before the speech, of speech, and after it
# (more than the page's 3 s pause that ends an utterance).
LEAD_SECONDS, SPEECH_SECONDS, TAIL_SECONDS = 2.0, 3.5, 6.0
# The page's states, as conditions on the counters and flags it keeps on <body>; each a
# function, not an expression: the page's CSP forbids eval.
BEFORE_SPEECH = (
    "() => Number(document.body.dataset.silences || 0) >= 1"
    " && !Number(document.body.dataset.predictions || 0)"
)
DURING_SPEECH = (
    "() => Number(document.body.dataset.predictions || 0) >= 3"
    " && document.body.dataset.latest === 'prediction'"
)
AFTER_SPEECH = "() => document.body.dataset.utterance === 'ended'"


def microphone_clip(
    path: Path, speech: np.ndarray | None = None, speech_seconds: float = SPEECH_SECONDS
) -> str:
    """Write the fake microphone's WAV: silence, ``speech`` (mono at ``MICROPHONE_RATE``;
    by default ``speech_seconds`` of a gliding tone around the tiny run's "angry" pitch:
    speech to the speech check, close to the run's training tones),
    then silence.

    Returns the ``--use-file-for-fake-audio-capture`` value that plays it once (a
    missing file would silently give a silent microphone)."""
    rate = MICROPHONE_RATE
    if speech is None:
        speech = gliding_tone(speech_seconds, EMOTION_HZ["angry"], sr=rate)
    wave = np.concatenate([silence(LEAD_SECONDS, sr=rate), speech, silence(TAIL_SECONDS, sr=rate)])
    sf.write(path, wave, rate, subtype="PCM_16")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the microphone clip was not written")
    return f"{path}%noloop"


def launch(playwright, microphone: str | None = None):
    """Headless Chromium with the fake microphone (playing ``microphone``, if given)."""
    args = list(CHROMIUM_FLAGS)
    if microphone:
        args.append(f"--use-file-for-fake-audio-capture={microphone}")
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)


def is_loopback(url: str) -> bool:
    return urlsplit(url).hostname in LOOPBACK_HOSTS


def open_offline(browser, url: str, *, wait_for_ready: bool = True, width: int = 1000):
    """A new page at ``url`` whose requests off the loopback are aborted.

    The page records what went wrong on it: ``page.errors`` (uncaught exceptions),
    ``page.console_errors`` (console errors, failed loads included), ``page.blocked``
    (the requests aborted for leaving the machine) and ``page.bad_responses`` (status
    400 or more). With ``wait_for_ready``, returns once the live page has loaded its
    model card.
    """
    context = browser.new_context(
        permissions=["microphone"], viewport={"width": width, "height": 900}
    )
    page = context.new_page()
    page.errors, page.console_errors, page.blocked, page.bad_responses = [], [], [], []

    def only_loopback(route) -> None:
        if is_loopback(route.request.url):
            route.continue_()
        else:
            page.blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_loopback)
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on(
        "console",
        lambda message: (
            page.console_errors.append(message.text) if message.type == "error" else None
        ),
    )
    page.on(
        "response",
        lambda response: (
            page.bad_responses.append(f"{response.status} {response.url}")
            if response.status >= 400
            else None
        ),
    )
    page.goto(url)
    if wait_for_ready:
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    return page


def problems(page) -> list[str]:
    """Everything that went wrong on ``page`` (see ``open_offline``)."""
    return [
        *(f"error: {e}" for e in page.errors),
        *(f"console: {e}" for e in page.console_errors),
        *(f"blocked: {u}" for u in page.blocked),
        *(f"response: {r}" for r in page.bad_responses),
    ]
