"""Training: data preparation, compile, callbacks, fit, and the run directory.

A run directory ``checkpoints/<run>/`` holds everything needed to use the model
later: ``model.keras`` (best validation epoch) and the same model unzipped
(``config.json``, ``metadata.json``, ``model.weights.h5``) so that
``keras.models.load_model("checkpoints/<run>")`` works on the directory itself,
``run.yaml`` (resolved config), ``labels.json``, ``normaliser.json``,
``split.json`` (speaker lists), ``manifest.jsonl``, ``versions.json`` (libraries
and git commit), ``history.csv`` and ``summary.json``. TensorBoard logs go to
``experiments/<run>/``. ``checkpoints/best`` is a symlink to the newest finished run.
A seed ensemble (``model.ensemble`` > 1) trains each member in ``members/<k>/`` (its
own best model, history, progress and backups); ``model.keras`` averages them.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ser.config import EMOTIONS, Config, load_config, save_config
from ser.data.corpora import Manifest, Utterance, build_manifest
from ser.data.pipeline import (
    SPEAKER_PRIOR,
    Normaliser,
    make_dataset,
    max_frames_for,
    scope_normalise,
    speaker_normalise_vectors,
    speaker_prior,
    to_model_input,
)
from ser.data.splits import Split, make_split
from ser.evaluation import classification_metrics, confusion_matrix, unweighted_accuracy
from ser.features.cache import ExtractionReport, extract_all

Log = Callable[[str], None]
PARTS = ("train", "val", "test")


# ------------------------------------------------------------------ data stage
@dataclass
class PreparedData:
    """Everything between the config and the tf.data datasets of one split."""

    manifest: Manifest
    split: Split
    labels: list[str]
    rows: dict[str, list[Utterance]]
    inputs: dict[str, list[np.ndarray]]
    targets: dict[str, np.ndarray]
    extraction: ExtractionReport
    failed: list[tuple[str, str]] = field(default_factory=list)
    # Frame-level features [frames, dims] by path (evaluation pools them for baselines).
    features: dict[str, np.ndarray] = field(default_factory=dict)
    # features.pooled_normalisation speaker: the average training speaker's statistics
    # of the raw pooled vectors, for clips whose speaker is unknown (inference).
    speaker_prior: Normaliser | None = None

    @property
    def input_dim(self) -> int:
        return int(self.inputs["train"][0].shape[-1])


def label_list(rows: list[Utterance], emotions: list[str]) -> list[str]:
    """Labels in canonical order: configured emotions that occur in the data."""
    present = {r.emotion for r in rows}
    return [e for e in EMOTIONS if e in emotions and e in present]


def prepare_data(
    cfg: Config,
    split: Split | None = None,
    labels: list[str] | None = None,
    manifest: Manifest | None = None,
    log: Log = print,
    keep_features: bool = False,
) -> PreparedData:
    """Manifest -> split -> cached features -> model inputs and integer targets per part.

    With ``keep_features`` the frame-level features stay in ``PreparedData.features``.
    """
    manifest = manifest or build_manifest(cfg.data, log=log)
    if not manifest.rows:
        raise RuntimeError(
            f"no usable utterances under {cfg.data.root} for corpora {cfg.data.corpora} "
            f"and emotions {cfg.data.emotions}"
        )
    split = split or make_split(manifest.rows, cfg.split, cfg.seed)
    log(f"split: {split.protocol()}")
    features, report = extract_all(
        [r.path for r in manifest.rows],
        cfg.features,
        cfg.data.sample_rate,
        workers=cfg.features.workers,
        cache_dir=cfg.features.cache_dir,
        log=log,
    )
    log(report.summary())
    features = scope_normalise(features, manifest.rows, cfg.features.normalisation)
    labels = labels or label_list(manifest.rows, list(cfg.data.emotions))
    index = {label: i for i, label in enumerate(labels)}
    max_frames = max_frames_for(
        cfg.data.max_seconds, cfg.data.sample_rate, cfg.features.frame.hop_length
    )
    parts = split.partition(manifest.rows)
    rows, inputs, targets = {}, {}, {}
    for part in PARTS:
        kept = [r for r in parts[part] if r.path in features and r.emotion in index]
        rows[part] = kept
        inputs[part] = [
            to_model_input(features[r.path], cfg.features.mode, cfg.features.pooling, max_frames)
            for r in kept
        ]
        targets[part] = np.array([index[r.emotion] for r in kept], np.int32)
    for part in PARTS:
        if rows[part]:
            continue
        if report.failed and not features:
            raise RuntimeError(
                f"no usable clips: all {len(report.failed)} failed feature extraction "
                f"(first: {report.failed[0][0]}: {report.failed[0][1]})"
            )
        failed = f" ({len(report.failed)} clips failed feature extraction)" if report.failed else ""
        raise RuntimeError(
            f"the {part} split is empty{failed}; check data.corpora and split settings"
        )
    prior = None
    if cfg.features.pooled_normalisation == "speaker":
        prior = speaker_prior(inputs["train"], [r.speaker for r in rows["train"]])
        every = [r for part in PARTS for r in rows[part]]
        normalised = iter(
            speaker_normalise_vectors([x for p in PARTS for x in inputs[p]], [r.speaker for r in every])
        )
        inputs = {p: [next(normalised) for _ in rows[p]] for p in PARTS}
    log(
        "examples: "
        + ", ".join(f"{p} {len(rows[p])} ({len({r.speaker for r in rows[p]})} speakers)" for p in PARTS)
        + f"; classes: {', '.join(labels)}"
    )
    return PreparedData(
        manifest, split, labels, rows, inputs, targets, report, report.failed,
        features if keep_features else {}, prior,
    )


# ------------------------------------------------------------------- callbacks
def _confusion_image(cm: np.ndarray, cell: int = 24) -> np.ndarray:
    """Row-normalised confusion matrix as an RGB image [H, W, 3] uint8 (viridis)."""
    from matplotlib import colormaps

    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    rgb = colormaps["viridis"](norm)[..., :3]
    return (np.kron(rgb, np.ones((cell, cell, 1))) * 255).astype(np.uint8)


def _improves(value: float | None, best: float | None, monitor: str) -> bool:
    return value is not None and (
        best is None or (value < best if monitor == "val_loss" else value > best)
    )


def _make_epoch_callback(
    val_ds: Any,
    val_targets: np.ndarray,
    labels: list[str],
    run_dir: Path,
    log_dir: Path | None,
    monitor: str,
    total_epochs: int,
    log: Log,
):
    import keras
    import tensorflow as tf

    class EpochReport(keras.callbacks.Callback):
        """Adds ``val_ua`` (balanced accuracy on the validation split) to the epoch logs,
        writes it and a confusion-matrix image to TensorBoard, keeps the best model in
        ``model.keras``, records progress for ``--resume`` and prints one line per epoch.
        Must run before callbacks that monitor ``val_ua``.

        The epoch backup (``BackupAndRestore``, saved last at each epoch end) is the
        commit point. A run killed mid-epoch-end may have written history, progress or
        a better model for an epoch the backup does not have, and that epoch is trained
        again on resume: so the best model is written as a candidate
        ``.best-epochNNNN.keras`` and becomes ``model.keras`` (a rename) only once its
        epoch is backed up, and on resume everything about later epochs is dropped.
        """

        def __init__(self) -> None:
            super().__init__()
            self.writer = tf.summary.create_file_writer(str(log_dir)) if log_dir else None
            self.started = time.time()
            self.progress = run_dir / "progress.json"
            state = json.loads(self.progress.read_text()) if self.progress.exists() else {}
            self.values: list[float | None] = state.get("values", [])
            self.best = state.get("best")
            self.best_epoch = state.get("best_epoch")
            self.settled = False

        def _settle(self, committed: int) -> None:
            """Forget the epochs after the ``committed`` (backed-up) ones and keep the
            candidate model of the newest committed epoch that has one."""
            for path in sorted(run_dir.glob(".best-epoch*.keras")):
                if int(path.stem.removeprefix(".best-epoch")) <= committed:
                    os.replace(path, run_dir / "model.keras")
                else:
                    path.unlink()
            if self.settled:
                return
            self.settled = True
            history = run_dir / "history.csv"
            if history.exists():  # rows of epochs being trained again (epoch is 0-based)
                lines = history.read_text().splitlines(keepends=True)
                kept = lines[:1] + [
                    line for line in lines[1:]
                    if (head := line.split(",", 1)[0]).isdigit() and int(head) < committed
                ]  # fmt: skip
                if kept != lines:  # in place: CSVLogger holds it open for appending
                    with open(history, "r+") as f:
                        f.write("".join(kept))
                        f.truncate()
            if len(self.values) > committed:
                self.values = self.values[:committed]
                self.best = self.best_epoch = None
                for epoch, value in enumerate(self.values, start=1):
                    if _improves(value, self.best, monitor):
                        self.best, self.best_epoch = value, epoch

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._settle(epoch)  # every epoch before this one is backed up
            self.started = time.time()

        def on_train_end(self, logs: dict | None = None) -> None:
            self._settle(total_epochs)

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs if logs is not None else {}
            probs = self.model.predict(val_ds, verbose=0)
            pred = probs.argmax(axis=1)
            ua = unweighted_accuracy(val_targets, pred, len(labels))
            logs["val_ua"] = ua
            if self.writer is not None:
                with self.writer.as_default(step=epoch):
                    tf.summary.scalar("epoch_val_ua", ua)
                    cm = confusion_matrix(val_targets, pred, len(labels))
                    tf.summary.image("validation_confusion", _confusion_image(cm)[None])
                self.writer.flush()
            value = logs.get(monitor)
            value = None if value is None else float(value)
            better = _improves(value, self.best, monitor)
            if better:
                self.best, self.best_epoch = value, epoch + 1
            self.values.append(value)
            _write_json(self.progress, {
                "epoch": epoch + 1, "best": self.best, "best_epoch": self.best_epoch,
                "values": self.values,
            })  # fmt: skip
            if better:
                self.model.save(run_dir / f".best-epoch{epoch + 1:04d}.keras")
            lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            log(
                f"epoch {epoch + 1:3d}/{total_epochs}  loss {logs.get('loss', float('nan')):.4f}"
                f"  acc {logs.get('accuracy', float('nan')):.3f}"
                f"  val_loss {logs.get('val_loss', float('nan')):.4f}"
                f"  val_acc {logs.get('val_accuracy', float('nan')):.3f}  val_ua {ua:.3f}"
                f"  lr {lr:.2g}  {time.time() - self.started:.1f}s" + ("  *" if better else "")
            )

    return EpochReport()


# ------------------------------------------------------------------ run folder
def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("tensorflow", "tensorflow-cpu", "keras", "librosa", "soundfile", "numpy", "scikit-learn"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        out["git_commit"] = sha.stdout.strip() if sha.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = "unknown"
    return out


def new_run_name(cfg: Config) -> str:
    return cfg.train.run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def point_best(checkpoints_dir: Path, run_dir: Path) -> Path:
    """Atomically make ``checkpoints_dir/best`` a relative symlink to ``run_dir``."""
    link = checkpoints_dir / "best"
    tmp = checkpoints_dir / f".best.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.relpath(run_dir, checkpoints_dir), tmp)
    os.replace(tmp, link)
    return link


def make_strategy(kind: str):
    import tensorflow as tf

    if kind == "none":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy(devices=[d.name for d in devices])
    return tf.distribute.MultiWorkerMirroredStrategy()


def class_weights(targets: np.ndarray, num_classes: int) -> dict[int, float]:
    """Inverse-frequency weights ``n / (k * count)``; absent classes get 1."""
    counts = np.bincount(targets, minlength=num_classes)
    present = counts > 0
    k = int(present.sum())
    return {i: (len(targets) / (k * counts[i]) if counts[i] else 1.0) for i in range(num_classes)}


def _write_json(path: Path, obj: Any) -> None:
    """Written to a temporary file and renamed: a killed run leaves the old or the new."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------- train
