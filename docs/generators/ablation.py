"""Render the accuracy ablation of docs/RESULTS.md from a cross-validation's cv.json.

    python docs/generators/ablation.py checkpoints/cv/accuracy/cv.json

Each step names the model row (as in cv.json ``groups``) it reads and the step it
is compared with; Δ is the difference of the mean speaker-independent UA across
folds, in points. Nothing here is typed in by hand but the step names.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CORPORA = ("ravdess", "tess", "emodb")
# (lever, model row, the step it adds to)
STEPS = [
    ("seed recipe: MLP on 180 utterance means", "seed_mlp (mfcc40+chroma12+mel128 means)", None),
    ("Keras dense on mean+std of MFCC, chroma, mel, contrast", "dense (dense_meanstd)", None),
    (
        "+ per-speaker z-norm of the pooled vectors",
        "dense (dense_meanstd_spk)",
        "dense (dense_meanstd)",
    ),
    (
        "+ MFCC deltas, 13 functionals per feature",
        "dense (dense_functionals_spk)",
        "dense (dense_meanstd_spk)",
    ),
    (
        "+ prosody (log-F0, energy, ZCR)",
        "dense (dense_functionals_prosody_spk)",
        "dense (dense_functionals_spk)",
    ),
    (
        "+ Gaussian noise on the vectors (train only)",
        "dense (dense_functionals_prosody_spk_noise)",
        "dense (dense_functionals_prosody_spk)",
    ),
    (
        "+ wider net, input dropout, AdamW (with the noise)",
        "dense (dense_functionals_prosody_spk_reg)",
        "dense (dense_functionals_prosody_spk_noise)",
    ),
    (
        "+ label smoothing 0.1 (with the noise)",
        "dense (dense_functionals_prosody_spk_noise_ls)",
        "dense (dense_functionals_prosody_spk_noise)",
    ),
    (
        "+ mixup, Beta(0.3, 0.3) (with the noise)",
        "dense (dense_functionals_prosody_spk_noise_mixup)",
        "dense (dense_functionals_prosody_spk_noise)",
    ),
    (
        "+ silence trimmed at 30 dB below peak (with the noise)",
        "dense (dense_functionals_prosody_spk_noise_trim)",
        "dense (dense_functionals_prosody_spk_noise)",
    ),
    (
        "+ seed ensemble of 5 (with the noise)",
        "dense (dense_functionals_prosody_spk_noise_ens5)",
        "dense (dense_functionals_prosody_spk_noise)",
    ),
    (
        "+ seed ensemble of 5 and trimming (with the noise)",
        "dense (dense_functionals_prosody_spk_noise_trim_ens5)",
        "dense (dense_functionals_prosody_spk_noise_ens5)",
    ),
    (
        "+ multi-corpus training (other two corpora)",
        "dense (dense_functionals_prosody_spk_multi)",
        "dense (dense_functionals_prosody_spk)",
    ),
    ("CNN on frames, frame-level speaker z-norm, SpecAugment", "cnn (cnn_spk)", None),
    ("CRNN (conv + BiGRU + attention pooling), same inputs", "crnn (crnn_spk)", "cnn (cnn_spk)"),
    ("Keras dense on openSMILE eGeMAPS, speaker z-norm", "dense (egemaps_spk)", None),
    ("Keras dense on openSMILE ComParE, speaker z-norm", "dense (compare_spk)", None),
    ("+ seed ensemble of 5", "dense (compare_spk_ens5)", "dense (compare_spk)"),
    (
        "+ seed ensemble of 5 and trimming (EMO-DB only)",
        "dense (compare_trim_spk_ens5)",
        "dense (compare_spk_ens5)",
    ),
]


def ua_by_model(cv: dict) -> dict[tuple[str, str], dict]:
    return {(g["corpus"], g["model"]): g["ua"] for g in cv["groups"] if g["speaker_independent"]}


def render(cv: dict) -> str:
    ua = ua_by_model(cv)
    head = "| lever | " + " | ".join(f"{c} UA % | Δ" for c in CORPORA) + " |"
    lines = [head, "|---|" + "---|---|" * len(CORPORA)]
    for lever, model, base in STEPS:
        cells = []
        for corpus in CORPORA:
            got = ua.get((corpus, model))
            if got is None:
                cells += ["n/a", ""]
                continue
            cells.append(f"{100 * got['mean']:.1f} ± {100 * got['std']:.1f}")
            ref = ua.get((corpus, base)) if base else None
            cells.append(f"{100 * (got['mean'] - ref['mean']):+.1f}" if ref else "")
        lines.append(f"| {lever} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


TARGETS = {"ravdess": 70.0, "tess": 80.0, "emodb": 85.0}  # the accuracy issue's, UA %


def render_targets(cv: dict) -> str:
    """Per corpus: the target, the best Keras row and the best baseline row (by mean UA
    over the same folds, so the choice of row is made on the reported folds)."""
    lines = [
        "| corpus | target UA % | best Keras configuration | UA % | best baseline | UA % |",
        "|---|---|---|---|---|---|",
    ]
    for corpus in CORPORA:
        rows = [g for g in cv["groups"] if g["corpus"] == corpus and g["speaker_independent"]]
        cells = [corpus, f"{TARGETS[corpus]:.0f}"]
        for kind in ("keras", "baseline"):
            best = max(
                (g for g in rows if g["kind"] == kind), key=lambda g: g["ua"]["mean"], default=None
            )
            name = best["model"] if best else "n/a"
            if best and "training also on" in best["protocol"]:
                name += ", trained with the other corpora too"
            cells += (
                [name, f"{100 * best['ua']['mean']:.1f} ± {100 * best['ua']['std']:.1f}"]
                if best
                else [name, ""]
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    cv = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    print(render(cv) + "\n" + render_targets(cv), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
