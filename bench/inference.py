"""In-process inference: latency of one 3 s clip (features included) and batch throughput.

Loads a run with ``Predictor.load`` (default ``checkpoints/best``) and warms it up,
as ``ser predict`` and the HTTP service do. Latency covers feature extraction, normalisation and the
model call for a 3 s clip already decoded in memory; decoding a file is reported
separately. Throughput runs ``predict_inputs`` on batches of 3 s clips.

    python -m bench.inference [--run checkpoints/best] [--repeats 200]
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
import soundfile as sf

from bench.common import parser, percentiles, table, write


def clip(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """A voiced-like test signal: harmonics of a gliding 150-250 Hz pitch plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 150 + 100 * t / seconds
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2
    return (wave + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def main() -> None:
    p = parser("inference", __doc__.splitlines()[0])
    p.add_argument("--run", default="checkpoints/best", help="run directory")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args()
    from ser.inference import Predictor, tune_for_inference

    # As ``ser serve`` and ``ser predict`` do: BLAS threads spinning on the cores the
    # model uses inflate small filterbank products by an order of magnitude.
    tune_for_inference()
    predictor = Predictor.load(args.run)
    predictor.warm_up()
    sr = predictor.cfg.data.sample_rate
    wave = clip(args.seconds, sr)
    for _ in range(5):  # warm-up: graph tracing, filterbanks, allocator
        predictor.predict_wave(wave)

    features, total = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        predictor.input_from_wave(wave)
        t1 = time.perf_counter()
        predictor.predict_wave(wave)
        t2 = time.perf_counter()
        features.append(t1 - t0)
        total.append(t2 - t1)
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        sf.write(f.name, wave, sr)
        decode = []
        for _ in range(min(args.repeats, 50)):
            t0 = time.perf_counter()
            predictor.predict_file(f.name)
            decode.append(time.perf_counter() - t0)

    batch_rows = []
    for batch in (1, 8, 32, 128):
        inputs = [predictor.input_from_wave(clip(args.seconds, sr, seed=i)) for i in range(batch)]
        predictor.predict_inputs(inputs, batch_size=batch)
        t0 = time.perf_counter()
        reps = max(1, 256 // batch)
        for _ in range(reps):
            predictor.predict_inputs(inputs, batch_size=batch)
        rate = batch * reps / (time.perf_counter() - t0)
        batch_rows.append({"batch": batch, "clips_per_s": rate})

    latency = {
        "features_only": percentiles(features),
        "clip_end_to_end": percentiles(total),
        "file_end_to_end": percentiles(decode),
    }
    print(
        f"run {predictor.run_dir} ({predictor.cfg.model.type}, "
        f"{predictor.parameters:,} parameters, {predictor.runtime} runtime), {args.seconds:.0f} s clip"
    )
    print(
        table(
            [[k, v["p50_ms"], v["p95_ms"]] for k, v in latency.items()],
            ["latency", "p50 ms", "p95 ms"],
        )
    )
    print(
        table(
            [[r["batch"], r["clips_per_s"]] for r in batch_rows],
            ["batch (model only, features precomputed)", "clips/s"],
        )
    )
    write(
        args.out,
        "inference",
        {
            "run": str(predictor.run_dir),
            "model": predictor.cfg.model.type,
            "seconds": args.seconds,
            "latency": latency,
            "batches": batch_rows,
        },
    )


if __name__ == "__main__":
    main()
