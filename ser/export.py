"""Export a run's model as a TensorFlow SavedModel, a TFLite flatbuffer or an ONNX graph.

Both take the model's own input: normalised features, ``[batch, frames, D]`` for
sequence models (zero frames at the end are padding and are masked) or
``[batch, D]`` for pooled ones, and return probabilities ``[batch, num_classes]``.
The SavedModel keeps free batch and frame axes. TFLite needs static shapes, so its
input is one window, ``[1, max_frames, D]``, for a sequence model (shorter clips are
zero-padded to it, longer ones cut into windows: ``ExportedModel`` does both) and one
vector, ``[1, D]``, for a pooled one. ONNX (``ser.onnx_export``: every model type, an
ensemble as one graph; a model holding a layer it cannot convert is refused, naming the
layer, before anything is written) keeps free batch and frame axes and runs on ONNX
Runtime without TensorFlow.

Next to the model the export writes what a consumer needs to build that input:
``labels.json``, ``normaliser.json``, ``run.yaml`` (features config) and
``export.json`` (shapes, model id, the parity check's result).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ser import runs
from ser.inference import Predictor

Format = Literal["savedmodel", "tflite", "onnx"]
FORMATS: tuple[str, ...] = ("savedmodel", "tflite", "onnx")
PARITY_TOLERANCE = 1e-4
MODEL_FILE = {"savedmodel": "saved_model.pb", "tflite": "model.tflite", "onnx": "model.onnx"}


class ExportError(RuntimeError):
    """An export that cannot be made as asked; the message says why."""


def _signature_shape(predictor: Predictor, static: bool) -> list[int | None]:
    d = predictor.input_dim
    if predictor.sequence:
        return [1, predictor.max_frames, d] if static else [None, None, d]
    return [1, d] if static else [None, d]


def _write_saved_model(predictor: Predictor, out: Path, static: bool) -> None:
    import tensorflow as tf

    spec = tf.TensorSpec(_signature_shape(predictor, static), tf.float32, name="features")
    predictor.model.export(str(out), format="tf_saved_model", input_signature=[spec], verbose=False)


def _onnx_bytes(predictor: Predictor) -> bytes:
    from ser.numpy_runtime import UnsupportedModel, read_numpy_model
    from ser.onnx_export import to_onnx

    try:
        model = read_numpy_model(predictor.run_dir / runs.MODEL)
        proto = to_onnx(model, list(predictor.labels), predictor.model_id)
    except UnsupportedModel as exc:  # UnsupportedForONNX included
        raise ExportError(
            f"--format onnx: {predictor.run_dir / runs.MODEL} cannot be converted: {exc}; "
            "use savedmodel or tflite"
        ) from None
    return proto.SerializeToString()


def _tflite_bytes(predictor: Predictor) -> bytes:
    import tensorflow as tf

    # Converting a SavedModel (rather than a concrete function) freezes the LSTM's
    # variables inside its while loop; from a function they stay resource reads that
    # the TFLite interpreter cannot resolve.
    with tempfile.TemporaryDirectory(prefix="ser-export-") as tmp:
        _write_saved_model(predictor, Path(tmp) / "static", static=True)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "static"))
        return converter.convert()


@dataclass
class ExportedModel:
    """An exported model as a function of one normalised input ([T, D] or [D])."""

    format: Format
    call: Callable[[np.ndarray], np.ndarray]  # batch of one -> [1, C]
    static_frames: int | None  # TFLite sequence models: the fixed frame count

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Normalised model input [T, D] (T <= max_frames) or [D] -> probabilities [C]."""
        x = np.asarray(x, np.float32)
        if self.static_frames is not None:
            if x.shape[0] > self.static_frames:
                raise ValueError(
                    f"input has {x.shape[0]} frames; this TFLite model takes at most "
                    f"{self.static_frames} (cut longer clips into windows)"
                )
            x = np.pad(x, ((0, self.static_frames - x.shape[0]), (0, 0)))
        return np.asarray(self.call(x[None]))[0]


