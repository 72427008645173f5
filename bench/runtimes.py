"""The model alone on each runtime: NumPy (``ser.numpy_runtime``), Keras (XLA) and ONNX Runtime.

For one run: the seconds to load the model in a fresh process (TensorFlow's import
included for Keras) and the p50 latency of one model call on one normalised input (a full
window for a sequence model), one thread each. The ONNX model is exported to a temporary
folder first (``ser export --format onnx``); runtimes that cannot hold the model are
skipped with the reason.

    python -m bench.runtimes [--run checkpoints/best] [--repeats 300]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, parser, percentiles, table, write

LOAD = {
    "numpy": "from ser.numpy_runtime import load_numpy_model; load_numpy_model({model!r})",
    "keras": (
        "from ser.tensorflow_startup import import_tensorflow; import_tensorflow(); "
        "import keras, ser.models; keras.models.load_model({model!r}, compile=False)"
    ),
    "onnx": (
        "import onnxruntime as ort; o = ort.SessionOptions(); o.intra_op_num_threads = 1; "
        "ort.InferenceSession({onnx!r}, o, providers=['CPUExecutionProvider'])"
    ),
}


def load_seconds(runtime: str, model: str, onnx: str) -> float:
    """Wall seconds of a fresh Python process that loads the model on ``runtime``."""
    code = LOAD[runtime].format(model=model, onnx=onnx)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - started


def call_latency(fn, x: np.ndarray, repeats: int) -> dict:
    for _ in range(10):
        fn(x)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - started)
    return percentiles(times)


def main() -> None:
    p = parser("runtimes", __doc__.splitlines()[0])
    p.add_argument("--run", default="checkpoints/best", help="run directory")
    p.add_argument("--repeats", type=int, default=300)
    args = p.parse_args()
    import onnxruntime as ort

    from ser import runs
    from ser.export import ExportError, export_run
    from ser.inference import Predictor, limit_tf_threads, tune_for_inference

    tune_for_inference()
    keras_predictor = Predictor.load(args.run, runtime="keras")
    limit_tf_threads(1)
    numpy_predictor = Predictor.load(args.run, runtime="numpy")
    frames = (keras_predictor.max_frames,) if keras_predictor.sequence else ()
    x = np.random.default_rng(0).standard_normal((1, *frames, keras_predictor.input_dim))
    x = x.astype(np.float32)
    model = str(keras_predictor.run_dir / runs.MODEL)
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = Path(tmp) / "onnx"
        try:
            export_run(args.run, "onnx", onnx_dir, predictor=numpy_predictor)
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            session = ort.InferenceSession(
                str(onnx_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
            )
            onnx_call = lambda v: session.run(None, {"features": v})[0]  # noqa: E731
        except ExportError as exc:
            onnx_call = None
            results["onnx_skipped"] = str(exc)
        contenders = {"keras": keras_predictor.predict_batch}
        if numpy_predictor.runtime == "numpy":
            contenders["numpy"] = numpy_predictor.predict_batch
        if onnx_call is not None:
            contenders["onnx"] = onnx_call
        for name, fn in contenders.items():
            latency = call_latency(fn, x, args.repeats)
            seconds = load_seconds(name, model, str(onnx_dir / "model.onnx"))
            results[name] = {"load_s": seconds, "call": latency}
            rows.append([name, seconds, latency["p50_ms"], latency["p95_ms"]])
    print(f"run {keras_predictor.model_id} ({keras_predictor.cfg.model.type}), input {x.shape}")
    print(table(rows, ["runtime", "load s (fresh process)", "call p50 ms", "call p95 ms"]))
    write(
        args.out,
        "runtimes",
        {"run": keras_predictor.model_id, "input_shape": list(x.shape), **results},
    )


if __name__ == "__main__":
    main()
