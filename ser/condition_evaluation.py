"""How a trained run scores when its test clips arrive in other recording conditions.

``score_conditions(predictor, data, conditions)`` re-reads every test clip of a run,
applies each ``ser.perturb.Condition`` (a gain change, a telephone channel, noise,
a codec, a room), extracts features exactly as the run does (``extract_features``,
with its trimming and loudness settings) and scores the model two ways:

- ``alone``: each clip by itself, as ``ser predict`` and ``/predict`` without a session
  serve it (a speaker-normalised model uses the average training speaker);
- ``speaker``: each test speaker's clips normalised together, as cross-validation
  scores them (the same for a model without speaker normalisation).

The clean clips are scored the same way first, so every condition's loss is measured
against the same reference. Nothing is chosen here: labels only score. Every clip is
scored, including those the service's speech check would answer ``no_speech`` for;
their share is reported per condition (``no_speech``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ser import runs
from ser.audio import load_audio
from ser.config import FeaturesConfig
from ser.data.corpora import Utterance
from ser.data.pipeline import scope_normalise, speaker_normalise_vectors, to_model_input
from ser.data.prepare import CONDITION_MARK, PreparedData
from ser.features.extractors import extract_features
from ser.inference import Predictor
from ser.metrics import classification_metrics
from ser.perturb import Babble, Condition, parse_conditions
from ser.progress import Log, progress_bar
from ser.speech import detect_speech

CLEAN = "clean"


def clip_key(row: Utterance) -> str:
    """A clip's name for seeding its conditions: the same wherever the corpora sit."""
    return f"{row.speaker}/{Path(row.path).name}"


def _features_in_condition(
    path: str, key: str, condition: Condition | None, cfg: FeaturesConfig, sample_rate: int
) -> tuple[np.ndarray, bool]:
    """Frame features [T, D] of the clip at ``path`` in ``condition`` (None: as recorded),
    before any normalisation, and whether the speech check hears speech in it."""
    wave = load_audio(path, sample_rate)
    if condition is not None:
        wave = condition.apply(wave, sample_rate, key)
    speech = detect_speech(wave, sample_rate).speech
    return extract_features(wave, sample_rate, cfg), speech


def _model_inputs(
    predictor: Predictor, rows: Sequence[Utterance], frames: list[np.ndarray]
) -> dict[str, list[np.ndarray]]:
    """Normalised model inputs of ``rows`` in both modes (see the module docstring)."""
    f = predictor.cfg.features
    width = predictor.max_frames
    if f.normalisation == "none":
        alone_frames = speaker_frames = frames
    else:
        alone_frames = [predictor.lone_clip_frames(x) for x in frames]
        by_path = scope_normalise(dict(zip([r.path for r in rows], frames)), rows, f.normalisation)
        speaker_frames = [by_path[r.path] for r in rows]
    alone = [to_model_input(x, f.mode, f.pooling, width) for x in alone_frames]
    speaker = [to_model_input(x, f.mode, f.pooling, width) for x in speaker_frames]
    if predictor.speaker_prior is not None:
        alone = [predictor.speaker_prior.apply(x) for x in alone]
        speaker = speaker_normalise_vectors(speaker, [r.speaker for r in rows])
    return {
        "alone": [predictor.normaliser.apply(x) for x in alone],
        "speaker": [predictor.normaliser.apply(np.asarray(x, np.float32)) for x in speaker],
    }


def score_conditions(
    predictor: Predictor,
    data: PreparedData,
    conditions: Sequence[Condition],
    *,
    workers: int = 0,
    log: Log = print,
) -> dict[str, Any]:
    """Metrics of the run's test clips, clean and in each condition, alone and by speaker.

    Returns ``{"conditions": {name: {"alone": metrics, "speaker": metrics, "no_speech":
    share}}, "clips": [clip_key, ...], "speakers": [...]}``; metrics as
    ``classification_metrics`` plus ``predicted``, each clip's label in ``clips`` order.
    ``workers`` processes extract features (0: one per core).
    """
    rows = list(data.rows["test"])
    targets = np.asarray(data.targets["test"])
    labels = list(predictor.labels)
    cfg, rate = predictor.cfg.features, predictor.sample_rate
    out: dict[str, Any] = {}
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for condition in [None, *conditions]:
            name = CLEAN if condition is None else condition.name
            work = functools.partial(
                _features_in_condition, condition=condition, cfg=cfg, sample_rate=rate
            )
            with progress_bar(len(rows), name, "clip") as bar:
                results = []
                for result in pool.map(
                    work, [r.path for r in rows], [clip_key(r) for r in rows], chunksize=4
                ):
                    results.append(result)
                    bar.update()
            inputs = _model_inputs(predictor, rows, [frames for frames, _ in results])
            scores: dict[str, Any] = {}
            for mode, x in inputs.items():
                predicted = predictor.predict_normalised(x).argmax(axis=1)
                scores[mode] = classification_metrics(targets, predicted, labels)
                scores[mode]["predicted"] = [labels[i] for i in predicted]
            scores["no_speech"] = float(np.mean([not speech for _, speech in results]))
            out[name] = scores
            log(
                f"{name}: UA alone {scores['alone']['ua']:.3f}, by speaker "
                f"{scores['speaker']['ua']:.3f}; no speech heard in {scores['no_speech']:.0%}"
            )
    return {
        "conditions": out,
        "clips": [clip_key(r) for r in rows],
        "speakers": sorted({r.speaker for r in rows}),
    }


