"""Evaluating a trained run against the scikit-learn baselines on the same test rows.

``evaluate_run`` loads the run with ``Predictor.load`` (as prediction and serving
do), rebuilds its split from the saved speaker lists and manifest (``load_run_data``:
through ``ser.data.prepare`` and the feature cache, moved to wherever the corpora
are now), scores the Keras model (``evaluate_keras``) and the scikit-learn baselines
(``evaluate_baselines``, models from ``ser.baselines``) on the same test rows,
assembles every number into one report dict (``build_report``) and hands it to
``ser.reports`` to write (``finish_report``). ``ser.cross_corpus`` reuses these steps
for a corpus the run never saw; ``ser.crossval`` reuses the baseline step per fold.
Metrics themselves live in ``ser.metrics``.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ser import runs
from ser.config import (
    Config,
    ConfigError,
    find_config,
    parse_override,
    read_yaml,
    set_path,
    validate,
)
from ser.data.corpora import Utterance
from ser.data.prepare import CONDITION_MARK, PreparedData, prepare_data, read_run_data
from ser.data.splits import PARTS, SPEAKER_DEPENDENT_METHODS, Split, SplitError
from ser.inference import Predictor
from ser.metrics import classification_metrics, metrics_by_group
from ser.progress import Log, above_bar, progress_bar
from ser.reports import served_line
from ser.served_evaluation import served_modes

if TYPE_CHECKING:
    from ser.baselines import PooledFeatures

REPORT_FORMAT = "ser-report/1"


# ============================================================================ runs
# Evaluating a run directory: the model, normaliser and labels come from
# ``Predictor.load``; rows, split and features from the run's saved manifest and
# split through ``prepare_data`` and the feature cache, exactly as in training.


class EvaluationError(RuntimeError):
    """A run that cannot be evaluated as asked; the message says why."""


@dataclass
class Examples:
    """Utterances and their integer targets (indices into the label list in use)."""

    rows: list[Utterance]
    targets: np.ndarray

    @property
    def speakers(self) -> list[str]:
        return sorted({r.speaker for r in self.rows})

    def recorded(self) -> Examples:
        """These examples without the copies in recording conditions (``augment.conditions``):
        the clips that are files of their own."""
        keep = [i for i, r in enumerate(self.rows) if CONDITION_MARK not in r.path]
        return Examples([self.rows[i] for i in keep], np.asarray(self.targets)[keep])


@dataclass
class ModelResult:
    """Test-split scores of one model (the run's Keras model or a baseline)."""

    name: str
    kind: str  # "keras" or "baseline"
    title: str
    features: str
    metrics: dict[str, Any]
    per_corpus: dict[str, dict[str, Any]]
    predictions: np.ndarray
    fit_seconds: float | None = None
    predict_seconds: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "title": self.title,
            "features": self.features,
            **{key: self.metrics[key] for key in ("ua", "wa", "macro_f1", "n")},
            "per_class": self.metrics["per_class"],
            "confusion": self.metrics["confusion"],
            "absent": self.metrics["absent"],
            "per_corpus": self.per_corpus,
            "fit_seconds": self.fit_seconds,
            "predict_seconds": self.predict_seconds,
            "params": self.params,
            "grid": self.grid,
            "notes": self.notes,
        }


def evaluation_config(
    run_cfg: Config,
    config: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
) -> Config:
    """The run's config with its ``evaluation`` section replaced by ``config``'s (if
    given) and ``--set evaluation.KEY=VALUE`` overrides applied.

    Only ``evaluation.*`` may change: data, split, features and model are what the
    run was trained with.
    """
    tree = run_cfg.to_dict()
    source = runs.CONFIG
    if config is not None:
        other = read_yaml(find_config(config))
        tree["evaluation"] = other.get("evaluation", {})
        source = f"{config} (evaluation section)"
    for text in overrides:
        key, value = parse_override(text)
        if not key.startswith("evaluation."):
            raise ConfigError(
                f"--set {text}: a trained run's data, split, features and model are fixed; "
                "only evaluation.* keys can be changed when evaluating a run"
            )
        set_path(tree, key, value, f"--set {text}")
    return validate(tree, source)


