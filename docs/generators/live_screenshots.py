"""Screenshots of the live page before, during and after speech, for the README.

    python docs/generators/live_screenshots.py RUN_DIR [--speech clip.wav] [--out docs/images]
    python docs/generators/live_screenshots.py --tiny      # trains the tests' tiny run first

Starts ``ser serve RUN_DIR`` on a free loopback port, opens ``/`` in headless Chromium
(every request off the loopback aborted) with a fake microphone that plays silence,
the speech (``--speech``, else a generated tone) and a long silence once, presses
*Start listening* and photographs the microphone section when the page shows only
silence, then three speech windows, then the ended utterance. Writes
``live-before.png``, ``live-during.png`` and ``live-after.png``, each scaled to
``--width`` pixels and reduced to a palette so that it stays under 150 kB. Needs
Chromium and Playwright (the ``test`` extra); the page's states are those the page
tests check (tests/test_serving_page.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

# The browser, microphone and server helpers belong to the page tests; the generator
# borrows them, so the project root goes on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.livepage import (
    AFTER_SPEECH,
    BEFORE_SPEECH,
    CHROMIUM,
    DURING_SPEECH,
    MICROPHONE_RATE,
    launch,
    microphone_clip,
    open_offline,
    problems,
)
from tests.support.servers import serving

STATES = {"before": BEFORE_SPEECH, "during": DURING_SPEECH, "after": AFTER_SPEECH}
MAX_BYTES = 150_000
STATE_TIMEOUT_MS = 60_000
# Long enough for the "during" state to outlast a screenshot on a slow machine.
TONE_SECONDS = 6.0


class ScratchFolders:
    """``tmp_path_factory``'s ``mktemp`` for ``tiny_run`` outside pytest."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))
        return path


def shrink_png(source: Path, target: Path, width: int) -> int:
    """Save ``source`` scaled to ``width`` pixels wide with a 128-colour palette at
    ``target``; returns its size in bytes."""
    from PIL import Image

    with Image.open(source) as image:
        height = round(image.height * width / image.width)
        small = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
        small.quantize(colors=128).save(target, optimize=True)
    return target.stat().st_size


def photograph_states(url: str, microphone: str, work: Path) -> dict[str, Path]:
    """Full-size screenshots of the microphone section in each state, by state name."""
    from playwright.sync_api import sync_playwright

    shots = {}
    with sync_playwright() as p:
        browser = launch(p, microphone)
        try:
            page = open_offline(browser, url, width=900)
            page.click("#start")
            for name, condition in STATES.items():
                page.wait_for_function(condition, timeout=STATE_TIMEOUT_MS)
                shots[name] = work / f"live-{name}-full.png"
                page.locator("#live").screenshot(path=str(shots[name]), animations="disabled")
                if not page.evaluate(condition):
                    raise RuntimeError(f"the page left the {name!r} state during its screenshot")
            if problems(page):
                raise RuntimeError(f"the page had problems: {problems(page)}")
        finally:
            browser.close()
    return shots


def speech_wave(path: Path):
    """The ``--speech`` clip, mono at the fake microphone's rate."""
    from ser.audio import load_any_audio

    return load_any_audio(path, MICROPHONE_RATE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", type=Path, help="a finished run directory")
    parser.add_argument("--tiny", action="store_true", help="train and use the tests' tiny run")
    parser.add_argument("--speech", type=Path, help="an audio clip to speak (default: a tone)")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--width", type=int, default=640, help="width of the PNGs in pixels")
    parser.add_argument("--stream-window", type=float, default=1.0)
    args = parser.parse_args(argv)
    if (args.run_dir is None) == (not args.tiny):
        parser.error("give a run directory or --tiny (one of them)")
    if CHROMIUM is None:
        parser.error("Chromium is not installed (apt-get install chromium)")
    if args.speech is not None and not args.speech.is_file():
        parser.error(f"--speech {args.speech}: no such file")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="live-screenshots-") as scratch:
        work = Path(scratch)
        run_dir = args.run_dir
        if args.tiny:
            from tests.support.tiny_run import tiny_run

            run_dir = tiny_run(ScratchFolders(work))
        speech = speech_wave(args.speech) if args.speech else None
        microphone = microphone_clip(work / "microphone.wav", speech, TONE_SECONDS)
        options = ["--stream-window", str(args.stream_window), "--stream-hop", "0.5"]
        with serving(run_dir, work / "serve.log", *options, "--log-level", "warning") as url:
            shots = photograph_states(url, microphone, work)
        for name, shot in shots.items():
            target = args.out / f"live-{name}.png"
            size = shrink_png(shot, target, args.width)
            print(f"{target}: {size / 1000:.0f} kB")
            if size > MAX_BYTES:
                print(f"{target}: over {MAX_BYTES // 1000} kB; try a smaller --width")
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
