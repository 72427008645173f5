"""Session statistics compared on replayed cross-validation folds (issue: a session whose
clips arrive sorted by emotion drifts to that emotion).

    python docs/generators/session_estimators.py checkpoints/cv/<study>/<config> [--json out.json]

For every fold run of one speaker-normalised config, each test speaker's clips go
through a speaker session clip by clip, in seeded random orders and sorted by emotion,
with each session estimator below normalising the clip by the session so far:

- ``mean``: the shipped one: running mean and variance shrunk towards the average
  training speaker with ``k`` = 5 pseudo-clips (``blended_normaliser``);
- ``mean_k``: the same with ``k`` fitted on the fold's training speakers;
- ``spread``: the prior weight grows when the session's clips vary less than the prior
  expects, ``k / r**alpha`` with ``r`` the median over dimensions of the session's
  sample variance over the prior's, capped at 1 (``spread_weighted_normaliser``);
  ``alpha`` fitted on the fold's training speakers;
- ``spread_dims``: the same per dimension: each dimension's prior weight k / r_d**alpha
  with r_d that dimension's variance ratio (capped at 1); ``alpha`` fitted likewise;
- ``median``: per-dimension median and MAD (x 1.4826) of the session's clips instead of
  mean and std, shrunk towards the prior with 5 pseudo-clips.

Fitting is label-free towards the model and uses training speakers only: sessions of
each training (and validation) speaker, sorted by emotion and in random order, and the
mean squared difference, over a session's first 30 clips, between the clip normalised
by the session and by all of the speaker's clips (what the model was trained on). Test
folds only score.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]  # the checkout, so `ser` imports from it
sys.path.insert(0, str(ROOT))

from ser.data.pipeline import (
    SESSION_PRIOR_WEIGHT,
    Normaliser,
    blended_normaliser,
    spread_weighted_normaliser,
)
from ser.metrics import unweighted_accuracy

SEEDS = (0, 1, 2)  # random orders per test speaker
FIT_POSITIONS = 30  # a training session's first clips scored when fitting
K_GRID = (2.0, 5.0, 10.0, 20.0, 40.0)
ALPHA_GRID = (0.5, 1.0, 2.0, 4.0, 8.0)
MAD_SCALE = 1.4826  # MAD -> std of a normal distribution
BUCKETS = ((1, 3), (4, 10), (11, 10**9))

# An estimator: (the session's raw vectors so far [n, D], prior, parameter) -> normaliser.
Estimator = Callable[[np.ndarray, Normaliser, float], Normaliser]


def _mean(seen: np.ndarray, prior: Normaliser, k: float) -> Normaliser:
    return blended_normaliser(len(seen), seen.sum(0), (seen * seen).sum(0), prior, k)


def _spread(seen: np.ndarray, prior: Normaliser, alpha: float) -> Normaliser:
    return spread_weighted_normaliser(
        len(seen), seen.sum(0), (seen * seen).sum(0), prior, SESSION_PRIOR_WEIGHT, alpha
    )


def _spread_dims(seen: np.ndarray, prior: Normaliser, alpha: float) -> Normaliser:
    """``_spread`` per dimension: each dimension's prior weight k / r_d**alpha."""
    n = len(seen)
    if n < 2:
        return _mean(seen, prior, SESSION_PRIOR_WEIGHT)
    prior_mean, prior_var = prior.mean.astype(np.float64), np.square(prior.std.astype(np.float64))
    ratio = np.clip(seen.var(0, ddof=1) / prior_var, 1e-6, 1.0)
    k = SESSION_PRIOR_WEIGHT / ratio**alpha
    mean, var = seen.mean(0), seen.var(0)
    std = np.sqrt((n * var + k * prior_var) / (n + k))
    return Normaliser(
        ((n * mean + k * prior_mean) / (n + k)).astype(np.float32),
        np.where(std < 1e-8, 1.0, std).astype(np.float32),
    )


def _median(seen: np.ndarray, prior: Normaliser, k: float) -> Normaliser:
    n = len(seen)
    centre = np.median(seen, axis=0)
    scale = MAD_SCALE * np.median(np.abs(seen - centre), axis=0)
    prior_mean, prior_var = prior.mean.astype(np.float64), np.square(prior.std.astype(np.float64))
    std = np.sqrt((n * scale * scale + k * prior_var) / (n + k))
    return Normaliser(
        ((n * centre + k * prior_mean) / (n + k)).astype(np.float32),
        np.where(std < 1e-8, 1.0, std).astype(np.float32),
    )


