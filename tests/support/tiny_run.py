"""A tiny trained run for the serving, predict, record and export tests.

Trained once per test session per model type (one epoch on a generated EMO-DB-like
corpus of 0.3 s tones) with ``data.max_seconds`` of 1 s, so that clips of a few
seconds are cut into sliding windows.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ser.config import load_config
from ser.training import train
from tests.support import ROOT
from tests.support.fakes import EMOTION_HZ, make_emodb

WINDOW_SECONDS = 1.0
_RUNS: dict[str, Path] = {}


def tiny_overrides(
    data_root: Path,
    work: Path,
    model: str = "lstm",
    corpora: str = "[ravdess, tess, emodb]",
    **extra: str,
) -> list[str]:
    """``--set`` overrides for a run that trains in seconds on generated corpora."""
    values = {
        "data.root": str(data_root),
        "data.corpora": corpora,
        "features.extractors": "[mfcc]",
        "features.mfcc.n_mfcc": "13",
        "features.mode": "pooled" if model == "dense" else "sequence",
        "features.workers": "1",
        "features.cache_dir": str(work / "cache"),
        "model.type": model,
        "model.lstm.units": "[8]",
        "model.lstm.dense_units": "[8]",
        "model.cnn.filters": "[8]",
        "model.cnn.dense_units": "[8]",
        "model.crnn.filters": "[8]",
        "model.crnn.rnn_units": "4",
        "model.crnn.attention_units": "4",
        "model.crnn.dense_units": "[8]",
        "model.tcn.filters": "8",
        "model.tcn.dilations": "[1, 2]",
        "model.tcn.dense_units": "[8]",
        "model.dense.units": "[16]",
        "train.epochs": "1",
        "train.batch_size": "16",
        "train.checkpoints_dir": str(work / "checkpoints"),
        "train.experiments_dir": str(work / "experiments"),
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def tiny_config(data_root: Path, work: Path, corpora: str, model: str = "lstm", **extra: str):
    """A config that trains in seconds on generated corpora (two epochs, quick baselines)."""
    extra = {
        "train.epochs": "2",
        "train.confusion_images": "false",
        "evaluation.seed_mlp.max_iter": "50",
        "evaluation.mlp.max_iter": "50",
        **extra,
    }
    sets = tiny_overrides(data_root, work, model, corpora, **extra)
    return load_config(ROOT / "configs" / "base.yaml", sets, env={})


def train_speaker_normalised(work: Path, **extra: str) -> tuple[Any, dict[str, Any]]:
    """(config, training summary) of a tiny dense run on a generated EMO-DB whose pooled
    vectors are z-normalised per speaker (``features.pooled_normalisation: speaker``)."""
    make_emodb(work / "corpora")
    sets = tiny_overrides(
        work / "corpora",
        work,
        "dense",
        "[emodb]",
        **{"features.pooled_normalisation": "speaker", "train.confusion_images": "false", **extra},
    )
    cfg = load_config(ROOT / "configs" / "base.yaml", sets, env={})
    return cfg, train(cfg, log=lambda _line: None)


def tiny_run(
    tmp_path_factory, model: str = "lstm", ensemble: int = 1, variant: str = "", **extra: str
) -> Path:
    """The run directory of a one-epoch tiny ``model`` (lstm, cnn, crnn, tcn or dense), or of
    a seed ensemble of ``ensemble`` such members; ``extra`` overrides (``--set`` keys and
    values) make the run named ``variant`` of it."""
    name = f"tiny-{model}" if ensemble == 1 else f"tiny-{model}-ensemble{ensemble}"
    name += f"-{variant}" if variant else ""
    if name not in _RUNS:
        work = tmp_path_factory.mktemp(name)
        make_emodb(work / "corpora")
        sets = tiny_overrides(
            work / "corpora",
            work,
            model,
            "[emodb]",
            **{
                "data.max_seconds": str(WINDOW_SECONDS),
                "train.confusion_images": "false",
                "train.run_name": name,
                "model.ensemble": str(ensemble),
                **extra,
            },
        )
        cfg = load_config(ROOT / "configs" / "base.yaml", sets, env={})
        summary = train(cfg, log=lambda _line: None)
        _RUNS[name] = Path(summary["run_dir"])
    return _RUNS[name]


def tone(
    seconds: float,
    hz: float = EMOTION_HZ["angry"],
    sr: int = 16000,
    seed: int = 0,
    amplitude: float = 0.3,
) -> np.ndarray:
    """float32 [samples]: a sine at ``hz`` with a little noise (like the training tones)."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sr)) / sr
    wave = amplitude * np.sin(2 * np.pi * hz * t) + 0.05 * rng.standard_normal(t.shape)
    return wave.astype(np.float32)


def silence(seconds: float, sr: int = 16000) -> np.ndarray:
    return np.zeros(round(seconds * sr), np.float32)


def encode(
    wave: np.ndarray, sr: int = 16000, format: str = "WAV", subtype: str | None = None
) -> bytes:
    """``wave`` as the bytes of an audio file in ``format`` (soundfile names)."""
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=format, subtype=subtype)
    return buf.getvalue()


def with_unconvertible_layer(run: Path, dest: Path) -> Path:
    """A copy of the dense ``run`` at ``dest`` whose model has a layer neither NumPy nor
    ONNX export can run (a Dense with elu, named ``elu_layer``): Keras alone runs it."""
    import json
    import shutil

    import keras

    shutil.copytree(run, dest)
    dims = len(json.loads((run / "normaliser.json").read_text())["mean"])
    classes = len(json.loads((run / "labels.json").read_text()))
    inputs = keras.Input((dims,), name="features")
    x = keras.layers.Dense(4, activation="elu", name="elu_layer")(inputs)
    outputs = keras.layers.Dense(classes, activation="softmax", name="emotion")(x)
    keras.Model(inputs, outputs).save(dest / "model.keras")
    return dest
