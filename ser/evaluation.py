"""Classification metrics for emotion recognition.

WA (weighted accuracy) is plain accuracy over utterances; UA (unweighted accuracy)
is the mean of per-class recalls, i.e. balanced accuracy. Both are always reported
together because corpora are imbalanced.

Evaluating a run (``evaluate_run``, ``evaluate_cross_corpus``) loads it with
``Predictor.load`` (as prediction and serving do), rebuilds its split from the saved
speaker lists and manifest, gets features through ``prepare_data`` and the feature
cache, scores the Keras model and the scikit-learn baselines (``ser.baselines``) on
the same test rows, and hands the numbers to ``ser.reports``.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ser.config import (
    DATA_ROOT_ENV,
    Config,
    ConfigError,
    DataConfig,
    _read_yaml,
    _set_path,
    parse_override,
    validate,
)
from ser.data.corpora import CorpusNotFoundError, Manifest, Utterance
from ser.data.pipeline import scope_normalise, speaker_normalise_vectors
from ser.data.splits import Split, SplitError
from ser.features.cache import extract_all
from ser.inference import Predictor, RunDirError

if TYPE_CHECKING:
    from ser.baselines import PooledFeatures
    from ser.training import PreparedData

Log = Callable[[str], None]
REPORT_FORMAT = "ser-report/1"


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """[num_classes, num_classes] counts; rows are true classes, columns predictions."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def metrics_from_confusion(cm: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """WA, UA, macro-F1 and per-class precision/recall/F1/support from a confusion matrix.

    Classes with no true examples are left out of UA and macro-F1 (their recall is
    undefined) and listed under ``absent``.
    """
    cm = np.asarray(cm, np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = support > 0
    total = support.sum()
    per_class = {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]) if present[i] else None,
            "f1": float(f1[i]) if present[i] else None,
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }
    return {
        "wa": float(tp.sum() / total) if total else float("nan"),
        "ua": float(np.mean(recall[present])) if present.any() else float("nan"),
        "macro_f1": float(np.mean(f1[present])) if present.any() else float("nan"),
        "n": int(total),
        "per_class": per_class,
        "absent": [label for i, label in enumerate(labels) if not present[i]],
        "confusion": cm.astype(np.int64).tolist(),
        "labels": list(labels),
    }


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    return metrics_from_confusion(confusion_matrix(y_true, y_pred, len(labels)), labels)


def unweighted_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Balanced accuracy (mean recall over classes present in ``y_true``)."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present])) if present.any() else 0.0


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1; 0 for one value) of fold scores."""
    array = np.asarray(values, np.float64)
    if array.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0, "values": []}
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return {"mean": float(array.mean()), "std": std, "n": int(array.size), "values": array.tolist()}