def _fit_member(
    cfg: Config,
    data: PreparedData,
    normaliser: Normaliser,
    val_x: Any,
    run_dir: Path,
    log_dir: Path,
    seed: int,
    *,
    resume: bool,
    log: Log,
) -> dict[str, Any]:
    """Build, compile and fit one model into ``run_dir`` (its best validation epoch as
    ``model.keras``, history, progress and epoch backups); returns its best epoch,
    best monitored value, seed and fit seconds."""
    import keras

    from ser.models import build_model

    keras.utils.set_random_seed(seed)
    batch = cfg.train.batch_size
    classes = len(data.labels)
    # Label smoothing and mixup need probability targets; plain training keeps indices.
    one_hot = classes if cfg.train.label_smoothing > 0 or cfg.augment.mixup > 0 else None
    train_ds = make_dataset(
        data.inputs["train"], data.targets["train"], normaliser=normaliser, batch_size=batch,
        training=True, seed=seed, augment=cfg.augment, one_hot=one_hot,
    )  # fmt: skip
    val_ds = make_dataset(
        data.inputs["val"], data.targets["val"], normaliser=normaliser, batch_size=batch,
        training=False, seed=seed, one_hot=one_hot,
    )  # fmt: skip

    strategy = make_strategy(cfg.train.distribute)
    with strategy.scope():
        model = build_model(cfg.model, data.input_dim, classes)
        optimizer = {
            "adam": lambda: keras.optimizers.Adam(cfg.train.learning_rate),
            "adamw": lambda: keras.optimizers.AdamW(
                cfg.train.learning_rate, weight_decay=cfg.train.weight_decay
            ),
            "sgd": lambda: keras.optimizers.SGD(cfg.train.learning_rate, momentum=0.9),
        }[cfg.train.optimizer]()
        loss = (
            keras.losses.CategoricalCrossentropy(label_smoothing=cfg.train.label_smoothing)
            if one_hot
            else "sparse_categorical_crossentropy"
        )
        model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    log(f"model: {model.name}, {model.count_params():,} parameters, input dim {data.input_dim}")

    monitor = cfg.train.monitor
    mode = "min" if monitor == "val_loss" else "max"
    report = _make_epoch_callback(
        val_x, data.targets["val"], data.labels, run_dir,
        log_dir / "validation" if cfg.train.confusion_images else None,
        monitor, cfg.train.epochs, log,
    )
    callbacks: list[Any] = [
        report,
        keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=resume),
        # Last, so an epoch is backed up after everything else it wrote; the previous
        # backup is kept in case this one is torn by a kill.
        keras.callbacks.BackupAndRestore(str(run_dir / "backup"), double_checkpoint=True),
    ]
    if cfg.train.early_stopping.enabled:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor, mode=mode, patience=cfg.train.early_stopping.patience
            )
        )
    if cfg.train.reduce_lr.enabled:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor, mode=mode, patience=cfg.train.reduce_lr.patience,
                factor=cfg.train.reduce_lr.factor, min_lr=cfg.train.reduce_lr.min_lr,
            )
        )
    weights = class_weights(data.targets["train"], classes) if cfg.train.class_weights else None
    started = time.time()
    model.fit(
        train_ds, validation_data=val_ds, epochs=cfg.train.epochs, class_weight=weights,
        callbacks=callbacks, verbose=cfg.train.verbose, shuffle=False,  # tf.data shuffles
    )
    return {
        "seed": seed, "best_epoch": report.best_epoch, "best": report.best,
        "fit_seconds": time.time() - started,
    }  # fmt: skip


