"""The model alone on each runtime: NumPy (``ser.numpy_runtime``), Keras (XLA) and ONNX Runtime.

For each run given (one per model type, say): the seconds to load the model in a fresh
process (TensorFlow's import included for Keras; for ONNX Runtime, reading model.keras,
converting it and opening the session, as ``Predictor.load`` does) and the p50 latency of
one model call on one normalised input (a full window for a sequence model), one thread
each. The ONNX export (``ser export --format onnx``, written to a temporary folder) checks
parity first; runtimes that cannot hold the model are skipped with the reason.

    python -m bench.runtimes [--run checkpoints/best ...] [--runtimes numpy,keras,onnx]
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
    "numpy": "from ser.numpy_runtime import read_numpy_model; read_numpy_model({model!r})",
    "keras": (
        "from ser.tensorflow_startup import import_tensorflow; import_tensorflow(); "
        "import keras, ser.models; keras.models.load_model({model!r}, compile=False)"
    ),
    "onnx": (
        "import json; from ser.numpy_runtime import read_numpy_model; "
        "from ser.onnx_export import OnnxModel; "
        "OnnxModel(read_numpy_model({model!r}), json.load(open({labels!r})))"
    ),
}
RUNTIMES = ("numpy", "keras", "onnx")


def load_seconds(runtime: str, model: str, labels: str) -> float:
    """Wall seconds of a fresh Python process that loads the model on ``runtime``."""
    code = LOAD[runtime].format(model=model, labels=labels)
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


def bench_run(run: str, runtimes: list[str], repeats: int) -> tuple[list[list], dict]:
    """Table rows and JSON results of ``runtimes`` on one run."""
    import onnxruntime as ort

    from ser import runs
    from ser.export import ExportError, export_run
    from ser.inference import Predictor

    keras_predictor = Predictor.load(run, runtime="keras")
    frames = (keras_predictor.max_frames,) if keras_predictor.sequence else ()
    x = np.random.default_rng(0).standard_normal((1, *frames, keras_predictor.input_dim))
    x = x.astype(np.float32)
    model = str(keras_predictor.run_dir / runs.MODEL)
    labels = str(keras_predictor.run_dir / runs.LABELS)
    kind = keras_predictor.cfg.model.type
    if keras_predictor.cfg.model.ensemble > 1:
        kind += f" x{keras_predictor.cfg.model.ensemble}"
    results: dict = {"run": keras_predictor.model_id, "model": kind, "input_shape": list(x.shape)}
    contenders = {"keras": keras_predictor.predict_batch}
    if "numpy" in runtimes:
        contenders["numpy"] = Predictor.load(run, runtime="numpy").predict_batch
    if "onnx" in runtimes:
        with tempfile.TemporaryDirectory() as tmp:
            onnx_dir = Path(tmp) / "onnx"
            try:
                meta = export_run(run, "onnx", onnx_dir, predictor=keras_predictor)
                results["onnx_parity_max_abs_diff"] = meta["parity_max_abs_diff"]
                options = ort.SessionOptions()
                options.intra_op_num_threads = 1
                session = ort.InferenceSession(
                    str(onnx_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
                )
                contenders["onnx"] = lambda v: session.run(None, {"features": v})[0]
            except ExportError as exc:
                results["onnx_skipped"] = str(exc)
    rows = []
    for name, fn in contenders.items():
        if name not in runtimes:
            continue
        latency = call_latency(fn, x, repeats)
        seconds = load_seconds(name, model, labels)
        results[name] = {"load_s": seconds, "call": latency}
        rows.append([kind, name, seconds, latency["p50_ms"], latency["p95_ms"]])
    return rows, results


def main() -> None:
    p = parser("runtimes", __doc__.splitlines()[0])
    p.add_argument(
        "--run", action="append", help="run directory (repeatable; default checkpoints/best)"
    )
    p.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated runtimes")
    p.add_argument("--repeats", type=int, default=300)
    args = p.parse_args()
    from ser.inference import limit_tf_threads, tune_for_inference
    from ser.tensorflow_startup import import_tensorflow

    runtimes = [r for r in args.runtimes.split(",") if r]
    unknown = sorted(set(runtimes) - set(RUNTIMES))
    if unknown:
        p.error(f"--runtimes: unknown {', '.join(unknown)}; choose from {', '.join(RUNTIMES)}")
    tune_for_inference()
    import_tensorflow()  # first, so that its start-up notices are filtered
    limit_tf_threads(1)
    rows, results = [], []
    for run in args.run or ["checkpoints/best"]:
        run_rows, run_results = bench_run(run, runtimes, args.repeats)
        rows += run_rows
        results.append(run_results)
        print(
            f"run {run_results['run']} ({run_results['model']}), input {run_results['input_shape']}"
        )
    header = ["model", "runtime", "load s (fresh process)", "call p50 ms", "call p95 ms"]
    print(table(rows, header))
    write(args.out, "runtimes", {"runs": results})


if __name__ == "__main__":
    main()