def check_speaker_independent(split: Split, parts: Mapping[str, Sequence[Utterance]]) -> None:
    """Raise if a test speaker of a speaker-independent split has any train/val row."""
    if not split.speaker_independent:
        return
    test = {r.speaker for r in parts["test"]}
    seen = {r.speaker for part in ("train", "val") for r in parts[part]}
    if leaked := sorted(test & seen):
        raise EvaluationError(f"test speakers also in train/validation: {', '.join(leaked)}")


def load_run_data(
    predictor: Predictor,
    *,
    data_root: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    log: Log = print,
) -> PreparedData:
    """The run's train/val/test examples, rebuilt from its saved manifest, split and
    labels through ``prepare_data`` (features from the cache, recomputed if absent)."""
    run_dir = predictor.run_dir
    for name in (runs.SPLIT, runs.MANIFEST):
        if not (run_dir / name).is_file():
            raise runs.RunDirError(
                f"{run_dir}: missing {name}; evaluation needs the files training saves"
            )
    try:
        manifest, split, where = read_run_data(
            run_dir, predictor.cfg.data, data_root=data_root, env=env
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise EvaluationError(
            f"{run_dir}: unreadable {runs.SPLIT} or {runs.MANIFEST}: {exc}"
        ) from None
    log(f"data: {where}")
    try:
        data = prepare_data(
            predictor.cfg,
            split=split,
            labels=list(predictor.labels),
            manifest=manifest,
            log=log,
            keep_features=True,
        )
    except SplitError as exc:
        raise EvaluationError(f"{run_dir}: {exc}") from None
    check_speaker_independent(data.split, data.rows)
    return data


def describe_model_input(cfg: Config) -> str:
    from ser.baselines import describe_frames

    f = cfg.features
    if f.mode == "pooled":
        return f"{describe_frames(f)}, pooled by {'+'.join(f.pooling)}"
    return f"{describe_frames(f)}, sequences of at most {cfg.data.max_seconds:g} s"


def evaluate_keras(
    predictor: Predictor,
    test: Examples,
    inputs: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    allowed: Sequence[int] | None = None,
) -> ModelResult:
    """Score the run's model on ``test``; ``labels`` name ``test.targets``.

    With ``allowed`` (indices into the run's labels, one per entry of ``labels``), the
    model's choice is restricted to those classes (cross-corpus evaluation).
    """
    started = time.perf_counter()
    probs = predictor.predict_inputs(inputs, batch_size=predictor.cfg.train.batch_size)
    pred = probs.argmax(axis=1) if allowed is None else probs[:, list(allowed)].argmax(axis=1)
    seconds = time.perf_counter() - started
    metrics = classification_metrics(test.targets, pred, labels)
    cfg = predictor.cfg
    return ModelResult(
        name=cfg.model.label,
        kind="keras",
        title=f"{cfg.model.label} (this run, {predictor.parameters:,} parameters)",
        features=describe_model_input(cfg),
        metrics=metrics,
        per_corpus=metrics_by_group(test.targets, pred, [r.corpus for r in test.rows], labels),
        predictions=pred,
        predict_seconds=seconds,
        params=cfg.model.params.model_dump(mode="json"),
    )


def _score_baseline(
    fit: Any,
    features: str,
    x_test: np.ndarray,
    test: Examples,
    labels: Sequence[str],
    num_classes: int,
    allowed: Sequence[int] | None,
) -> ModelResult:
    """A fitted baseline (``ser.baselines.BaselineFit``) scored on the test rows."""
    from ser.baselines import TITLES, predict

    started = time.perf_counter()
    pred = predict(fit.estimator, x_test, num_classes, allowed)
    seconds = time.perf_counter() - started
    corpora = [r.corpus for r in test.rows]
    return ModelResult(
        name=fit.name,
        kind="baseline",
        title=TITLES[fit.name],
        features=features,
        metrics=classification_metrics(test.targets, pred, labels),
        per_corpus=metrics_by_group(test.targets, pred, corpora, labels),
        predictions=pred,
        fit_seconds=fit.seconds,
        predict_seconds=seconds,
        params=fit.params,
        grid=fit.grid,
        notes=[f"{len(fit.warnings)} convergence warning(s)"] if fit.warnings else [],
    )


def _check_no_test_speaker_fits(
    cfg: Config, train: Examples, test: Examples, val: Examples | None
) -> None:
    """The guard the whole design rests on: no test speaker among the fitting rows.

    Not for methods that may be speaker-dependent by design (``random``; ``folders`` when
    speakers are unknown or in both folders: ``check_speaker_independent`` checks a saved
    split that says it is speaker-independent)."""
    if not test.rows or cfg.split.method in SPEAKER_DEPENDENT_METHODS:
        return
    fitting = set(train.speakers) | (set(val.speakers) if val is not None else set())
    if shared := sorted(set(test.speakers) & fitting):
        raise EvaluationError(f"baselines would train on test speakers {', '.join(shared)}")


def evaluate_baselines(
    cfg: Config,
    train: Examples,
    test: Examples,
    labels: Sequence[str],
    run_features: PooledFeatures,
    *,
    val: Examples | None = None,
    names: Sequence[str] | None = None,
    grid: bool | None = None,
    allowed: Sequence[int] | None = None,
    num_classes: int | None = None,
    progress: bool = True,
    log: Log = print,
) -> list[ModelResult]:
    """Fit each baseline on ``train`` (and, with a grid and one training speaker,
    search on ``val``) and score it on ``test``, with a progress bar on a terminal
    (unless ``progress`` is false).

    ``labels`` name ``test.targets``; ``train.targets`` index the run's labels
    (``num_classes`` of them, default ``len(labels)``); ``allowed`` restricts the
    predictions as in ``evaluate_keras``.
    """
    from ser.baselines import features_for, fit_baseline, params_of

    ev = cfg.evaluation
    names = list(ev.baselines if names is None else names)
    grid = ev.grid if grid is None else grid
    num_classes = len(labels) if num_classes is None else num_classes
    _check_no_test_speaker_fits(cfg, train, test, val)
    results = []
    with progress_bar(len(names), "baselines", "model", enabled=progress) as bar:
        log = above_bar(bar, log)
        for name in names:
            bar.set_postfix_str(name)
            params = params_of(ev, name)
            features = features_for(name, cfg, run_features)
            # A baseline on features of its own (the seed recipe) extracts them from the
            # files, and fits on the recorded clips as its recipe did: the run's copies in
            # recording conditions have no file (and were never part of that recipe).
            fit_on = train if features is run_features else train.recorded()
            use_val = val is not None and grid and bool(val.rows)
            # One matrix call, so features still to extract (seed recipe) go in one batch.
            x_all = features.matrix(fit_on.rows + test.rows + (val.rows if use_val else []))
            x_train, x_test = (
                x_all[: len(fit_on.rows)],
                x_all[len(fit_on.rows) : len(fit_on.rows) + len(test.rows)],
            )
            x_val = x_all[len(fit_on.rows) + len(test.rows) :] if use_val else None
            y_val = val.targets if x_val is not None else None
            fit = fit_baseline(
                name,
                params,
                x_train,
                fit_on.targets,
                np.array([r.speaker for r in fit_on.rows]),
                seed=cfg.seed,
                grid=grid,
                grid_folds=ev.grid_folds,
                n_jobs=ev.n_jobs,
                x_val=x_val,
                y_val=y_val,
                log=log,
            )
            result = _score_baseline(
                fit, features.description, x_test, test, labels, num_classes, allowed
            )
            results.append(result)
            metrics = result.metrics
            log(
                f"baseline {name}: UA {metrics['ua']:.3f}  WA {metrics['wa']:.3f}  "
                f"macro-F1 {metrics['macro_f1']:.3f}  ({fit.seconds:.1f} s)"
            )
            bar.update()
    return results


def _protocol(split: Split, parts: Mapping[str, Sequence[Utterance]]) -> dict[str, Any]:
    speakers = {part: sorted({r.speaker for r in parts[part]}) for part in PARTS}
    return {
        "line": split.protocol(),
        "speaker_independent": split.speaker_independent,
        "method": split.method,
        "fold": split.fold,
        "folds": split.folds,
        "seed": split.seed,
        "train_speakers": speakers["train"],
        "val_speakers": speakers["val"],
        "test_speakers": speakers["test"],
        "val_utterances_from_train_speakers": len(split.val_paths)
        if split.speaker_independent
        else 0,
        "val_speaker_independent": split.val_speaker_independent,
    }


def ranking(results: Sequence[ModelResult]) -> list[ModelResult]:
    """Models by test UA, then WA (for the report only: nothing is selected on it)."""
    return sorted(results, key=lambda r: (-r.metrics["ua"], -r.metrics["wa"], r.name))


def build_report(
    predictor: Predictor,
    cfg: Config,
    protocol: dict[str, Any],
    labels: Sequence[str],
    test: Examples,
    results: Sequence[ModelResult],
    *,
    kind: str = "run",
    examples: dict[str, int] | None = None,
    data_note: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every number of an evaluation as one JSON-serialisable dict (``report.json``)."""
    run_dir = predictor.run_dir
    summary = runs.read_json(run_dir / runs.SUMMARY) or {}
    trained = runs.read_json(run_dir / runs.VERSIONS) or {}
    now = runs.versions()
    report = {
        "format": REPORT_FORMAT,
        "kind": kind,
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "commit": {
            "training": trained.get("git_commit", "unknown"),
            "evaluation": now.get("git_commit", "unknown"),
        },
        "versions": now,
        "protocol": protocol,
        "labels": list(labels),
        "examples": examples or {"test": len(test.rows)},
        "test_by_corpus": dict(sorted(Counter(r.corpus for r in test.rows).items())),
        "data": data_note,
        "model": {
            "type": cfg.model.label,
            "features": describe_model_input(cfg),
            "best_epoch": summary.get("best_epoch"),
            "monitor": cfg.train.monitor,
            "best_value": summary.get(f"best_{cfg.train.monitor}"),
            "refit": summary.get("refit"),
            "distilled": bool((summary.get("members") or [{}])[-1].get("student")),
            "training_seconds": summary.get("seconds"),
            "test_ua_at_training": (summary.get("test") or {}).get("ua") if kind == "run" else None,
        },
        "models": [r.to_dict() for r in results],
        "ranking": [
            {
                "rank": i + 1,
                "name": r.name,
                "kind": r.kind,
                "ua": r.metrics["ua"],
                "wa": r.metrics["wa"],
                "macro_f1": r.metrics["macro_f1"],
            }
            for i, r in enumerate(ranking(results))
        ],
        "log_dir": summary.get("log_dir") or str(Path(cfg.train.experiments_dir) / run_dir.name),
    }
    report.update(extra or {})
    return report


def _predictions_table(test: Examples, labels: Sequence[str], results: Sequence[ModelResult]):
    header = ["path", "corpus", "speaker", "emotion"] + [r.name for r in results]
    rows = [
        [row.path, row.corpus, row.speaker, labels[int(test.targets[i])]]
        + [labels[int(r.predictions[i])] for r in results]
        for i, row in enumerate(test.rows)
    ]
    return header, rows


def finish_report(
    report: dict[str, Any],
    out_dir: Path,
    test: Examples,
    results: Sequence[ModelResult],
    cfg: Config,
    *,
    write: bool,
    histories: Sequence[Path],
    tensorboard_dir: Path | None,
    log: Log,
) -> dict[str, Any]:
    """Write the report's files into ``out_dir`` (unless ``write`` is false), its scalars
    to TensorBoard, and log the ranking table and the files written (``histories``: the
    run's ``history.csv`` files, for the training curves); returns the report."""
    from ser import reports

    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        header, rows = _predictions_table(test, report["labels"], results)
        report["files"] = reports.write_report(
            report,
            out_dir,
            histories=histories,
            plots=cfg.evaluation.plots,
            predictions=(header, rows),
        )
        if cfg.evaluation.tensorboard and tensorboard_dir is not None:
            reports.write_tensorboard(report, tensorboard_dir, cfg)
            report["tensorboard"] = str(tensorboard_dir)
        (out_dir / runs.REPORT_JSON).write_text(json.dumps(report, indent=2), encoding="utf-8")
    log(reports.format_table(report))
    if write:
        for line in reports.describe_files(out_dir, report["files"]):
            log(line)
    return report


def _note_if_changed_since_training(report: dict[str, Any], keras: ModelResult, log: Log) -> None:
    """Warn (log and the model's notes) when the Keras model's test UA now differs from
    the one measured at the end of training."""
    at_training = report["model"]["test_ua_at_training"]
    ua = keras.metrics["ua"]
    if at_training is not None and abs(at_training - ua) > 1e-6:
        note = (
            f"test UA {ua:.4f} differs from the {at_training:.4f} measured at "
            "the end of training (data or features changed since?)"
        )
        log(f"warning: {note}")
        keras.notes.append(note)
        report["models"][0]["notes"] = keras.notes


def evaluate_run(
    run_dir: str | os.PathLike[str],
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
    """Evaluate a run on its own test split against the configured baselines.

    Writes ``report.md``, ``report.json``, ``predictions.csv`` and PNG plots into the
    run directory (unless ``write`` is false), evaluation scalars to TensorBoard, and
    logs the ranking table. Returns the report dict.
    """
    from ser.baselines import PooledFeatures

    started = time.perf_counter()
    predictor = Predictor.load(run_dir)
    cfg = evaluation_config(predictor.cfg, config, overrides)
    data = load_run_data(predictor, data_root=data_root, env=env, log=log)
    labels = list(predictor.labels)  # the saved label order, never re-derived
    part = {p: Examples(data.rows[p], data.targets[p]) for p in PARTS}
    results = [evaluate_keras(predictor, part["test"], data.inputs["test"], labels)]
    keras_metrics = results[0].metrics
    log(
        f"{results[0].name}: UA {keras_metrics['ua']:.3f}  WA {keras_metrics['wa']:.3f}  "
        f"macro-F1 {keras_metrics['macro_f1']:.3f}"
    )
    if baselines and cfg.evaluation.baselines:
        run_features = PooledFeatures(
            cfg.features, cfg.data.sample_rate, known=data.features, log=log
        )
        results += evaluate_baselines(
            cfg,
            part["train"],
            part["test"],
            labels,
            run_features,
            val=part["val"],
            grid=grid,
            log=log,
        )
    protocol = _protocol(data.split, data.rows)
    report = build_report(
        predictor,
        cfg,
        protocol,
        labels,
        part["test"],
        results,
        examples={p: len(data.rows[p]) for p in PARTS},
        data_note=f"{len(data.manifest.rows)} utterances of {', '.join(cfg.data.corpora)}; "
        f"{data.extraction.summary()}",
        extra={"grid": cfg.evaluation.grid if grid is None else grid},
    )
    if predictor.speaker_prior is not None or predictor.frame_sessions:
        report["served"] = served_modes(predictor, data)["ua"]
    if "served" in report:
        log(served_line(report["served"]))
    _note_if_changed_since_training(report, results[0], log)
    report["seconds"] = time.perf_counter() - started
    return finish_report(
        report,
        predictor.run_dir,
        part["test"],
        results,
        cfg,
        write=write,
        histories=runs.history_files(predictor.run_dir),
        tensorboard_dir=Path(report["log_dir"]) / "evaluation",
        log=log,
    )
