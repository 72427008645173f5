"""Training: compile, callbacks and fit of one model (or a seed ensemble) into a run directory.

``train(cfg)`` prepares the data (``ser.data.prepare``), writes the run directory's
inputs (resolved config, split, labels, manifest, normaliser: see ``ser.runs`` for
the layout), fits each member with ``EpochReport`` keeping its best validation epoch
and the state ``--resume`` needs, averages an ensemble into one graph, scores the
test split and writes ``summary.json`` last. TensorBoard logs go to
``experiments/<run>/``; ``checkpoints/best`` then points at the run. Under
``train.distribute: multi_worker`` every process runs ``train`` and only the chief
writes any of that (``ser.multi_worker``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ser import multi_worker, runs, speaker_adversarial
from ser.config import Config, load_config, save_config
from ser.data.corpora import Manifest
from ser.data.pipeline import Normaliser, make_dataset
from ser.data.prepare import (
    CONDITION_MARK,
    ExtractedManifest,
    PreparedData,
    prepare_data,
    read_saved_split,
    save_run_data,
)
from ser.data.splits import PARTS, Split
from ser.metrics import (
    classification_metrics,
    confusion_matrix,
    metrics_by_group,
    unweighted_accuracy,
)
from ser.progress import Log
from ser.reports import read_history
from ser.speaker_adversarial import served_network


# ------------------------------------------------------------------- callbacks
def _confusion_image(cm: np.ndarray, cell: int = 24) -> np.ndarray:
    """Row-normalised confusion matrix as an RGB image [H, W, 3] uint8 (viridis)."""
    from matplotlib import colormaps

    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    rgb = colormaps["viridis"](norm)[..., :3]
    return (np.kron(rgb, np.ones((cell, cell, 1))) * 255).astype(np.uint8)


def validation_loss(
    targets: np.ndarray, probabilities: np.ndarray, label_smoothing: float = 0.0
) -> float:
    """Mean cross-entropy of ``probabilities`` against class-index ``targets``: Keras's
    own loss, without class weights (what Keras reports as ``val_loss``)."""
    expected = keras.ops.one_hot(targets, probabilities.shape[1])
    losses = keras.losses.categorical_crossentropy(
        expected, probabilities, label_smoothing=label_smoothing
    )
    return float(keras.ops.mean(losses))


def _improves(value: float | None, best: float | None, monitor: str) -> bool:
    return value is not None and (
        best is None or (value < best if monitor == "val_loss" else value > best)
    )


class EpochReport(keras.callbacks.Callback):
    """Scores the validation split once per epoch: adds ``val_loss``, ``val_accuracy``
    and ``val_ua`` (balanced accuracy) to the epoch logs from one pass of predictions
    (``fit`` gets no ``validation_data``, which would pass over the split a second
    time), writes ``val_ua`` and a confusion-matrix image to TensorBoard, keeps the
    best model in ``model.keras``, records progress for ``--resume`` and prints one
    line per epoch. Must run before callbacks that read the validation logs.

    The epoch backup (``BackupAndRestore``, saved last at each epoch end) is the
    commit point. A run killed mid-epoch-end may have written history, progress or
    a better model for an epoch the backup does not have, and that epoch is trained
    again on resume: so the best model is written as a candidate
    ``.best-epochNNNN.keras`` and becomes ``model.keras`` (a rename) only once its
    epoch is backed up, and on resume everything about later epochs is dropped.
    """

    def __init__(
        self,
        val_inputs: Any,
        val_targets: np.ndarray,
        labels: list[str],
        run_dir: Path,
        log_dir: Path | None,
        monitor: str,
        total_epochs: int,
        log: Log,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.val_inputs = val_inputs
        self.val_targets = val_targets
        self.label_smoothing = label_smoothing
        self.num_classes = len(labels)
        self.run_dir = run_dir
        self.monitor = monitor
        self.total_epochs = total_epochs
        self.log = log
        self.writer = tf.summary.create_file_writer(str(log_dir)) if log_dir else None
        self.started = time.time()
        self.progress = run_dir / runs.PROGRESS
        state = json.loads(self.progress.read_text()) if self.progress.exists() else {}
        self.values: list[float | None] = state.get("values", [])
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")
        self.settled = False

    def _settle(self, committed: int) -> None:
        """Forget the epochs after the ``committed`` (backed-up) ones and keep the
        candidate model of the newest committed epoch that has one."""
        for path in sorted(self.run_dir.glob(runs.CANDIDATE_PATTERN)):
            if runs.candidate_epoch(path) <= committed:
                os.replace(path, self.run_dir / runs.MODEL)
            else:
                path.unlink()
        if self.settled:
            return
        self.settled = True
        self._drop_history_after(committed)
        if len(self.values) > committed:
            self.values = self.values[:committed]
            self.best = self.best_epoch = None
            for epoch, value in enumerate(self.values, start=1):
                if _improves(value, self.best, self.monitor):
                    self.best, self.best_epoch = value, epoch

    def _drop_history_after(self, committed: int) -> None:
        """Remove history rows of epochs being trained again (the epoch column is 0-based)."""
        history = self.run_dir / runs.HISTORY
        if not history.exists():
            return
        lines = history.read_text().splitlines(keepends=True)
        kept = lines[:1] + [
            line
            for line in lines[1:]
            if (head := line.split(",", 1)[0]).isdigit() and int(head) < committed
        ]
        if kept != lines:  # in place: CSVLogger holds it open for appending
            with open(history, "r+") as f:
                f.write("".join(kept))
                f.truncate()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._settle(epoch)  # every epoch before this one is backed up
        self.started = time.time()

    def on_train_end(self, logs: dict | None = None) -> None:
        self._settle(self.total_epochs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        # With ``train.ema_epochs`` the averaged weights are scored and kept; the model
        # goes back to the trained ones before the epoch's backup and the next steps.
        with averaged_weights(self.model):
            self._score_epoch(epoch, logs if logs is not None else {})

    def _score_epoch(self, epoch: int, logs: dict) -> None:
        probabilities = self.model.predict(self.val_inputs, verbose=0)
        pred = probabilities.argmax(axis=1)
        ua = unweighted_accuracy(self.val_targets, pred, self.num_classes)
        logs["val_loss"] = validation_loss(self.val_targets, probabilities, self.label_smoothing)
        logs["val_accuracy"] = float(np.mean(pred == self.val_targets))
        logs["val_ua"] = ua
        # The rate this epoch trained at (a refit replays them; ReduceLROnPlateau runs later).
        logs["learning_rate"] = float(
            keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        )
        self._write_tensorboard(epoch, ua, pred)
        value = logs.get(self.monitor)
        value = None if value is None else float(value)
        better = _improves(value, self.best, self.monitor)
        if better:
            self.best, self.best_epoch = value, epoch + 1
        self.values.append(value)
        progress = {
            "epoch": epoch + 1,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "values": self.values,
        }
        runs.write_json(self.progress, progress)
        if better:
            served_network(self.model).save(runs.candidate_model(self.run_dir, epoch + 1))
        self._log_epoch(epoch, logs, ua, better)

    def _write_tensorboard(self, epoch: int, ua: float, pred: np.ndarray) -> None:
        if self.writer is None:
            return
        with self.writer.as_default(step=epoch):
            tf.summary.scalar("epoch_val_ua", ua)
            cm = confusion_matrix(self.val_targets, pred, self.num_classes)
            tf.summary.image("validation_confusion", _confusion_image(cm)[None])
        self.writer.flush()

    def _log_epoch(self, epoch: int, logs: dict, ua: float, better: bool) -> None:
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.log(
            f"epoch {epoch + 1:3d}/{self.total_epochs}  loss {logs.get('loss', float('nan')):.4f}"
            f"  acc {logs.get('accuracy', float('nan')):.3f}"
            f"  val_loss {logs.get('val_loss', float('nan')):.4f}"
            f"  val_acc {logs.get('val_accuracy', float('nan')):.3f}  val_ua {ua:.3f}"
            + _adversary_part(logs)
            + f"  lr {lr:.2g}  {time.time() - self.started:.1f}s"
            + ("  *" if better else "")
        )


def _adversary_part(logs: dict) -> str:
    """How well a speaker-adversarial trainer's speaker head names the training
    speakers (the lower, the less the embedding tells them apart); "" otherwise."""
    if "speaker_accuracy" not in logs:
        return ""
    return f"  speaker_acc {float(logs['speaker_accuracy']):.3f}"


# ------------------------------------------------------------------- one model
@contextmanager
def averaged_weights(model: keras.Model):
    """Within the block ``model`` holds its optimizer's moving average of its weights
    (``use_ema``), and its trained weights again after; a no-op without an average."""
    if not getattr(model.optimizer, "use_ema", False):
        yield
        return
    swap = keras.callbacks.SwapEMAWeights()
    swap.set_model(model)
    swap.on_test_begin()
    try:
        yield
    finally:
        swap.on_test_end()


def make_strategy(kind: str):
    """The ``tf.distribute`` strategy ``train.distribute`` names (for multi_worker, the
    process's one ``MultiWorkerMirroredStrategy``: see ``ser.multi_worker``)."""
    import tensorflow as tf

    if kind == "none":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy(devices=[d.name for d in devices])
    return multi_worker.strategy()


def class_weights(targets: np.ndarray, num_classes: int) -> dict[int, float]:
    """Inverse-frequency weights ``n / (k * count)``; absent classes get 1."""
    counts = np.bincount(targets, minlength=num_classes)
    present = counts > 0
    k = int(present.sum())
    return {i: (len(targets) / (k * counts[i]) if counts[i] else 1.0) for i in range(num_classes)}


def _optimizer(cfg: Config, batches_per_epoch: int) -> keras.optimizers.Optimizer:
    t = cfg.train
    ema = {}
    if t.ema_epochs > 0:
        ema = {"use_ema": True, "ema_momentum": ema_momentum(t.ema_epochs, batches_per_epoch)}
    if t.optimizer == "adamw":
        return keras.optimizers.AdamW(t.learning_rate, weight_decay=t.weight_decay, **ema)
    if t.optimizer == "sgd":
        return keras.optimizers.SGD(t.learning_rate, momentum=0.9, **ema)
    return keras.optimizers.Adam(t.learning_rate, **ema)


def cosine_learning_rate(epoch: int, epochs: int, initial: float, final: float) -> float:
    """The rate of 0-based ``epoch`` on half a cosine from ``initial`` (epoch 0) to
    ``final`` (reached one epoch after the last of ``epochs``), as ``train.schedule:
    cosine`` sets it at the start of each epoch."""
    progress = min(max(epoch / max(epochs, 1), 0.0), 1.0)
    return float(final + (initial - final) * 0.5 * (1.0 + np.cos(np.pi * progress)))


def ema_momentum(epochs: float, batches_per_epoch: int) -> float:
    """The momentum of a weight average over about ``epochs`` epochs of training steps."""
    return 1.0 - 1.0 / max(epochs * batches_per_epoch, 1.0)


def _compiled_model(
    cfg: Config,
    input_dim: int,
    classes: int,
    one_hot: int | None,
    batches_per_epoch: int,
    speakers: int = 0,
    weights: np.ndarray | None = None,
):
    """The configured model, built and compiled under ``train.distribute``'s strategy;
    with ``speakers`` (``train.speaker_adversarial``) inside a ``SpeakerAdversarial``
    trainer against that many training speakers, weighting classes by ``weights``."""
    from ser.models import build_model

    with make_strategy(cfg.train.distribute).scope():
        model = build_model(cfg.model, input_dim, classes)
        if speakers:
            model = speaker_adversarial.SpeakerAdversarial(
                model,
                speakers,
                cfg.train.speaker_adversarial,
                weights,
                label_smoothing=cfg.train.label_smoothing,
            )
            model.compile(optimizer=_optimizer(cfg, batches_per_epoch))
            return model
        loss = (
            keras.losses.CategoricalCrossentropy(label_smoothing=cfg.train.label_smoothing)
            if one_hot
            else "sparse_categorical_crossentropy"
        )
        optimizer = _optimizer(cfg, batches_per_epoch)
        model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    return model


def _callbacks(
    cfg: Config, report: EpochReport, run_dir: Path, log_dir: Path, resume: bool
) -> list[Any]:
    monitor = cfg.train.monitor
    mode = "min" if monitor == "val_loss" else "max"
    callbacks: list[Any] = [
        report,
        keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False),
        keras.callbacks.CSVLogger(str(run_dir / runs.HISTORY), append=resume),
        # Last, so an epoch is backed up after everything else it wrote; the previous
        # backup is kept in case this one is torn by a kill.
        keras.callbacks.BackupAndRestore(str(run_dir / runs.BACKUP), double_checkpoint=True),
    ]
    if cfg.train.early_stopping.enabled:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor, mode=mode, patience=cfg.train.early_stopping.patience
            )
        )
    if cfg.train.schedule == "cosine":
        t = cfg.train
        callbacks.append(
            keras.callbacks.LearningRateScheduler(
                lambda epoch, _lr: cosine_learning_rate(
                    epoch, t.epochs, t.learning_rate, t.reduce_lr.min_lr
                )
            )
        )
    elif cfg.train.reduce_lr.enabled:
        r = cfg.train.reduce_lr
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor, mode=mode, patience=r.patience, factor=r.factor, min_lr=r.min_lr
            )
        )
    return callbacks