def load_exported(path: str | Path) -> ExportedModel:
    """Load an export directory written by ``export_run``."""
    path = Path(path)
    meta = json.loads((path / "export.json").read_text(encoding="utf-8"))
    fmt = meta["format"]
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(
            str(path / MODEL_FILE["onnx"]), providers=["CPUExecutionProvider"]
        )
        return ExportedModel(fmt, lambda x: session.run(None, {"features": x})[0], None)
    if fmt == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        return ExportedModel(fmt, lambda x: loaded.serve(tf.constant(x)).numpy(), None)
    interpreter = _tflite_interpreter(path / MODEL_FILE["tflite"])
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    outp = interpreter.get_output_details()[0]

    def call(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(outp["index"]).copy()

    frames = int(inp["shape"][1]) if len(inp["shape"]) == 3 else None
    return ExportedModel(fmt, call, frames)


def _tflite_interpreter(model_path: Path):
    try:  # LiteRT, TFLite's successor package, when it is installed
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import warnings

        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            return tf.lite.Interpreter(model_path=str(model_path))
    return Interpreter(model_path=str(model_path))


def parity_inputs(predictor: Predictor, seed: int = 0) -> list[np.ndarray]:
    """Normalised inputs to compare exported and Keras outputs on: random frames of a
    full window and of a shorter clip (exercising the padding mask), or random vectors."""
    rng = np.random.default_rng(seed)
    d = predictor.input_dim
    if not predictor.sequence:
        return [rng.standard_normal(d).astype(np.float32) for _ in range(2)]
    return [
        rng.standard_normal((n, d)).astype(np.float32)
        for n in (predictor.max_frames, max(1, predictor.max_frames // 3))
    ]


def parity(predictor: Predictor, exported: ExportedModel, inputs: list[np.ndarray]) -> float:
    """Largest absolute difference between exported and Keras probabilities on ``inputs``."""
    worst = 0.0
    for x in inputs:
        expected = predictor.predict_batch(x[None])[0]
        worst = max(worst, float(np.max(np.abs(exported.predict(x) - expected))))
    return worst


def export_run(
    run_dir: str | Path,
    fmt: str,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    predictor: Predictor | None = None,
) -> dict[str, Any]:
    """Export the run's model; returns the ``export.json`` content (with ``path``)."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    predictor = predictor or Predictor.load(run_dir)
    out = Path(out) if out is not None else predictor.run_dir / "export" / fmt
    # Built first: a model ONNX cannot hold is refused before anything on disk changes.
    onnx_bytes = _onnx_bytes(predictor) if fmt == "onnx" else b""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass --overwrite or --out")
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    if fmt == "savedmodel":
        _write_saved_model(predictor, out, static=False)
    elif fmt == "onnx":
        out.mkdir(parents=True, exist_ok=True)
        (out / MODEL_FILE["onnx"]).write_bytes(onnx_bytes)
    else:
        out.mkdir(parents=True, exist_ok=True)
        (out / MODEL_FILE["tflite"]).write_bytes(_tflite_bytes(predictor))
    extra = (runs.SPEAKER_PRIOR,) if predictor.speaker_prior is not None else ()
    for name in (runs.LABELS, runs.NORMALISER, runs.CONFIG, *extra):
        shutil.copyfile(predictor.run_dir / name, out / name)
    shape = _signature_shape(predictor, static=fmt == "tflite")
    meta: dict[str, Any] = {
        "format": fmt,
        "model_id": predictor.model_id,
        "model_file": MODEL_FILE[fmt],
        "input": {
            "name": "features",
            "shape": shape,
            "dtype": "float32",
            "layout": "frames x features, normalised with normaliser.json"
            if predictor.sequence
            else "pooled features, normalised with normaliser.json"
            + (f" after {runs.SPEAKER_PRIOR} (or the speaker's own z-norm)" if extra else ""),
            "padding": "zero frames appended at the end are masked" if predictor.sequence else None,
        },
        "output": {"shape": [shape[0], len(predictor.labels)], "labels": list(predictor.labels)},
        "window_seconds": predictor.window_seconds,
        "max_frames": predictor.max_frames,
        "sample_rate": predictor.sample_rate,
    }
    (out / "export.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    worst = parity(predictor, load_exported(out), parity_inputs(predictor))
    meta["parity_max_abs_diff"] = worst
    (out / "export.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    if worst > PARITY_TOLERANCE:
        raise ExportError(
            f"{out}: exported model differs from the Keras model by up to {worst:.2g} "
            f"(tolerance {PARITY_TOLERANCE:g}); the export is not usable"
        )
    return {**meta, "path": str(out)}
