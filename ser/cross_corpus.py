"""Evaluating a trained run on a corpus it never saw (``evaluate.py RUN --cross-corpus C``).

Every utterance of the new corpus whose emotion the run knows is a test clip; the
model's choice is restricted to the emotions both share. Features come from the
cache exactly as in training (the run's normalisation scope over the new corpus's
speakers); the baselines train on the run's own training split, as in
``ser.evaluation.evaluate_run``, so the comparison stays like for like. The report
lands in ``<run>/cross_corpus/<corpus>/``.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ser import runs
from ser.config import DATA_ROOT_ENV, Config, DataConfig
from ser.data.corpora import CORPORA, CorpusNotFoundError, Manifest, build_manifest
from ser.data.pipeline import speaker_normalise_vectors
from ser.data.prepare import extract_manifest_features
from ser.data.splits import Split
from ser.evaluation import (
    EvaluationError,
    Examples,
    ModelResult,
    build_report,
    evaluate_baselines,
    evaluate_keras,
    evaluation_config,
    finish_report,
    load_run_data,
)
from ser.features.cache import ExtractionReport
from ser.inference import Predictor
from ser.progress import Log


def _root_for_new_corpus(
    data: DataConfig, corpus: str, data_root: str | os.PathLike[str] | None, env: Mapping[str, str]
) -> Path:
    """The data root holding ``corpus``'s folder: ``data_root`` if given, else the
    run's ``data.root`` or ``$SER_DATA_ROOT``."""
    folder = getattr(data, corpus).folder
    tried = []
    candidates = (
        [(data_root, "--data-root")]
        if data_root is not None
        else [(data.root, "the run's data.root"), (env.get(DATA_ROOT_ENV), DATA_ROOT_ENV)]
    )
    for root, how in candidates:
        if not root:
            continue
        if (Path(root) / folder).is_dir():
            return Path(root).absolute()
        tried.append(f"{Path(root).absolute() / folder} ({how})")
    raise CorpusNotFoundError(
        f"{corpus} folder not found: tried {'; '.join(tried) or 'nothing'}; "
        "pass --data-root (the folder holding the corpus folders)"
    )


@dataclass
class _NewCorpus:
    """The new corpus's test clips, as the run's model and baselines see them."""

    root: Path
    test: Examples
    inputs: list[np.ndarray]
    features: dict[str, np.ndarray]
    extraction: ExtractionReport
    shared: list[str]  # emotions the run and the corpus share, in the run's label order
    allowed: list[int]  # their indices among the run's labels
    dropped: dict[str, int]  # clips per emotion the run does not know


def _nothing_usable(corpus: str, root: Path, manifest: Manifest, failed: int = 0):
    return EvaluationError(
        f"{corpus}: no usable clips under {root} ({len(manifest.skipped)} files skipped, "
        f"{failed} failed feature extraction; each is named above)"
    )


def _shared_emotions(corpus: str, manifest: Manifest, labels: Sequence[str]) -> list[str]:
    present = {r.emotion for r in manifest.rows}
    shared = [label for label in labels if label in present]
    if len(shared) < 2:
        raise EvaluationError(
            f"{corpus} shares {len(shared)} emotion(s) with the run ({', '.join(shared) or 'none'}); "
            "need at least two"
        )
    return shared


def _read_new_corpus(
    predictor: Predictor, cfg: Config, corpus: str, root: Path, log: Log
) -> _NewCorpus:
    """Manifest, cached features and model inputs of every usable clip of ``corpus``."""
    target = cfg.data.model_copy(update={"root": str(root), "corpora": [corpus]})
    manifest = build_manifest(target, log=log)
    if not manifest.rows:
        raise _nothing_usable(corpus, root, manifest)
    labels = list(predictor.labels)
    shared = _shared_emotions(corpus, manifest, labels)
    dropped = dict(
        sorted(Counter(r.emotion for r in manifest.rows if r.emotion not in shared).items())
    )
    # Every clip of the corpus, as training saw its corpora: a speaker-scope
    # normalisation (features.normalisation) pools all of a speaker's clips.
    features, extraction = extract_manifest_features(cfg, manifest, log)
    rows = [r for r in manifest.rows if r.emotion in shared and r.path in features]
    if not rows:
        raise _nothing_usable(corpus, root, manifest, len(extraction.failed))
    index = {label: i for i, label in enumerate(shared)}
    test = Examples(rows, np.array([index[r.emotion] for r in rows], np.int32))
    inputs = [predictor.model_input(features[r.path]) for r in rows]
    if cfg.features.pooled_normalisation == "speaker":
        inputs = speaker_normalise_vectors(inputs, [r.speaker for r in rows])
    allowed = [labels.index(label) for label in shared]
    return _NewCorpus(root, test, inputs, features, extraction, shared, allowed, dropped)