# name: (estimator, its fixed parameter, or the grid fitted on the training speakers)
Entry = tuple[Estimator, float | tuple[float, ...]]
ESTIMATORS: dict[str, Entry] = {
    "mean": (_mean, SESSION_PRIOR_WEIGHT),
    "mean_k": (_mean, K_GRID),
    "spread": (_spread, ALPHA_GRID),
    "spread_dims": (_spread_dims, ALPHA_GRID),
    "median": (_median, SESSION_PRIOR_WEIGHT),
}
# --sweep: ``spread`` at every exponent of its grid on the test folds, to show how much
# the lever can give at all (a diagnostic: nothing is chosen from it).
SWEEP: dict[str, Entry] = {f"spread a={a:g}": (_spread, a) for a in ALPHA_GRID}


def session_inputs(
    vectors: np.ndarray, order: list[int], prior: Normaliser, estimator: Estimator, p: float
) -> np.ndarray:
    """Each clip of ``order`` normalised by the session up to and including it."""
    out = np.empty((len(order), vectors.shape[1]), np.float32)
    for n, i in enumerate(order, start=1):
        out[n - 1] = estimator(vectors[order[:n]], prior, p).apply(vectors[i])
    return out


def orders(idx: list[int], targets: np.ndarray, seeds: tuple[int, ...]) -> dict[str, list]:
    """A speaker's clip orders: ``random`` (one per seed) and ``sorted`` by emotion."""
    return {
        "random": [np.random.default_rng(s).permutation(idx).tolist() for s in seeds],
        "sorted": [sorted(idx, key=lambda i: (targets[i], i))],
    }


def zscored(vectors: np.ndarray) -> np.ndarray:
    std = vectors.std(0)
    return (vectors - vectors.mean(0)) / np.where(std < 1e-8, 1.0, std)


def fit_parameter(
    estimator: Estimator,
    grid: tuple[float, ...],
    vectors: np.ndarray,
    speakers: list[str],
    targets: np.ndarray,
    prior: Normaliser,
) -> tuple[float, dict[str, float]]:
    """The grid value whose training-speaker sessions come closest to whole-speaker
    normalisation (mean squared difference over each session's first clips)."""
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(speakers):
        by_speaker[s].append(i)
    scores = {}
    for p in grid:
        errors = []
        for idx in by_speaker.values():
            whole = dict(zip(idx, zscored(vectors[idx]), strict=True))
            for kind in orders(idx, targets, (0,)).values():
                for order in kind:
                    head = order[:FIT_POSITIONS]
                    got = session_inputs(vectors, head, prior, estimator, p)
                    errors.append(np.mean((got - np.stack([whole[i] for i in head])) ** 2))
        scores[str(p)] = float(np.mean(errors))
    best = min(grid, key=lambda p: scores[str(p)])
    return best, scores


def replay_fold(run_dir: Path, entries: dict[str, Entry]) -> dict:
    """Every estimator on one fold run: UA per order and (position, target, predicted)."""
    from ser.data.pipeline import to_model_input
    from ser.evaluation import load_run_data
    from ser.inference import Predictor

    predictor = Predictor.load(run_dir, xla=False)
    prior = predictor.speaker_prior
    if prior is None:
        raise SystemExit(f"{run_dir}: not a speaker-normalised run")
    data = load_run_data(predictor, log=lambda _line: None)
    f = predictor.cfg.features

    def raw(part: str) -> np.ndarray:
        return np.stack(
            [to_model_input(data.features[r.path], f.mode, f.pooling, 0) for r in data.rows[part]]
        ).astype(np.float64)

    fit_rows = data.rows["train"] + data.rows["val"]
    fit_vectors = np.concatenate([raw("train"), raw("val")])
    fit_targets = np.concatenate([data.targets["train"], data.targets["val"]])
    test = raw("test")
    targets = np.asarray(data.targets["test"])
    classes = len(predictor.labels)
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(data.rows["test"]):
        by_speaker[r.speaker].append(i)

    def ua(predicted: np.ndarray) -> float:
        return unweighted_accuracy(targets, predicted, classes)

    speaker_pred = np.asarray(predictor.predict_inputs(data.inputs["test"])).argmax(1)
    alone = np.stack([prior.apply(v) for v in test])
    result: dict = {
        "fold": run_dir.name,
        "ua": {
            "alone": ua(predictor.predict_batch(alone).argmax(1)),
            "speaker": ua(speaker_pred),
        },
        "estimators": {},
    }
    for name, (estimator, grid) in entries.items():
        fitted: dict = {}
        if isinstance(grid, float):
            p = grid
        else:
            p, fitted = fit_parameter(
                estimator, grid, fit_vectors, [r.speaker for r in fit_rows], fit_targets, prior
            )
        entry: dict = {"parameter": p, "fit_scores": fitted, "ua": {}, "positions": {}}
        for kind in ("random", "sorted"):
            uas, positions = [], []
            runs_of = [orders(idx, targets, SEEDS)[kind] for idx in by_speaker.values()]
            for s in range(len(runs_of[0])):
                predicted = np.zeros(len(targets), np.int64)
                for speaker_orders in runs_of:
                    order = speaker_orders[s]
                    x = session_inputs(test, order, prior, estimator, p)
                    predicted[order] = predictor.predict_batch(x).argmax(1)
                    positions += [
                        (n, int(targets[i]), int(predicted[i]))
                        for n, i in enumerate(order, start=1)
                    ]
                uas.append(ua(predicted))
            entry["ua"][kind] = float(np.mean(uas))
            entry["positions"][kind] = positions
        result["estimators"][name] = entry
        print(f"  {name} p={p}: {entry['ua']}", file=sys.stderr, flush=True)
    return result