def conditions_for_run(text: str, data: PreparedData, sample_rate: int, seed: int = 0):
    """``--perturb`` text -> conditions; babble is made from the run's training clips
    (as recorded: not the copies ``augment.conditions`` adds)."""
    babble = Babble(
        tuple(r.path for r in data.rows["train"] if CONDITION_MARK not in r.path),
        functools.partial(load_audio, sample_rate=sample_rate),
    )
    return parse_conditions(text, seed=seed, babble=babble)  # attached to babble only


def evaluate_run_conditions(
    run_dir: str | os.PathLike[str],
    text: str,
    *,
    data_root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    log: Log = print,
) -> dict[str, Any]:
    """Score one run's test clips in the conditions of ``text`` (``--perturb``); writes
    ``conditions.json`` into the run directory and returns it."""
    from ser.evaluation import load_run_data

    predictor = Predictor.load(run_dir, xla=False)
    data = load_run_data(predictor, data_root=data_root, log=log)
    conditions = conditions_for_run(text, data, predictor.sample_rate, seed)
    result = {"run": str(predictor.run_dir), "seed": seed}
    result.update(score_conditions(predictor, data, conditions, log=log))
    runs.write_json(predictor.run_dir / runs.CONDITIONS, result)
    return result


def fold_runs(cv_dir: str | os.PathLike[str]) -> dict[str, list[Path]]:
    """Finished fold runs of a cross-validated config, ``<cv_dir>/<corpus>/fold<k>``, by
    corpus; ``cv_dir`` may also be a cross-validation's output folder holding several."""
    root = Path(cv_dir)
    folds: dict[str, list[Path]] = {}
    for summary in sorted(root.glob("**/fold*/" + runs.SUMMARY)):
        corpus_dir = summary.parent.parent  # "<corpus>", or "<config>/<corpus>"
        folds.setdefault(corpus_dir.relative_to(root).as_posix(), []).append(summary.parent)
    return folds


def evaluate_cv_conditions(
    cv_dir: str | os.PathLike[str],
    text: str,
    *,
    corpora: Sequence[str] = (),
    data_root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    log: Log = print,
) -> dict[str, Any]:
    """Score every fold run under ``cv_dir`` in the conditions of ``text``; writes
    ``<cv_dir>/conditions.json`` (per corpus, per fold) and returns it; ``corpora``, if
    given, limits it to those corpora's folds (each clip and condition is one feature
    extraction). A fold whose ``conditions.json`` already holds these conditions with
    this seed is not redone."""
    wanted = [c.name for c in parse_conditions(text, seed=seed)]
    by_corpus: dict[str, list[dict[str, Any]]] = {}
    for corpus, runs_of_corpus in fold_runs(cv_dir).items():
        if corpora and corpus.rsplit("/", 1)[-1] not in corpora:
            continue
        for run in runs_of_corpus:
            done = run / runs.CONDITIONS
            if done.is_file():
                old = runs.read_json(done)
                if old.get("seed") == seed and set(wanted) <= set(old["conditions"]):
                    by_corpus.setdefault(corpus, []).append(old)
                    continue
            log(f"{corpus} {run.name}:")
            result = evaluate_run_conditions(run, text, data_root=data_root, seed=seed, log=log)
            by_corpus.setdefault(corpus, []).append(result)
    if not by_corpus:
        raise runs.RunDirError(f"{cv_dir}: no finished fold runs (<corpus>/fold<k>/summary.json)")
    out = {"conditions": [CLEAN, *wanted], "seed": seed, "corpora": by_corpus}
    runs.write_json(Path(cv_dir) / runs.CONDITIONS, out)
    return out


def render_conditions(result: dict[str, Any]) -> str:
    """Markdown: UA % (mean ± std over folds) per condition and corpus, each clip alone
    and by speaker, with the points lost against the clean clips."""
    names = result["conditions"]
    lines = [
        "| condition | mode | " + " | ".join(f"{c} UA % | Δ" for c in result["corpora"]) + " |",
        "|---|---|" + "---:|---:|" * len(result["corpora"]),
    ]
    for name in names:
        for mode in ("alone", "speaker"):
            cells = []
            for folds in result["corpora"].values():
                ua = np.array([f["conditions"][name][mode]["ua"] for f in folds]) * 100
                clean = np.array([f["conditions"][CLEAN][mode]["ua"] for f in folds]) * 100
                std = ua.std(ddof=1) if len(ua) > 1 else 0.0
                delta = "" if name == CLEAN else f"{(ua - clean).mean():+.1f}"
                cells.append(f"{ua.mean():.1f} ± {std:.1f} | {delta}")
            lines.append(f"| {name} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