def metrics_by_group(
    y_true: np.ndarray, y_pred: np.ndarray, groups: Sequence[str], labels: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """UA, WA, macro-F1 and n of the utterances of each group (e.g. each corpus).

    A group's UA averages the classes present in that group only.
    """
    groups_array = np.asarray(groups)
    out: dict[str, dict[str, Any]] = {}
    for group in sorted(set(groups_array.tolist())):
        mask = groups_array == group
        m = classification_metrics(np.asarray(y_true)[mask], np.asarray(y_pred)[mask], labels)
        out[group] = {key: m[key] for key in ("ua", "wa", "macro_f1", "n")}
    return out


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
    source = "run.yaml"
    if config is not None:
        other = _read_yaml(Path(config))
        tree["evaluation"] = other.get("evaluation", {})
        source = f"{config} (evaluation section)"
    for text in overrides:
        key, value = parse_override(text)
        if not key.startswith("evaluation."):
            raise ConfigError(
                f"--set {text}: a trained run's data, split, features and model are fixed; "
                "only evaluation.* keys can be changed when evaluating a run"
            )
        _set_path(tree, key, value, f"--set {text}")
    return validate(tree, source)


def _old_corpus_folder(path: str, root: str, folder: str) -> str | None:
    """The corpus folder a saved (absolute) manifest path was found under.

    Paths are saved as ``<absolute data.root>/<folder>/...``; ``data.root`` itself
    may have been relative to the training directory, so it is searched for.
    """
    marker = str(Path(root) / folder)
    i = path.find(marker + os.sep)
    if i >= 0:
        return path[: i + len(marker)]
    j = path.rfind(os.sep + str(Path(folder)) + os.sep)
    return path[: j + 1 + len(str(Path(folder)))] if j >= 0 else None


def locate_corpus(
    manifest: Manifest,
    split: Split,
    data: DataConfig,
    *,
    data_root: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[Manifest, Split, str]:
    """The run's manifest and split with paths pointing at files that exist.

    As saved, if every file is still there and no ``data_root`` is given. Otherwise
    every path is moved from its saved corpus folder to the same place under
    ``data_root`` (or ``$SER_DATA_ROOT`` when no root is given). Raises
    ``CorpusNotFoundError`` naming the missing root and what to pass.
    Returns ``(manifest, split, where)`` with ``where`` a line for the log.
    """
    env = os.environ if env is None else env
    rows = manifest.rows
    how = "--data-root"
    if data_root is None:
        missing = [r.path for r in rows if not os.path.isfile(r.path)]
        if not missing:
            return manifest, split, f"corpus files where training read them (data.root {data.root})"
        if env.get(DATA_ROOT_ENV) and Path(env[DATA_ROOT_ENV]).is_dir():
            data_root, how = env[DATA_ROOT_ENV], DATA_ROOT_ENV
        else:
            first = missing[0]
            corpus = next(r.corpus for r in rows if r.path == first)
            folder = _old_corpus_folder(first, data.root, getattr(data, corpus).folder)
            old_root = os.path.normpath(os.path.dirname(folder)) if folder else data.root
            state = (
                "does not exist"
                if not Path(old_root).is_dir()
                else f"exists but {len(missing)} of {len(rows)} files are missing, e.g. {first}"
            )
            raise CorpusNotFoundError(
                f"the corpus files this run was trained on are missing: data root {old_root} "
                f"(data.root {data.root!r} in run.yaml) {state}. If the corpora moved, pass "
                f"--data-root NEW_ROOT (the folder holding "
                f"{', '.join(getattr(data, c).folder + '/' for c in data.corpora)}) "
                f"or set {DATA_ROOT_ENV}"
            )
    root = Path(data_root).absolute()
    if not root.is_dir():
        raise CorpusNotFoundError(f"data root {root} ({how}) does not exist")
    moved: dict[str, str] = {}
    for r in rows:
        folder_name = getattr(data, r.corpus).folder
        old = _old_corpus_folder(r.path, data.root, folder_name)
        if old is None:
            raise CorpusNotFoundError(
                f"cannot tell where {r.path} sits under its corpus folder {folder_name!r}"
            )
        moved[r.path] = str(root / folder_name / r.path[len(old) + 1 :])
    missing = [p for p in moved.values() if not os.path.isfile(p)]
    if missing:
        raise CorpusNotFoundError(
            f"{len(missing)} of {len(rows)} files of this run are not under the data root "
            f"{root} ({how}), e.g. {missing[0]}; it must hold "
            f"{', '.join(getattr(data, c).folder + '/' for c in data.corpora)} as in training"
        )
    new_manifest = Manifest(
        [replace(r, path=moved[r.path]) for r in rows], manifest.skipped, manifest.dropped
    )
    new_split = replace(
        split,
        val_paths=tuple(sorted(moved.get(p, p) for p in split.val_paths)),
        test_paths=tuple(sorted(moved.get(p, p) for p in split.test_paths)),
    )
    return new_manifest, new_split, f"corpus files under {root} ({how}), moved since training"


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
    from ser.training import prepare_data

    run_dir = predictor.run_dir
    for name in ("split.json", "manifest.jsonl"):
        if not (run_dir / name).is_file():
            raise RunDirError(
                f"{run_dir}: missing {name}; evaluation needs the files training saves"
            )
    try:
        manifest = Manifest.load(run_dir / "manifest.jsonl")
        split = Split.from_dict(json.loads((run_dir / "split.json").read_text(encoding="utf-8")))
    except (ValueError, TypeError, KeyError) as exc:
        raise EvaluationError(
            f"{run_dir}: unreadable split.json or manifest.jsonl: {exc}"
        ) from None
    manifest, split, where = locate_corpus(
        manifest, split, predictor.cfg.data, data_root=data_root, env=env
    )
    log(f"data: {where}")
    try:
        data = prepare_data(
            predictor.cfg, split=split, labels=list(predictor.labels), manifest=manifest,
            log=log, keep_features=True,
        )  # fmt: skip
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
        name=cfg.model.type,
        kind="keras",
        title=f"{cfg.model.type} (this run, {predictor.model.count_params():,} parameters)",
        features=describe_model_input(cfg),
        metrics=metrics,
        per_corpus=metrics_by_group(test.targets, pred, [r.corpus for r in test.rows], labels),
        predictions=pred,
        predict_seconds=seconds,
        params=cfg.model.params.model_dump(mode="json"),
    )


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
    log: Log = print,
) -> list[ModelResult]:
    """Fit each baseline on ``train`` (and, with a grid and one training speaker,
    search on ``val``) and score it on ``test``.

    ``labels`` name ``test.targets``; ``train.targets`` index the run's labels
    (``num_classes`` of them, default ``len(labels)``); ``allowed`` restricts the
    predictions as in ``evaluate_keras``.
    """
    from ser.baselines import TITLES, features_for, fit_baseline, params_of, predict

    ev = cfg.evaluation
    names = list(ev.baselines if names is None else names)
    grid = ev.grid if grid is None else grid
    num_classes = len(labels) if num_classes is None else num_classes
    groups = np.array([r.speaker for r in train.rows])
    # The guard the whole design rests on: no test speaker among the fitting rows.
    if test.rows and cfg.split.method != "random":
        test_speakers = set(test.speakers)
        fitting = set(groups) | (set(val.speakers) if val is not None else set())
        if shared := sorted(test_speakers & fitting):
            raise EvaluationError(f"baselines would train on test speakers {', '.join(shared)}")
    results = []
    for name in names:
        params = params_of(ev, name)
        features = features_for(name, cfg, run_features)
        use_val = val is not None and grid and bool(val.rows)
        # One matrix call, so features still to extract (seed recipe) go in one batch.
        x_all = features.matrix(train.rows + test.rows + (val.rows if use_val else []))
        x_train, x_test = (
            x_all[: len(train.rows)],
            x_all[len(train.rows) : len(train.rows) + len(test.rows)],
        )
        x_val = x_all[len(train.rows) + len(test.rows) :] if use_val else None
        fit = fit_baseline(
            name, params, x_train, train.targets, groups, seed=cfg.seed, grid=grid,
            grid_folds=ev.grid_folds, n_jobs=ev.n_jobs, x_val=x_val,
            y_val=val.targets if x_val is not None else None, log=log,
        )  # fmt: skip
        started = time.perf_counter()
        pred = predict(fit.estimator, x_test, num_classes, allowed)
        seconds = time.perf_counter() - started
        metrics = classification_metrics(test.targets, pred, labels)
        results.append(
            ModelResult(
                name=name,
                kind="baseline",
                title=TITLES[name],
                features=features.description,
                metrics=metrics,
                per_corpus=metrics_by_group(
                    test.targets, pred, [r.corpus for r in test.rows], labels
                ),
                predictions=pred,
                fit_seconds=fit.seconds,
                predict_seconds=seconds,
                params=fit.params,
                grid=fit.grid,
                notes=[f"{len(fit.warnings)} convergence warning(s)"] if fit.warnings else [],
            )
        )
        log(
            f"baseline {name}: UA {metrics['ua']:.3f}  WA {metrics['wa']:.3f}  "
            f"macro-F1 {metrics['macro_f1']:.3f}  ({fit.seconds:.1f} s)"
        )
    return results


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _protocol(split: Split, parts: Mapping[str, Sequence[Utterance]]) -> dict[str, Any]:
    speakers = {part: sorted({r.speaker for r in parts[part]}) for part in ("train", "val", "test")}
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
    from ser.training import versions

    run_dir = predictor.run_dir
    summary = _read_json(run_dir / "summary.json") or {}
    trained = _read_json(run_dir / "versions.json") or {}
    now = versions()
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
            "type": cfg.model.type,
            "features": describe_model_input(cfg),
            "best_epoch": summary.get("best_epoch"),
            "monitor": cfg.train.monitor,
            "best_value": summary.get(f"best_{cfg.train.monitor}"),
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