def _baselines_on_new_corpus(
    predictor: Predictor,
    cfg: Config,
    new: _NewCorpus,
    *,
    data_root: str | os.PathLike[str] | None,
    grid: bool | None,
    env: Mapping[str, str],
    log: Log,
) -> tuple[list[ModelResult], int]:
    """The baselines fitted on the run's training split and scored on the new corpus;
    also returns the number of training clips."""
    from ser.baselines import PooledFeatures

    source = load_run_data(predictor, data_root=data_root, env=env, log=log)
    run_features = PooledFeatures(
        cfg.features, cfg.data.sample_rate, known={**source.features, **new.features}, log=log
    )
    results = evaluate_baselines(
        cfg,
        Examples(source.rows["train"], source.targets["train"]),
        new.test,
        new.shared,
        run_features,
        val=Examples(source.rows["val"], source.targets["val"]),
        grid=grid,
        allowed=new.allowed,
        num_classes=len(predictor.labels),
        log=log,
    )
    return results, len(source.rows["train"])


def _protocol(cfg: Config, run_dir: Path, corpus: str, new: _NewCorpus) -> dict[str, Any]:
    trained_split = Split.from_dict(runs.read_json(run_dir / runs.SPLIT) or {})
    dropped = new.dropped
    return {
        "line": (
            f"cross-corpus: trained on {', '.join(cfg.data.corpora)} "
            f"({len(trained_split.train_speakers)} training speakers), tested on all "
            f"{len(new.test.speakers)} speakers of {corpus}, a corpus the run never saw; "
            f"{len(new.shared)} shared emotions ({', '.join(new.shared)})"
            + (f"; dropped {', '.join(f'{k} {v}' for k, v in dropped.items())}" if dropped else "")
        ),
        "speaker_independent": True,
        "method": "cross-corpus",
        "train_speakers": list(trained_split.train_speakers),
        "val_speakers": list(trained_split.val_speakers),
        "test_speakers": new.test.speakers,
        "trained_on": list(cfg.data.corpora),
        "tested_on": corpus,
        "shared_emotions": new.shared,
        "dropped_emotions": dropped,
    }


def evaluate_cross_corpus(
    run_dir: str | os.PathLike[str],
    corpus: str,
    *,
    config: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    data_root: str | os.PathLike[str] | None = None,
    grid: bool | None = None,
    baselines: bool = True,
    write: bool = True,
    env: Mapping[str, str] | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Evaluate a run on every utterance of a corpus it was not trained on, restricted
    to the emotions the run's labels and that corpus share.

    Baselines train on the run's own training split, as in ``evaluate_run``. Writes
    into ``<run>/cross_corpus/<corpus>/``.
    """
    env = os.environ if env is None else env
    started = time.perf_counter()
    CORPORA.get(corpus)  # unknown names list the valid ones
    predictor = Predictor.load(run_dir)
    cfg = evaluation_config(predictor.cfg, config, overrides)
    if corpus in cfg.data.corpora:
        raise EvaluationError(
            f"{predictor.run_dir} was trained on {corpus} (corpora: {', '.join(cfg.data.corpora)}); "
            "cross-corpus evaluation needs a corpus the run never saw"
        )
    root = _root_for_new_corpus(cfg.data, corpus, data_root, env)
    new = _read_new_corpus(predictor, cfg, corpus, root, log)
    results = [evaluate_keras(predictor, new.test, new.inputs, new.shared, allowed=new.allowed)]
    examples = {"test": len(new.test.rows)}
    if baselines and cfg.evaluation.baselines:
        fitted, trained = _baselines_on_new_corpus(
            predictor, cfg, new, data_root=data_root, grid=grid, env=env, log=log
        )
        results += fitted
        examples = {"train": trained, "test": len(new.test.rows)}
    report = build_report(
        predictor,
        cfg,
        _protocol(cfg, predictor.run_dir, corpus, new),
        new.shared,
        new.test,
        results,
        kind="cross-corpus",
        examples=examples,
        data_note=f"{corpus} under {root}; {new.extraction.summary()}",
        extra={"grid": cfg.evaluation.grid if grid is None else grid},
    )
    report["seconds"] = time.perf_counter() - started
    return finish_report(
        report,
        predictor.run_dir / runs.CROSS_CORPUS / corpus,
        new.test,
        results,
        cfg,
        write=write,
        histories=(),
        tensorboard_dir=Path(report["log_dir"]) / f"evaluation-cross-{corpus}",
        log=log,
    )
