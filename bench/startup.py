"""Start-up: ``ser predict one.wav`` end to end, and ``ser serve`` until it is ready.

Each is a fresh process, as a user starts it (wall clock from launch to exit, or to the
first ``GET /ready`` answered 200 on 127.0.0.1: the model warmed up), repeated
``--repeats`` times; the median is reported. The first run pays cold file caches and is reported separately.
``--runtime`` (repeatable) passes ``--runtime`` to both commands, to compare Keras with
ONNX Runtime on the same run.

    python -m bench.startup [--run checkpoints/best] [--clip some.flac] [--repeats 3]
        [--runtime keras --runtime onnx]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, parser, table, write
from bench.load_http import free_port, start_server, stop_server, voiced_clip, wait_healthy


def predict_seconds(run: str, clip: str, runtime: str = "auto") -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "ser.cli", "predict", "--run", run, clip, "--runtime", runtime],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def serve_seconds(run: str, log: Path, runtime: str = "auto") -> float:
    port = free_port()
    started = time.perf_counter()
    proc = start_server(run, port, log, "--runtime", runtime)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, timeout=120)
        return time.perf_counter() - started
    finally:
        stop_server(proc)


def main() -> None:
    p = parser("startup", __doc__.splitlines()[0])
    p.add_argument("--run", default="checkpoints/best", help="run directory")
    p.add_argument("--clip", help="audio file to predict (default: a generated 3 s clip)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--runtime",
        action="append",
        choices=["auto", "numpy", "onnx", "keras"],
        help="what runs the model (repeatable; default auto)",
    )
    args = p.parse_args()
    import soundfile as sf

    from ser.inference import Predictor

    predictor = Predictor.load(args.run)  # its id and model type
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        clip = args.clip or str(Path(tmp) / "clip.wav")
        if not args.clip:
            sf.write(clip, voiced_clip(3.0), 16000)
        log = Path(tmp) / "serve.log"
        for runtime in args.runtime or ["auto"]:
            first_predict = predict_seconds(args.run, clip, runtime)
            predicts = [predict_seconds(args.run, clip, runtime) for _ in range(args.repeats)]
            first_serve = serve_seconds(args.run, log, runtime)
            serves = [serve_seconds(args.run, log, runtime) for _ in range(args.repeats)]
            rows += [
                [runtime, "ser predict one clip, first run", first_predict],
                [
                    runtime,
                    f"ser predict one clip, median of {args.repeats}",
                    statistics.median(predicts),
                ],
                [runtime, "ser serve until /ready, first run", first_serve],
                [
                    runtime,
                    f"ser serve until /ready, median of {args.repeats}",
                    statistics.median(serves),
                ],
            ]
            results[runtime] = {
                "predict_s": {"first": first_predict, "runs": predicts},
                "serve_ready_s": {"first": first_serve, "runs": serves},
            }
    print(f"run {predictor.model_id} ({predictor.cfg.model.type})")
    print(table(rows, ["runtime", "what", "seconds"]))
    write(
        args.out,
        "startup",
        {"run": predictor.model_id, "model": predictor.cfg.model.type, "runtimes": results},
    )


if __name__ == "__main__":
    main()