def _finish(
    report: dict[str, Any],
    out_dir: Path,
    test: Examples,
    results: Sequence[ModelResult],
    cfg: Config,
    *,
    write: bool,
    history: Path | None,
    tensorboard_dir: Path | None,
    log: Log,
) -> dict[str, Any]:
    from ser import reports

    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        header, rows = _predictions_table(test, report["labels"], results)
        report["files"] = reports.write_report(
            report, out_dir, history=history, plots=cfg.evaluation.plots,
            predictions=(header, rows),
        )  # fmt: skip
        if cfg.evaluation.tensorboard and tensorboard_dir is not None:
            reports.write_tensorboard(report, tensorboard_dir, cfg)
            report["tensorboard"] = str(tensorboard_dir)
        (out_dir / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    log(reports.format_table(report))
    if write:
        log(f"report: {out_dir / 'report.md'} (and report.json, PNG plots)")
    return report


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
    part = {p: Examples(data.rows[p], data.targets[p]) for p in ("train", "val", "test")}
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
            cfg, part["train"], part["test"], labels, run_features, val=part["val"], grid=grid,
            log=log,
        )  # fmt: skip
    protocol = _protocol(data.split, data.rows)
    report = build_report(
        predictor, cfg, protocol, labels, part["test"], results,
        examples={p: len(data.rows[p]) for p in ("train", "val", "test")},
        data_note=f"{len(data.manifest.rows)} utterances of {', '.join(cfg.data.corpora)}; "
        f"{data.extraction.summary()}",
        extra={"grid": cfg.evaluation.grid if grid is None else grid},
    )  # fmt: skip
    at_training = report["model"]["test_ua_at_training"]
    if at_training is not None and abs(at_training - keras_metrics["ua"]) > 1e-6:
        note = (
            f"test UA {keras_metrics['ua']:.4f} differs from the {at_training:.4f} measured at "
            "the end of training (data or features changed since?)"
        )
        log(f"warning: {note}")
        results[0].notes.append(note)
        report["models"][0]["notes"] = results[0].notes
    report["seconds"] = time.perf_counter() - started
    return _finish(
        report, predictor.run_dir, part["test"], results, cfg, write=write,
        history=predictor.run_dir / "history.csv",
        tensorboard_dir=Path(report["log_dir"]) / "evaluation", log=log,
    )  # fmt: skip


