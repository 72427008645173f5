"""How far recording conditions move a clip's speech span (``features.speech_span``),
with and without ``features.speech_span_foreground_db``.

    SER_DATA_ROOT=../shared/data python docs/generators/speech_span_in_noise.py [--clips 50]

For each corpus, ``--clips`` clips drawn at random (seed 1) are put in each condition
(babble from 80 other clips of the same corpus drawn the same way; the conditions are
``ser.perturb``'s, keyed by the clip's path as in evaluation). For each clip and
condition it finds the speech span (margin 0.15 s) and prints, per corpus and
foreground setting, the mean span in seconds and the mean overlap (intersection over
union) with the same clip's clean span found without the foreground (the span the
default trains on). Nothing is trained; no label is read.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]  # the checkout, so `ser` imports from it
sys.path.insert(0, str(ROOT))

CONDITIONS = [
    "babble:10",
    "babble:20",
    "noise:white:10",
    "noise:pink:10",
    "telephone",
    "reverb:0.6",
]
FOREGROUNDS = [None, 16.0]
MARGIN = 0.15
PATTERNS = {
    "ravdess": "ravdess/Actor_*/*.flac",
    "tess": "tess/*/*.flac",
    "emodb": "emodb/wav/*.flac",
}


def overlap(a: tuple[int, int], b: tuple[int, int]) -> float:
    """Intersection over union of two sample ranges."""
    return max(0, min(a[1], b[1]) - max(a[0], b[0])) / max(1, max(a[1], b[1]) - min(a[0], b[0]))


def corpus_table(root: Path, corpus: str, clips: int) -> list[str]:
    """Markdown rows for one corpus: one per foreground setting."""
    import soundfile as sf

    from ser.perturb import Babble, parse_condition
    from ser.speech import speech_span

    files = sorted(str(p) for p in root.glob(PATTERNS[corpus]))
    rng = np.random.default_rng(1)
    chosen = [files[i] for i in rng.choice(len(files), clips, replace=False)]
    others = [files[i] for i in rng.choice(len(files), 80, replace=False)]
    babble = Babble(others, lambda key: sf.read(key, dtype="float32")[0])
    conditions = {name: parse_condition(name, babble=babble) for name in CONDITIONS}
    waves = {}
    for path in chosen:
        wave, rate = sf.read(path, dtype="float32")
        versions = {"clean": wave} | {n: c.apply(wave, rate, path) for n, c in conditions.items()}
        waves[path] = (rate, versions)
    rows = []
    for foreground in FOREGROUNDS:
        seconds: dict[str, list[float]] = {name: [] for name in ["clean", *CONDITIONS]}
        overlaps: dict[str, list[float]] = {name: [] for name in ["clean", *CONDITIONS]}
        for rate, versions in waves.values():
            reference = speech_span(versions["clean"], rate, MARGIN)
            for name, wave in versions.items():
                span = speech_span(wave, rate, MARGIN, foreground)
                seconds[name].append((span[1] - span[0]) / rate)
                overlaps[name].append(overlap(span, reference))
        cells = [f"{np.mean(seconds[n]):.2f} s / {np.mean(overlaps[n]):.2f}" for n in seconds]
        label = "all voiced frames" if foreground is None else f"foreground {foreground:g} dB"
        rows.append(f"| {corpus} | {label} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=50)
    args = parser.parse_args()
    root = Path(os.environ.get("SER_DATA_ROOT", ROOT / "data"))
    print("| corpus | span from | " + " | ".join(["clean", *CONDITIONS]) + " |")
    print("|---|---|" + "---:|" * (len(CONDITIONS) + 1))
    for corpus in PATTERNS:
        for row in corpus_table(root, corpus, args.clips):
            print(row, flush=True)


if __name__ == "__main__":
    main()