def _steps_per_epoch(cfg: Config, clips: int, examples: int) -> int | None:
    """Batches in an epoch of ``train.epoch_size: clips`` (as many examples as training
    clips, from a pool of ``examples`` with their copies); None for a pass over them all."""
    if cfg.train.epoch_size == "all" or examples <= clips or clips <= 0:
        return None
    return -(-clips // cfg.train.batch_size)


def _training_examples(
    cfg: Config, data: PreparedData, log: Log
) -> tuple[list[np.ndarray], np.ndarray, int | None]:
    """The training inputs and targets (clips, their condition copies and any copies
    normalised as served) and the batches of an epoch (None: one pass over them all)."""
    train_x, train_y = data.inputs["train"], data.targets["train"]
    if data.served_train is not None:  # augment.session_copies: train as served too
        train_x = [*train_x, *data.served_train[0]]
        train_y = np.concatenate([train_y, data.served_train[1]])
    steps = _steps_per_epoch(cfg, data.train_clips, len(train_x))
    if steps is not None:
        log(
            f"epoch: {steps} batches, {data.train_clips} of the {len(train_x)} training "
            "examples (clips and copies, in turn)"
        )
    return train_x, train_y, steps


def _model_and_dataset(
    cfg: Config,
    data: PreparedData,
    normaliser: Normaliser,
    train_x: list[np.ndarray],
    train_y: np.ndarray,
    steps: int | None,
    seed: int,
    *,
    soft: bool = False,
    speakers: tuple[np.ndarray, int] | None = None,
) -> tuple[Any, Any]:
    """The compiled model and the training dataset of ``train_x``/``train_y``
    (``soft``: the targets are probabilities already; ``speakers``: each example's
    speaker index and the number of speakers, for ``train.speaker_adversarial``)."""
    classes = len(data.labels)
    # Label smoothing, mixup and distillation need probability targets; plain training
    # keeps indices.
    soft = soft or cfg.train.label_smoothing > 0 or cfg.augment.mixup > 0
    one_hot = classes if soft else None
    count, weights = 0, None
    if speakers is not None:  # targets: the emotion's, then the speaker's one-hot
        count = speakers[1]
        train_y = speaker_adversarial.targets(train_y, speakers[0], classes, count)
        one_hot = classes + count
        weights = _class_weight_vector(cfg, data)
    train_ds = make_dataset(
        train_x,
        train_y,
        normaliser=normaliser,
        batch_size=cfg.train.batch_size,
        training=True,
        seed=seed,
        augment=cfg.augment,
        one_hot=one_hot,
        endless=steps is not None,
        length_buckets=cfg.train.length_buckets,
    )
    batches = steps or -(-len(train_x) // cfg.train.batch_size)
    model = _compiled_model(cfg, data.input_dim, classes, one_hot, batches, count, weights)
    return model, train_ds


def _class_weight_vector(cfg: Config, data: PreparedData) -> np.ndarray | None:
    """``class_weights`` of the training clips as a vector, or None (``train.class_weights`` off)."""
    if not cfg.train.class_weights:
        return None
    classes = len(data.labels)
    weights = class_weights(data.targets["train"], classes)
    return np.array([weights[i] for i in range(classes)], np.float32)


def _fit_class_weights(cfg: Config, data: PreparedData, model: Any) -> dict[int, float] | None:
    """``class_weight`` for Keras's ``fit``: None where the model weights classes itself
    (a ``SpeakerAdversarial`` trainer) or ``train.class_weights`` is off."""
    if not cfg.train.class_weights or served_network(model) is not model:
        return None
    return class_weights(data.targets["train"], len(data.labels))


def _adversary_speakers(
    cfg: Config, data: PreparedData, examples: np.ndarray | None = None
) -> tuple[np.ndarray, int] | None:
    """``_training_speakers`` of the examples fitted on (``examples``: their indices, None
    for all) under ``train.speaker_adversarial``; None without it."""
    if cfg.train.speaker_adversarial <= 0:
        return None
    index, count = _training_speakers(data)
    return (index if examples is None else index[examples]), count


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
    targets: np.ndarray | None = None,
    examples: np.ndarray | None = None,
) -> dict[str, Any]:
    """Build, compile and fit one model into ``run_dir`` (its best validation epoch as
    ``model.keras``, history, progress and epoch backups); returns its best epoch,
    best monitored value, seed and fit seconds. ``targets``: probabilities [N, classes]
    for the training examples (a distilled student's) instead of their labels;
    ``examples``: the indices of the training examples to fit on (None: all)."""
    keras.utils.set_random_seed(seed)
    train_x, train_y, steps = _training_examples(cfg, data, log)
    if targets is not None:
        train_y = targets
    if examples is not None:
        train_x, train_y = [train_x[i] for i in examples], train_y[examples]
    model, train_ds = _model_and_dataset(
        cfg,
        data,
        normaliser,
        train_x,
        train_y,
        steps,
        seed,
        soft=targets is not None,
        speakers=_adversary_speakers(cfg, data, examples),
    )
    parameters = served_network(model).count_params()
    log(f"model: {model.name}, {parameters:,} parameters, input dim {data.input_dim}")
    report = EpochReport(
        val_x,
        data.targets["val"],
        data.labels,
        run_dir,
        log_dir / "validation" if cfg.train.confusion_images else None,
        cfg.train.monitor,
        cfg.train.epochs,
        log,
        label_smoothing=cfg.train.label_smoothing,
    )
    weights = _fit_class_weights(cfg, data, model)
    if cfg.train.distribute == "multi_worker":
        multi_worker.check_same_start(run_dir / runs.BACKUP)
    started = time.time()
    model.fit(
        train_ds,
        epochs=cfg.train.epochs,
        steps_per_epoch=steps,
        class_weight=weights,
        callbacks=_callbacks(cfg, report, run_dir, log_dir, resume),
        verbose=cfg.train.verbose,
        shuffle=False,  # tf.data shuffles
    )
    return {
        "seed": seed,
        "best_epoch": report.best_epoch,
        "best": report.best,
        "fit_seconds": time.time() - started,
    }


# --------------------------------------------------------------------- a run
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


def _ensemble_in(run_dir: Path, members: int):
    """The run's ``members`` fitted members averaged into one model (``_average_members``)."""
    return _average_members(
        [runs.member_dir(run_dir, k, members) / runs.MODEL for k in range(members)]
    )


def _saved_config(run_dir: Path) -> Config:
    """The resolved config a run directory was started with."""
    if not (run_dir / runs.CONFIG).is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no {runs.CONFIG}) to resume")
    return load_config(run_dir / runs.CONFIG, env={})