def _average_members(paths: list[Path]):
    """One Keras model whose output ``emotion`` is the mean of the members' probabilities."""
    import keras

    members = [keras.models.load_model(p) for p in paths]
    inputs = keras.Input(shape=members[0].input_shape[1:], name="features")
    outputs = [
        keras.Model(m.input, m.output, name=f"member{k}")(inputs) for k, m in enumerate(members)
    ]
    emotion = keras.layers.Average(name="emotion", dtype="float32")(outputs)
    return keras.Model(inputs, emotion, name=f"ensemble_of_{len(members)}")


def train(
    cfg: Config, *, resume: str | Path | None = None, split: Split | None = None, log: Log = print
) -> dict[str, Any]:
    """Train one model; returns the run summary (also written to ``summary.json``).

    ``split`` (e.g. a cross-validation fold with extra training corpora) replaces the
    split ``cfg.split`` would make; it is saved to ``split.json`` like any other.
    """
    import keras

    started = time.time()
    checkpoints = Path(cfg.train.checkpoints_dir)
    saved_split = None
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "run.yaml").is_file():
            raise FileNotFoundError(f"{run_dir}: not a run directory (no run.yaml) to resume")
        cfg = load_config(run_dir / "run.yaml", env={})
        saved_split = Split.from_dict(json.loads((run_dir / "split.json").read_text()))
        checkpoints = run_dir.parent
        log(f"resuming {run_dir}")
    else:
        run_dir = checkpoints / new_run_name(cfg)
        if run_dir.exists():
            raise FileExistsError(f"{run_dir} exists; choose another train.run_name or use --resume")
    run_name = run_dir.name
    log_dir = Path(cfg.train.experiments_dir) / run_name
    keras.utils.set_random_seed(cfg.seed)

    data = prepare_data(cfg, split=saved_split or split, log=log)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "run.yaml")
    _write_json(run_dir / "split.json", data.split.to_dict())
    _write_json(run_dir / "labels.json", data.labels)
    _write_json(run_dir / "versions.json", versions())
    data.manifest.save(run_dir / "manifest.jsonl")
    normaliser = Normaliser.fit(data.inputs["train"])
    normaliser.save(run_dir / "normaliser.json")
    if data.speaker_prior is not None:
        data.speaker_prior.save(run_dir / SPEAKER_PRIOR)

    batch = cfg.train.batch_size
    val_x = make_dataset(
        data.inputs["val"], None, normaliser=normaliser, batch_size=batch, training=False,
        seed=cfg.seed,
    )
    members = cfg.model.ensemble
    fits = []
    fit_started = time.time()
    for k in range(members):
        member_dir = run_dir if members == 1 else run_dir / "members" / str(k)
        member_log = log_dir if members == 1 else log_dir / f"member{k}"
        done = member_dir / "member.json"
        if members > 1 and done.is_file():  # finished before a resume
            fits.append(json.loads(done.read_text()))
            log(f"member {k + 1}/{members}: done before (best epoch {fits[-1]['best_epoch']})")
            continue
        if members > 1:
            member_dir.mkdir(parents=True, exist_ok=True)
            log(f"member {k + 1}/{members} (seed {cfg.seed + k})")
        fit = _fit_member(
            cfg, data, normaliser, val_x, member_dir, member_log, cfg.seed + k,
            resume=resume is not None, log=log,
        )  # fmt: skip
        if members > 1:
            _write_json(done, fit)
        fits.append(fit)
    fit_seconds = time.time() - fit_started
    monitor = cfg.train.monitor
    best_epoch: int | list[int] = fits[0]["best_epoch"]
    best_value = fits[0]["best"]
    if members == 1:
        best = keras.models.load_model(run_dir / "model.keras")
    else:
        best = _average_members(
            [run_dir / "members" / str(k) / "model.keras" for k in range(members)]
        )
        best.save(run_dir / "model.keras")
        pred = best.predict(val_x, verbose=0).argmax(axis=1)
        val_ua = unweighted_accuracy(data.targets["val"], pred, len(data.labels))
        best_epoch = [f["best_epoch"] for f in fits]
        # The ensemble's own validation UA; for another monitor, the members' mean.
        best_value = val_ua if monitor == "val_ua" else float(np.mean([f["best"] for f in fits]))
        log(
            f"ensemble of {members}: validation UA {val_ua:.3f} (members "
            + ", ".join(f"{f['best']:.3f}" for f in fits) + f" {monitor})"
        )
    # Keras cannot save into a folder that already has its "assets" (a resumed run that
    # had finished once): that folder is rewritten anyway.
    shutil.rmtree(run_dir / "assets", ignore_errors=True)
    best.save(run_dir, zipped=False)  # the run directory itself loads with load_model
    test_x = make_dataset(
        data.inputs["test"], None, normaliser=normaliser, batch_size=batch, training=False,
        seed=cfg.seed,
    )
    pred = best.predict(test_x, verbose=0).argmax(axis=1)
    test = classification_metrics(data.targets["test"], pred, data.labels)
    corpora = [r.corpus for r in data.rows["test"]]
    per_corpus = {}
    for corpus in sorted(set(corpora)):
        mask = np.array([c == corpus for c in corpora])
        m = classification_metrics(data.targets["test"][mask], pred[mask], data.labels)
        per_corpus[corpus] = {"ua": m["ua"], "wa": m["wa"], "macro_f1": m["macro_f1"], "n": m["n"]}
    test["per_corpus"] = per_corpus
    summary = {
        "run": run_name,
        "run_dir": str(run_dir),
        "log_dir": str(log_dir),
        "protocol": data.split.protocol(),
        "speaker_independent": data.split.speaker_independent,
        "model": cfg.model.type,
        "parameters": int(best.count_params()),
        "labels": data.labels,
        "examples": {p: len(data.rows[p]) for p in PARTS},
        "best_epoch": best_epoch,
        "best_" + monitor: best_value,
        "members": fits if members > 1 else None,
        "test": test,
        "files": {
            "manifest_rows": len(data.manifest.rows),
            "skipped_unreadable": len(data.manifest.skipped),
            "failed_extraction": len(data.failed),
            "cache_hits": data.extraction.hits,
            "extracted": data.extraction.extracted,
        },
        "seconds": {"total": time.time() - started, "fit": fit_seconds},
    }
    _write_json(run_dir / "summary.json", summary)
    link = point_best(checkpoints, run_dir)
    kind = "speaker-independent" if data.split.speaker_independent else "SPEAKER-DEPENDENT"
    log(
        f"test ({kind}, {len(data.rows['test'])} utterances, "
        f"{len({r.speaker for r in data.rows['test']})} unseen speakers): "
        f"UA {test['ua']:.3f}  WA {test['wa']:.3f}  macro-F1 {test['macro_f1']:.3f}"
        if data.split.speaker_independent
        else f"test ({kind}): UA {test['ua']:.3f}  WA {test['wa']:.3f}  macro-F1 {test['macro_f1']:.3f}"
    )
    if len(per_corpus) > 1:
        log("  per corpus: " + "; ".join(
            f"{c} UA {m['ua']:.3f} WA {m['wa']:.3f} (n={m['n']})" for c, m in per_corpus.items()
        ))
    skipped = len(data.manifest.skipped) + len(data.failed)
    log(
        f"best epoch {best_epoch} ({monitor} {best_value:.4f}); "
        f"{skipped} file(s) skipped; run {run_dir} -> {link}; "
        f"TensorBoard: tensorboard --logdir {cfg.train.experiments_dir}; "
        f"{summary['seconds']['total']:.0f} s"
    )
    return summary