def _root_for_new_corpus(
    data: DataConfig, corpus: str, data_root: str | os.PathLike[str] | None, env: Mapping[str, str]
) -> Path:
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
    from ser.baselines import PooledFeatures
    from ser.data.corpora import CORPORA, build_manifest

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
    target = cfg.data.model_copy(update={"root": str(root), "corpora": [corpus]})
    manifest = build_manifest(target, log=log)

    def nothing_usable(failed: int = 0) -> EvaluationError:
        return EvaluationError(
            f"{corpus}: no usable clips under {root} ({len(manifest.skipped)} files skipped, "
            f"{failed} failed feature extraction; each is named above)"
        )

    if not manifest.rows:
        raise nothing_usable()
    present = {r.emotion for r in manifest.rows}
    labels = list(predictor.labels)
    shared = [label for label in labels if label in present]
    if len(shared) < 2:
        raise EvaluationError(
            f"{corpus} shares {len(shared)} emotion(s) with the run ({', '.join(shared) or 'none'}); "
            "need at least two"
        )
    dropped = dict(
        sorted(Counter(r.emotion for r in manifest.rows if r.emotion not in shared).items())
    )
    # Every clip of the corpus, as training saw its corpora: a speaker-scope
    # normalisation (features.normalisation) pools all of a speaker's clips.
    features, extraction = extract_all(
        [r.path for r in manifest.rows], cfg.features, cfg.data.sample_rate,
        workers=cfg.features.workers, cache_dir=cfg.features.cache_dir, log=log,
    )  # fmt: skip
    log(extraction.summary())
    features = scope_normalise(features, manifest.rows, cfg.features.normalisation)
    rows = [r for r in manifest.rows if r.emotion in shared and r.path in features]
    if not rows:
        raise nothing_usable(len(extraction.failed))
    index = {label: i for i, label in enumerate(shared)}
    test = Examples(rows, np.array([index[r.emotion] for r in rows], np.int32))
    allowed = [labels.index(label) for label in shared]
    inputs = [predictor.model_input(features[r.path]) for r in rows]
    if cfg.features.pooled_normalisation == "speaker":
        inputs = speaker_normalise_vectors(inputs, [r.speaker for r in rows])
    results = [evaluate_keras(predictor, test, inputs, shared, allowed=allowed)]
    examples = {"test": len(rows)}
    if baselines and cfg.evaluation.baselines:
        source = load_run_data(predictor, data_root=data_root, env=env, log=log)
        run_features = PooledFeatures(
            cfg.features, cfg.data.sample_rate, known={**source.features, **features}, log=log
        )
        results += evaluate_baselines(
            cfg, Examples(source.rows["train"], source.targets["train"]), test, shared,
            run_features, val=Examples(source.rows["val"], source.targets["val"]), grid=grid,
            allowed=allowed, num_classes=len(labels), log=log,
        )  # fmt: skip
        examples = {"train": len(source.rows["train"]), "test": len(rows)}
    trained_split = Split.from_dict(_read_json(predictor.run_dir / "split.json") or {})
    protocol = {
        "line": (
            f"cross-corpus: trained on {', '.join(cfg.data.corpora)} "
            f"({len(trained_split.train_speakers)} training speakers), tested on all "
            f"{len(test.speakers)} speakers of {corpus}, a corpus the run never saw; "
            f"{len(shared)} shared emotions ({', '.join(shared)})"
            + (f"; dropped {', '.join(f'{k} {v}' for k, v in dropped.items())}" if dropped else "")
        ),
        "speaker_independent": True,
        "method": "cross-corpus",
        "train_speakers": list(trained_split.train_speakers),
        "val_speakers": list(trained_split.val_speakers),
        "test_speakers": test.speakers,
        "trained_on": list(cfg.data.corpora),
        "tested_on": corpus,
        "shared_emotions": shared,
        "dropped_emotions": dropped,
    }
    report = build_report(
        predictor, cfg, protocol, shared, test, results, kind="cross-corpus",
        examples=examples, data_note=f"{corpus} under {root}; {extraction.summary()}",
        extra={"grid": cfg.evaluation.grid if grid is None else grid},
    )  # fmt: skip
    report["seconds"] = time.perf_counter() - started
    out_dir = predictor.run_dir / "cross_corpus" / corpus
    return _finish(
        report, out_dir, test, results, cfg, write=write, history=None,
        tensorboard_dir=Path(report["log_dir"]) / f"evaluation-cross-{corpus}", log=log,
    )  # fmt: skip