def _open_run(
    cfg: Config, resume: str | Path | None, task: multi_worker.Task | None
) -> tuple[Path, Path, bool]:
    """``(run directory, checkpoints folder, resuming)`` of a new or resumed run. Under
    multi_worker, rerunning the command of an unfinished run resumes it (only the chief
    checks the run directory: the other tasks never write it)."""
    if resume is not None:
        return Path(resume), Path(resume).parent, True
    checkpoints = Path(cfg.train.checkpoints_dir)
    run_dir = checkpoints / runs.new_run_name(cfg.name, cfg.train.run_name)
    if task is not None and not task.is_chief:
        return run_dir, checkpoints, (run_dir / runs.BACKUP).is_dir()
    if task is not None and _unfinished_run_of(cfg, run_dir):
        return run_dir, checkpoints, True
    if run_dir.exists():
        raise FileExistsError(f"{run_dir} exists; choose another train.run_name or use --resume")
    return run_dir, checkpoints, False


def _unfinished_run_of(cfg: Config, run_dir: Path) -> bool:
    """Whether ``run_dir`` is an unfinished run of ``cfg`` (the multi-worker rerun that
    resumes it); ``FileExistsError`` when it is an unfinished run of another config."""
    if not (run_dir / runs.CONFIG).is_file() or (run_dir / runs.SUMMARY).is_file():
        return False
    if load_config(run_dir / runs.CONFIG, env={}).to_yaml() != cfg.to_yaml():
        raise FileExistsError(
            f"{run_dir} holds an unfinished run of another config; rerun it with the "
            "config it was started with (or --resume it), or choose another train.run_name"
        )
    return True


