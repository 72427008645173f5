"""Load a run directory once and predict with exactly the training-time features.

``Predictor.load(run_dir)`` is shared by ``evaluate.py``, ``ser predict`` and the
HTTP service: it reads the resolved config, the label list and the normaliser
saved by training and loads ``model.keras`` in Keras safe mode.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ser.audio import load_audio
from ser.config import Config, load_config
from ser.data.pipeline import Normaliser, make_dataset, max_frames_for, to_model_input
from ser.features.extractors import extract_features

RUN_FILES = ("run.yaml", "labels.json", "normaliser.json", "model.keras")


class RunDirError(FileNotFoundError):
    """A path that is not a usable run directory; the message says what is missing."""


def check_run_dir(run_dir: str | os.PathLike[str]) -> Path:
    path = Path(run_dir)
    if not path.exists():
        raise RunDirError(f"{path}: no such run directory")
    if not path.is_dir():
        raise RunDirError(f"{path}: not a directory; pass a run directory such as checkpoints/best")
    missing = [name for name in RUN_FILES if not (path / name).is_file()]
    if missing:
        raise RunDirError(
            f"{path}: not a run directory (missing {', '.join(missing)}); "
            "train one with `python train.py` or pass e.g. checkpoints/best"
        )
    return path.resolve()


@dataclass
class Predictor:
    run_dir: Path
    cfg: Config
    labels: list[str]
    normaliser: Normaliser
    model: Any

    @classmethod
    def load(cls, run_dir: str | os.PathLike[str]) -> Predictor:
        import keras

        import ser.models  # noqa: F401  (registers the custom layers before loading)

        path = check_run_dir(run_dir)
        cfg = load_config(path / "run.yaml", env={})
        labels = json.loads((path / "labels.json").read_text(encoding="utf-8"))
        normaliser = Normaliser.load(path / "normaliser.json")
        model = keras.models.load_model(path / "model.keras", compile=False, safe_mode=True)
        return cls(path, cfg, labels, normaliser, model)

    @property
    def max_frames(self) -> int:
        c = self.cfg
        return max_frames_for(c.data.max_seconds, c.data.sample_rate, c.features.frame.hop_length)

    def model_input(self, features: np.ndarray) -> np.ndarray:
        """Frame-level features [T, D] -> the model's input, as in training."""
        f = self.cfg.features
        return to_model_input(features, f.mode, f.pooling, self.max_frames)

    def input_from_wave(self, wave: np.ndarray) -> np.ndarray:
        """float32 mono wave at the run's sample rate -> model input."""
        c = self.cfg
        return self.model_input(extract_features(wave, c.data.sample_rate, c.features))

    def predict_inputs(self, inputs: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Model inputs -> class probabilities [N, num_classes]."""
        ds = make_dataset(
            list(inputs), None, normaliser=self.normaliser, batch_size=batch_size,
            training=False, seed=0,
        )
        return np.asarray(self.model.predict(ds, verbose=0))

    def predict_wave(self, wave: np.ndarray) -> np.ndarray:
        """One clip (float32 mono at the run's rate) -> probabilities [num_classes]."""
        x = self.normaliser.apply(self.input_from_wave(wave))[None]
        return np.asarray(self.model(x, training=False))[0]

    def predict_file(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        wave = load_audio(path, self.cfg.data.sample_rate)
        probs = self.predict_wave(wave)
        top = int(np.argmax(probs))
        return {
            "path": str(path),
            "emotion": self.labels[top],
            "confidence": float(probs[top]),
            "probabilities": {label: float(p) for label, p in zip(self.labels, probs)},
            "duration": wave.shape[0] / self.cfg.data.sample_rate,
        }
