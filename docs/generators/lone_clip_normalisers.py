"""Other ways to normalise a lone clip of an unknown speaker, replayed on fold runs.

    python docs/generators/lone_clip_normalisers.py checkpoints/cv/<study>/<config>/<corpus>

A sequence run on speaker-normalised frames serves a lone clip normalised by the
average training speaker (``frame_prior.json``). Its test speakers score higher when
each is normalised by their own clips (the cross-validation figure), so this replays
each fold's validation and test clips alone under normalisers that need no other clip
of the speaker, with the run's model unchanged:

- ``prior``: the average training speaker (what is served);
- ``nearest k``: the mean statistics of the k training speakers whose mean frame is
  nearest the clip's own (distance in units of the average speaker's std, over every
  feature, or over log-F0 alone: ``f0 nearest k``);
- ``mixture``: the clip normalised by each training speaker's statistics in turn, the
  probabilities averaged.

Training speakers' statistics come from their clean clips (no condition copies). The
validation speakers are scored beside the test speakers; labels only score.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]  # the checkout, so `ser` imports from it
sys.path.insert(0, str(ROOT))

NEAREST = (1, 3, 5)


def training_speaker_statistics(raw: dict, rows: list) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of every frame of each training speaker's clean clips: [S, D] each."""
    from ser.data.pipeline import speaker_statistics
    from ser.data.prepare import CONDITION_MARK

    clean = [r for r in rows if CONDITION_MARK not in r.path and r.path in raw]
    return speaker_statistics([raw[r.path] for r in clean], [r.speaker for r in clean])


def replay_fold(run_dir: Path) -> dict[str, dict[str, float]]:
    """UA % of the fold's validation and test clips alone under each normaliser."""
    from ser.data.pipeline import average_speaker
    from ser.data.prepare import prepare_data
    from ser.evaluation import read_run_data
    from ser.features.extractors import feature_names
    from ser.inference import Predictor
    from ser.metrics import unweighted_accuracy

    predictor = Predictor.load(run_dir, xla=False)
    cfg = predictor.cfg
    # The clips' raw frames only: no copies in recording conditions are needed.
    plain = cfg.augment.model_copy(
        update={"conditions": [], "condition_copies": 0, "served_frames": False}
    )
    cfg = cfg.model_copy(update={"augment": plain})
    manifest, split, _ = read_run_data(run_dir, cfg.data)
    data = prepare_data(
        cfg,
        split=split,
        labels=list(predictor.labels),
        manifest=manifest,
        log=lambda _line: None,
        keep_features=True,
    )
    raw = data.raw_features
    means, stds = training_speaker_statistics(raw, data.rows["train"])
    scale = stds.mean(axis=0)
    f0 = feature_names(cfg.features).index("log_f0")

    def probabilities(clips: list[np.ndarray], normalise) -> np.ndarray:
        return predictor.predict_inputs([predictor.model_input(normalise(x)) for x in clips])

    def nearest(k: int, dims: slice | list[int]):
        def normalise(x: np.ndarray) -> np.ndarray:
            distance = np.square((means - x.mean(axis=0)) / scale)[:, dims].sum(axis=1)
            chosen = np.argsort(distance, kind="stable")[:k]
            return average_speaker(means[chosen], stds[chosen]).apply(x)

        return normalise

    out = {}
    for part in ("val", "test"):
        clips = [raw[r.path] for r in data.rows[part]]
        ways = {"prior": probabilities(clips, predictor.frame_prior.apply)}
        for k in NEAREST:
            ways[f"nearest {k}"] = probabilities(clips, nearest(k, slice(None)))
            ways[f"f0 nearest {k}"] = probabilities(clips, nearest(k, [f0]))
        ways["mixture"] = np.mean(
            [
                probabilities(clips, average_speaker(means[[s]], stds[[s]]).apply)
                for s in range(len(means))
            ],
            axis=0,
        )
        targets = data.targets[part]
        out[part] = {
            way: 100 * unweighted_accuracy(targets, p.argmax(axis=1), len(predictor.labels))
            for way, p in ways.items()
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus_dir", type=Path, help="checkpoints/cv/<study>/<config>/<corpus>")
    args = parser.parse_args()
    folds = sorted(args.corpus_dir.glob("fold*"))
    if not folds:
        raise SystemExit(f"{args.corpus_dir}: no fold runs")
    results = []
    for fold in folds:
        print(f"{fold.name} ...", file=sys.stderr, flush=True)
        results.append(replay_fold(fold))
    ways = list(results[0]["test"])
    print(f"Lone clips of `{args.corpus_dir}` ({len(folds)} folds), UA % mean over folds:\n")
    print("| normaliser | validation speakers | test speakers |")
    print("|---|---:|---:|")
    for way in ways:
        val = np.mean([r["val"][way] for r in results])
        test = np.mean([r["test"][way] for r in results])
        print(f"| {way} | {val:.1f} | {test:.1f} |")


if __name__ == "__main__":
    main()