def _save_run_inputs(cfg: Config, run_dir: Path, data: PreparedData) -> Normaliser:
    """Write what inference and evaluation need before fitting; returns the normaliser."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / runs.CONFIG)
    save_run_data(run_dir, data.manifest, data.split, cfg.data)
    runs.write_json(run_dir / runs.LABELS, data.labels)
    runs.write_json(run_dir / runs.VERSIONS, runs.versions())
    normaliser = Normaliser.fit(data.inputs["train"])
    normaliser.save(run_dir / runs.NORMALISER)
    if data.speaker_prior is not None:
        data.speaker_prior.save(run_dir / runs.SPEAKER_PRIOR)
    if data.frame_prior is not None:
        data.frame_prior.save(run_dir / runs.FRAME_PRIOR)
    return normaliser


def _fit_members(
    cfg: Config,
    data: PreparedData,
    normaliser: Normaliser,
    val_x: Any,
    run_dir: Path,
    log_dir: Path,
    *,
    resume: bool,
    log: Log,
) -> list[dict[str, Any]]:
    """Fit the model, or each member of a seed ensemble (members done before a resume
    are read back from their ``member.json``)."""
    members = cfg.model.ensemble
    held_out = _held_out_groups(cfg, data)
    fits = []
    for k in range(members):
        member_dir = runs.member_dir(run_dir, k, members)
        member_log = log_dir if members == 1 else log_dir / f"member{k}"
        done = member_dir / runs.MEMBER_DONE
        if members > 1 and done.is_file():  # finished before a resume
            fits.append(json.loads(done.read_text()))
            log(f"member {k + 1}/{members}: done before (best epoch {fits[-1]['best_epoch']})")
            continue
        member_cfg = cfg.model_copy(update={"model": cfg.model.member(k)})
        if members > 1:
            member_dir.mkdir(parents=True, exist_ok=True)
            kind = f"{member_cfg.model.type}, " if cfg.model.member_types else ""
            log(f"member {k + 1}/{members} ({kind}seed {cfg.seed + k})")
        fit = _fit_member(
            member_cfg,
            data,
            normaliser,
            val_x,
            member_dir,
            member_log,
            cfg.seed + k,
            resume=resume,
            log=log,
            examples=None if held_out is None else np.flatnonzero(held_out != k),
        )
        fit["type"] = member_cfg.model.type
        if members > 1:
            runs.write_json(done, fit)
        fits.append(fit)
    if cfg.model.distill > 0:
        fits.append(
            _fit_student(cfg, data, normaliser, val_x, run_dir, log_dir, held_out, resume, log)
        )
    return fits


def _held_out_groups(cfg: Config, data: PreparedData) -> np.ndarray | None:
    """``model.distill_teacher: held_out``: the member (0 .. ensemble - 1) that leaves
    out each training example (in ``_training_examples``' order), by its speaker, or by
    its clip when the training side has fewer speakers than members; a clip's copies
    (recording conditions, served) go with it. None for any other teacher."""
    if cfg.model.distill <= 0 or cfg.model.distill_teacher != "held_out":
        return None
    rows = data.rows["train"]
    own = [r.path.split(CONDITION_MARK)[0] for r in rows]
    speakers = {r.speaker.split(CONDITION_MARK)[0] for r in rows}
    members = cfg.model.ensemble
    if len(speakers) >= members:
        own = [r.speaker.split(CONDITION_MARK)[0] for r in rows]
    keys = sorted(set(own))
    order = np.random.default_rng([cfg.seed, 2027]).permutation(len(keys))
    group = {keys[j]: n % members for n, j in enumerate(order)}
    return _with_served_copies(data, np.array([group[key] for key in own], np.int64))


def _with_served_copies(data: PreparedData, per_row: np.ndarray) -> np.ndarray:
    """A value per training row (``data.rows["train"]``) extended to every training
    example of ``_training_examples``: the rows, then their served copies, which come
    row by row, each row's copies together (one per row for frames,
    ``augment.session_copies`` per row for pooled vectors)."""
    served = 0 if data.served_train is None else len(data.served_train[0])
    copies = np.repeat(per_row, served // len(per_row)) if served else per_row[:0]
    return np.concatenate([per_row, copies])


def _training_speakers(data: PreparedData) -> tuple[np.ndarray, int]:
    """Each training example's speaker (its clip's, for copies) as an index, and the
    number of training speakers (``train.speaker_adversarial``'s classes)."""
    own = [r.speaker.split(CONDITION_MARK)[0] for r in data.rows["train"]]
    names = sorted(set(own))
    index = {name: i for i, name in enumerate(names)}
    return _with_served_copies(data, np.array([index[n] for n in own], np.int64)), len(names)


def _refit_with_validation(
    cfg: Config, data: PreparedData, run_dir: Path, log_dir: Path, fit: dict[str, Any], *, log: Log
) -> tuple[PreparedData, Normaliser, dict[str, Any]]:
    """``train.refit_with_validation``: the validated network is copied to
    ``validated/model.keras``; a new one (same seed) trains on the training and
    validation clips with their copies for the validated fit's best number of epochs at
    its learning rates, and becomes the run's ``model.keras``, with the normaliser and
    priors of its training data. Returns that data, its normaliser and the refit's
    record."""
    epochs = int(fit["best_epoch"])
    rates = read_history(run_dir / runs.HISTORY).get("learning_rate", [])[:epochs]
    rates += [rates[-1] if rates else cfg.train.learning_rate] * (epochs - len(rates))
    validated = run_dir / "validated"
    validated.mkdir(exist_ok=True)
    shutil.copy2(run_dir / runs.MODEL, validated / runs.MODEL)
    split, manifest = data.split, data.manifest
    data.inputs.clear()  # the first fit's examples go before the refit's are built
    data.served_train = None
    data = prepare_data(cfg, split=split, manifest=manifest, log=log, validation_in_training=True)
    normaliser = _save_run_inputs(cfg, run_dir, data)
    train_x, train_y, steps = _training_examples(cfg, data, log)
    log(
        f"refit on training and validation speakers: {len(train_x)} examples, {epochs} "
        f"epochs (the validated fit's best), learning rates {rates[0]:.2g} .. {rates[-1]:.2g}"
    )
    keras.utils.set_random_seed(fit["seed"])
    model, train_ds = _model_and_dataset(
        cfg,
        data,
        normaliser,
        train_x,
        train_y,
        steps,
        fit["seed"],
        speakers=_adversary_speakers(cfg, data),
    )
    weights = _fit_class_weights(cfg, data, model)
    started = time.time()
    model.fit(
        train_ds,
        epochs=epochs,
        steps_per_epoch=steps,
        class_weight=weights,
        callbacks=[
            keras.callbacks.LearningRateScheduler(lambda epoch, _lr: rates[epoch]),
            keras.callbacks.CSVLogger(str(run_dir / "refit_history.csv")),
            keras.callbacks.TensorBoard(log_dir=str(log_dir / "refit"), write_graph=False),
            _EpochLine(epochs, log),
        ],
        verbose=cfg.train.verbose,
        shuffle=False,
    )
    served_network(model).save(run_dir / runs.MODEL)
    record = {
        "epochs": epochs,
        "examples": len(train_x),
        "speakers": len({r.speaker.split(CONDITION_MARK)[0] for r in data.rows["train"]}),
        "fit_seconds": time.time() - started,
    }
    return data, normaliser, record


class _EpochLine(keras.callbacks.Callback):
    """One log line per epoch of a fit without validation (the refit)."""

    def __init__(self, epochs: int, log: Log):
        super().__init__()
        self.epochs, self.log, self.started = epochs, log, time.time()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        self.log(
            f"refit epoch {epoch + 1:3d}/{self.epochs}  loss {logs.get('loss', float('nan')):.4f}"
            f"  acc {logs.get('accuracy', float('nan')):.3f}  {time.time() - self.started:.1f}s"
        )


def distillation_targets(
    teacher: np.ndarray, labels: np.ndarray, weight: float, temperature: float
) -> np.ndarray:
    """A student's targets [N, classes]: ``(1 - weight)`` x the one-hot ``labels`` +
    ``weight`` x the ``teacher``'s probabilities raised to ``1 / temperature`` and
    renormalised (a temperature above 1 spreads them over the runner-up classes)."""
    p = np.clip(np.asarray(teacher, np.float64), 1e-12, 1.0) ** (1.0 / temperature)
    p /= p.sum(axis=1, keepdims=True)
    one_hot = np.eye(p.shape[1])[np.asarray(labels, np.int64)]
    return ((1.0 - weight) * one_hot + weight * p).astype(np.float32)


def _fit_student(
    cfg: Config,
    data: PreparedData,
    normaliser: Normaliser,
    val_x: Any,
    run_dir: Path,
    log_dir: Path,
    held_out: np.ndarray | None,
    resume: bool,
    log: Log,
) -> dict[str, Any]:
    """Distil the members just fitted (``model.distill``): their probabilities on every
    training example (averaged, or each from the member that left it out: ``held_out``
    gives that member per example) become part of the targets of one more network,
    trained into the run directory itself; returns its fit with the teacher's scores."""
    members = cfg.model.ensemble
    teacher = _ensemble_in(run_dir, members)
    train_x, train_y, _ = _training_examples(cfg, data, lambda _: None)

    def predict(model: Any, which: np.ndarray) -> np.ndarray:
        inputs = make_dataset(
            [train_x[i] for i in which],
            None,
            normaliser=normaliser,
            batch_size=cfg.train.batch_size,
            training=False,
            seed=cfg.seed,
        )
        return model.predict(inputs, verbose=0)

    if held_out is None:
        probs = predict(teacher, np.arange(len(train_x)))
    else:
        probs = np.zeros((len(train_x), len(data.labels)), np.float32)
        for k in range(members):
            member = keras.models.load_model(runs.member_dir(run_dir, k, members) / runs.MODEL)
            probs[held_out == k] = predict(member, np.flatnonzero(held_out == k))
    val_pred = teacher.predict(val_x, verbose=0).argmax(axis=1)
    teacher_val_ua = unweighted_accuracy(data.targets["val"], val_pred, len(data.labels))
    teacher_train_accuracy = float(np.mean(probs.argmax(axis=1) == train_y))
    which = "held-out members" if held_out is not None else "ensemble"
    log(
        f"teacher ({which} of {members}): validation UA {teacher_val_ua:.3f}, accuracy "
        f"{teacher_train_accuracy:.3f} on the training examples; student (seed "
        f"{cfg.seed + members}) on {cfg.model.distill:g} of its probabilities at "
        f"temperature {cfg.model.distill_temperature:g}"
    )
    targets = distillation_targets(probs, train_y, cfg.model.distill, cfg.model.distill_temperature)
    fit = _fit_member(
        cfg,
        data,
        normaliser,
        val_x,
        run_dir,
        log_dir,
        cfg.seed + members,
        resume=resume,
        log=log,
        targets=targets,
    )
    return {
        **fit,
        "student": True,
        "teacher_val_ua": teacher_val_ua,
        "teacher_train_accuracy": teacher_train_accuracy,
    }


def _final_model(
    cfg: Config,
    run_dir: Path,
    fits: list[dict[str, Any]],
    val_x: Any,
    data: PreparedData,
    log: Log,
) -> tuple[Any, int | list[int], float]:
    """``(model, best epoch(s), best monitored value)``: the single model's best epoch,
    or the members averaged into one graph (saved as ``model.keras``) with the
    ensemble's own validation UA; a distilled run keeps its student alone."""
    members = len(fits)
    if members == 1 or fits[-1].get("student"):  # one network: alone, or distilled
        model = keras.models.load_model(run_dir / runs.MODEL)
        return model, fits[-1]["best_epoch"], fits[-1]["best"]
    monitor = cfg.train.monitor
    best = _ensemble_in(run_dir, members)
    best.save(run_dir / runs.MODEL)
    pred = best.predict(val_x, verbose=0).argmax(axis=1)
    val_ua = unweighted_accuracy(data.targets["val"], pred, len(data.labels))
    # The ensemble's own validation UA; for another monitor, the members' mean.
    best_value = val_ua if monitor == "val_ua" else float(np.mean([f["best"] for f in fits]))
    log(
        f"ensemble of {members}: validation UA {val_ua:.3f} (members "
        + ", ".join(f"{f['best']:.3f}" for f in fits)
        + f" {monitor})"
    )
    return best, [f["best_epoch"] for f in fits], best_value


def _test_metrics(model: Any, test_x: Any, data: PreparedData) -> dict[str, Any]:
    """Test-split metrics, with UA/WA/macro-F1/n per corpus under ``per_corpus``."""
    pred = model.predict(test_x, verbose=0).argmax(axis=1)
    test = classification_metrics(data.targets["test"], pred, data.labels)
    corpora = [r.corpus for r in data.rows["test"]]
    test["per_corpus"] = metrics_by_group(data.targets["test"], pred, corpora, data.labels)
    return test


def _log_outcome(cfg: Config, data: PreparedData, summary: dict[str, Any], link: Path, log: Log):
    test, split = summary["test"], data.split
    scores = f"UA {test['ua']:.3f}  WA {test['wa']:.3f}  macro-F1 {test['macro_f1']:.3f}"
    if split.speaker_independent:
        log(
            f"test (speaker-independent, {len(data.rows['test'])} utterances, "
            f"{len({r.speaker for r in data.rows['test']})} unseen speakers): {scores}"
        )
    else:
        log(f"test (SPEAKER-DEPENDENT): {scores}")
    per_corpus = test["per_corpus"]
    if len(per_corpus) > 1:
        log(
            "  per corpus: "
            + "; ".join(
                f"{c} UA {m['ua']:.3f} WA {m['wa']:.3f} (n={m['n']})" for c, m in per_corpus.items()
            )
        )
    monitor = cfg.train.monitor
    skipped = len(data.manifest.skipped) + len(data.failed)
    log(
        f"best epoch {summary['best_epoch']} ({monitor} {summary['best_' + monitor]:.4f}); "
        f"{skipped} file(s) skipped; run {summary['run_dir']} -> {link}; "
        f"TensorBoard: tensorboard --logdir {cfg.train.experiments_dir}; "
        f"{summary['seconds']['total']:.0f} s"
    )


def train(
    cfg: Config,
    *,
    resume: str | Path | None = None,
    split: Split | None = None,
    manifest: Manifest | ExtractedManifest | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Train one model; returns the run summary (also written to ``summary.json``).

    ``split`` (e.g. a cross-validation fold with extra training corpora) replaces the
    split ``cfg.split`` would make; it is saved to ``split.json`` like any other.
    ``manifest``, if given, is ``cfg``'s manifest already built, or with its features
    already extracted (``fill_feature_cache``).
    Under ``train.distribute: multi_worker`` (TF_CONFIG checked first) only the chief
    writes the run directory; the other tasks train in a temporary folder.
    """
    started = time.time()
    if resume is not None:
        cfg = _saved_config(Path(resume))
    task = multi_worker.task_for(cfg.train.distribute)
    if task is not None:  # joins the cluster; must come before any TensorFlow op runs
        multi_worker.strategy()
    run_dir, checkpoints, resuming = _open_run(cfg, resume, task)
    if resuming:
        log(f"resuming {run_dir}")
        split = read_saved_split(run_dir, cfg.data)
    with multi_worker.workspace(run_dir, task) as work_dir:
        summary, data = _train_in(
            cfg, run_dir, work_dir, split, task, manifest, resuming=resuming, log=log
        )
    summary["seconds"]["total"] = time.time() - started
    if work_dir != run_dir:
        log(f"{task.name} done; the chief wrote the run directory {run_dir}")
        return summary
    runs.write_json(run_dir / runs.SUMMARY, summary)
    link = runs.point_best(checkpoints, run_dir)
    _log_outcome(cfg, data, summary, link, log)
    return summary


def _train_in(
    cfg: Config,
    run_dir: Path,
    work_dir: Path,
    split: Split | None,
    task: multi_worker.Task | None,
    manifest: Manifest | ExtractedManifest | None,
    *,
    resuming: bool,
    log: Log,
) -> tuple[dict[str, Any], PreparedData]:
    """Prepare the data, fit and score into ``work_dir`` (the run directory itself, or a
    multi-worker task's temporary folder); returns the summary (without total seconds)
    and the data."""
    chief = work_dir == run_dir
    log_dir = Path(cfg.train.experiments_dir) / run_dir.name if chief else work_dir / "logs"
    keras.utils.set_random_seed(cfg.seed)
    data = prepare_data(cfg, split=split, manifest=manifest, log=log)
    normaliser = _save_run_inputs(cfg, work_dir, data)

    def dataset(part: str) -> Any:
        return make_dataset(
            data.inputs[part],
            None,
            normaliser=normaliser,
            batch_size=cfg.train.batch_size,
            training=False,
            seed=cfg.seed,
        )

    val_x = dataset("val")
    fit_started = time.time()
    with multi_worker.reporting_lost_workers(task, run_dir / runs.BACKUP):
        fits = _fit_members(
            cfg, data, normaliser, val_x, work_dir, log_dir, resume=resuming, log=log
        )
    fit_seconds = time.time() - fit_started
    best, best_epoch, best_value = _final_model(cfg, work_dir, fits, val_x, data, log)
    refit = None
    if cfg.train.refit_with_validation:
        del best, val_x
        data, normaliser, refit = _refit_with_validation(
            cfg, data, work_dir, log_dir, fits[0], log=log
        )
        fit_seconds += refit["fit_seconds"]  # the run's fitting: both fits
        best = keras.models.load_model(work_dir / runs.MODEL)
    # Keras cannot save into a folder that already has its "assets" (a resumed run that
    # had finished once): that folder is rewritten anyway.
    shutil.rmtree(work_dir / "assets", ignore_errors=True)
    best.save(work_dir, zipped=False)  # the run directory itself loads with load_model
    summary = {
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "log_dir": str(log_dir),
        "protocol": data.split.protocol(),
        "speaker_independent": data.split.speaker_independent,
        "model": cfg.model.label,
        "parameters": int(best.count_params()),
        "labels": data.labels,
        "examples": {p: len(data.rows[p]) for p in PARTS},
        "best_epoch": best_epoch,
        "best_" + cfg.train.monitor: best_value,
        "members": fits if len(fits) > 1 else None,
        "refit": refit,
        "test": _test_metrics(best, dataset("test"), data),
        "files": {
            "manifest_rows": len(data.manifest.rows),
            "skipped_unreadable": len(data.manifest.skipped),
            "failed_extraction": len(data.failed),
            "cache_hits": data.extraction.hits,
            "extracted": data.extraction.extracted,
        },
        "seconds": {"total": None, "fit": fit_seconds},
    }
    return summary, data