def _cell(values: list[float]) -> str:
    std = 100 * np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{100 * np.mean(values):.1f} ± {std:.1f}"


def _bucket_ua(positions: list, lo: int, hi: int) -> str:
    """UA over the classes present among the clips at positions lo..hi (folds pooled)."""
    picked = [(t, p) for n, t, p in positions if lo <= n <= hi]
    if not picked:
        return ""
    t, p = (np.asarray(v) for v in zip(*picked, strict=True))
    classes = int(max(t.max(), p.max())) + 1
    return f"{100 * unweighted_accuracy(t, p, classes):.1f}"


def render(results: dict[str, list[dict]]) -> str:
    names = list(next(iter(results.values()))[0]["estimators"])
    lines = [
        "UA % mean ± std over folds; *random*: mean over 3 seeded orders per speaker.",
        "",
        (
            "| corpus | folds | estimator | parameter (per fold) | alone | session, random "
            "| session, sorted by emotion | all of the speaker's clips |"
        ),
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for corpus, folds in results.items():
        alone = _cell([f["ua"]["alone"] for f in folds])
        whole = _cell([f["ua"]["speaker"] for f in folds])
        for name in names:
            params = sorted({f["estimators"][name]["parameter"] for f in folds})
            random_ua = _cell([f["estimators"][name]["ua"]["random"] for f in folds])
            sorted_ua = _cell([f["estimators"][name]["ua"]["sorted"] for f in folds])
            lines.append(
                f"| {corpus} | {len(folds)} | {name} | {', '.join(f'{p:g}' for p in params)} "
                f"| {alone} | {random_ua} | {sorted_ua} | {whole} |"
            )
    lines += [
        "",
        (
            "Session UA % by the clip's position in its speaker's session (all folds pooled; UA "
            "over the classes present at those positions: in sorted order the first clips are "
            "all one emotion, so there it is that emotion's recall):"
        ),
        "",
        (
            "| corpus | estimator | random 1-3 | random 4-10 | random 11+ "
            "| sorted 1-3 | sorted 4-10 | sorted 11+ |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for corpus, folds in results.items():
        for name in names:
            cells = [
                _bucket_ua(
                    [x for f in folds for x in f["estimators"][name]["positions"][kind]],
                    lo,
                    hi,
                )
                for kind in ("random", "sorted")
                for lo, hi in BUCKETS
            ]
            lines.append(f"| {corpus} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config_dir", type=Path, help="checkpoints/cv/<study>/<config>")
    parser.add_argument("--json", type=Path, help="also write every fold's figures here")
    parser.add_argument("--corpus", action="append", help="only these corpora")
    parser.add_argument(
        "--sweep", action="store_true", help="spread at each exponent instead (diagnostic)"
    )
    parser.add_argument("--from-json", type=Path, nargs="+", help="render earlier --json files")
    args = parser.parse_args(argv)
    if args.from_json:
        merged: dict = {}
        for path in args.from_json:
            merged.update(json.loads(path.read_text(encoding="utf-8")))
        print(render(merged))
        return 0
    from ser import runs

    results: dict[str, list[dict]] = {}
    for corpus_dir in sorted(p for p in args.config_dir.iterdir() if p.is_dir()):
        if args.corpus and corpus_dir.name not in args.corpus:
            continue
        folds = sorted(p for p in corpus_dir.glob("fold*") if (p / runs.SUMMARY).is_file())
        for fold in folds:
            print(f"{corpus_dir.name} {fold.name} ...", file=sys.stderr, flush=True)
            results.setdefault(corpus_dir.name, []).append(
                replay_fold(fold, SWEEP if args.sweep else ESTIMATORS)
            )
            if args.json:
                args.json.write_text(json.dumps(results), encoding="utf-8")
    if not results:
        raise SystemExit(
            f"{args.config_dir}: no finished fold runs (<corpus>/fold<k>/summary.json)"
        )
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
