"""Where speaker normalisation pays: on frames (as a sequence model sees them) or on
pooled statistics (as the dense models see them).

    SER_DATA_ROOT=../shared/data python docs/generators/normalisation_scope.py

For each corpus, the frame features of ``configs/best.yaml`` (MFCC with deltas,
chroma, log-mel, contrast, prosody; read from the feature cache) are summarised per
clip by the eight statistics a sequence model can compute in its graph (mean, std,
max, min, skewness, kurtosis, slope, mean change: ``MaskedGlobalPooling``), after
speaker normalisation on one of two levels:

- ``frames``: each speaker's frames z-normalised by all of that speaker's frames
  (``features.normalisation: speaker``), then the statistics;
- ``pooled``: the statistics of the raw frames, then each speaker's vectors
  z-normalised by that speaker's vectors (``features.pooled_normalisation: speaker``);
- ``none``: the statistics of the raw frames, no speaker normalisation.

A logistic regression (C = 0.01, class-balanced, standardised on the training
clips, as ``configs/best.yaml``'s baseline) is scored on the accuracy study's
speaker-independent folds (``ser.data.splits``: RAVDESS 5 folds by actor, TESS and
EMO-DB leave one speaker out; training and validation speakers train it). It prints
UA % mean ± std over folds. Nothing is tuned.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]  # the checkout, so `ser` imports from it
sys.path.insert(0, str(ROOT))

STATISTICS = ["mean", "std", "max", "min", "skew", "kurtosis", "slope", "delta"]
CORPORA = {"ravdess": ("kfold", 5), "tess": ("loso", 2), "emodb": ("loso", 10)}


def clip_statistics(corpus: str) -> tuple[list, dict[str, np.ndarray]]:
    """The corpus's manifest rows and, per level, one statistics vector per row."""
    from ser.config import load_config
    from ser.data.corpora import build_manifest
    from ser.data.pipeline import scope_normalise, speaker_normalise_vectors
    from ser.data.prepare import raw_manifest_features
    from ser.features.extractors import pool

    cfg = load_config("configs/best.yaml", [f"data.corpora=[{corpus}]"])
    manifest = build_manifest(cfg.data, log=lambda _line: None)
    frames, _ = raw_manifest_features(cfg, manifest, log=lambda _line: None)
    rows = [r for r in manifest.rows if r.path in frames]
    raw = np.stack([pool(frames[r.path], STATISTICS) for r in rows])
    by_frames = scope_normalise(frames, rows, "speaker")
    levels = {
        "none": raw,
        "frames": np.stack([pool(by_frames[r.path], STATISTICS) for r in rows]),
        "pooled": np.stack(speaker_normalise_vectors(list(raw), [r.speaker for r in rows])),
    }
    return rows, levels


def fold_scores(rows: list, x: np.ndarray, method: str, folds: int) -> list[float]:
    """UA of the logistic regression on each speaker-independent fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from ser.config import SplitConfig
    from ser.data.splits import make_split
    from ser.metrics import unweighted_accuracy

    labels = sorted({r.emotion for r in rows})
    y = np.array([labels.index(r.emotion) for r in rows])
    scores = []
    for fold in range(folds):
        split = make_split(rows, SplitConfig(method=method, folds=folds, fold=fold), seed=42)
        parts = split.partition(rows)
        test_paths = {r.path for r in parts["test"]}
        test = np.array([r.path in test_paths for r in rows])
        scaler = StandardScaler().fit(x[~test])
        model = LogisticRegression(C=0.01, max_iter=3000, class_weight="balanced")
        model.fit(scaler.transform(x[~test]), y[~test])
        predicted = model.predict(scaler.transform(x[test]))
        scores.append(float(unweighted_accuracy(y[test], predicted, len(labels))))
    return scores


def main() -> int:
    print(
        "| corpus | no speaker normalisation | speaker-normalised frames | speaker-normalised statistics |"
    )
    print("|---|---:|---:|---:|")
    for corpus, (method, folds) in CORPORA.items():
        rows, levels = clip_statistics(corpus)
        cells = []
        for level in ("none", "frames", "pooled"):
            ua = 100 * np.array(fold_scores(rows, levels[level], method, folds))
            cells.append(f"{ua.mean():.1f} ± {ua.std(ddof=1):.1f}")
        print(f"| {corpus} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
