"""Input pipeline vs model: is tf.data ever the bottleneck? And peak memory of training.

For the default lstm, cnn and dense configs (and the lstm with plain shuffled batches
instead of its length buckets): batches/s of the training dataset alone (iterated,
model removed) against batches/s and examples/s of training steps on the same dataset
(second epoch, after tracing). Then the peak resident memory of one full
``train.py`` run in a child process (``--rss-epochs`` epochs, default 2; memory
peaks in the first epoch, once every feature is in RAM).

    python -m bench.pipeline [--limit 200] [--rss-epochs 2] [--no-rss]
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time

from bench.common import (
    ROOT,
    bench_config,
    compiled_model,
    manifest_rows,
    parser,
    prepare,
    table,
    train_dataset,
    write,
)

# (row name, config, overrides): the default configs, and the default LSTM once more
# with plain shuffled batches, so that what train.length_buckets saves is measured in
# the same run.
MODELS = [
    ("lstm", "lstm.yaml", ()),
    ("lstm, plain batches", "lstm.yaml", ("train.length_buckets=0",)),
    ("cnn", "cnn.yaml", ()),
    ("dense", "dense.yaml", ()),
]


def dataset_rate(ds, passes: int = 3) -> float:
    batches = 0
    start = time.perf_counter()
    for _ in range(passes):
        for _ in ds:
            batches += 1
    return batches / (time.perf_counter() - start)


def peak_rss_mb(args, epochs: int) -> float:
    """Peak RSS (MB) of a full training run in a child process."""
    with tempfile.TemporaryDirectory() as work:
        cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/lstm.yaml")]
        for s in (
            f"data.root={args.data_root}",
            f"data.corpora=[{args.corpora}]",
            f"train.epochs={epochs}",
            f"features.cache_dir={work}/cache",
            f"train.checkpoints_dir={work}/ck",
            f"train.experiments_dir={work}/ex",
        ):
            cmd += ["--set", s]
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    p = parser("pipeline", __doc__.splitlines()[0])
    p.add_argument("--rss-epochs", type=int, default=2)
    p.add_argument("--no-rss", action="store_true", help="skip the full-run memory measurement")
    args = p.parse_args()
    rows = manifest_rows(args)
    results = []
    with tempfile.TemporaryDirectory() as cache:
        for name, config, overrides in MODELS:
            cfg = bench_config(args, config, *overrides)
            data = prepare(cfg, rows, cache)
            ds = train_dataset(cfg, data)
            input_rate = dataset_rate(ds)
            model = compiled_model(cfg, data)
            model.fit(ds, epochs=1, verbose=0)  # traces the step function
            start = time.perf_counter()
            model.fit(ds, epochs=1, verbose=0)
            seconds = time.perf_counter() - start
            steps = sum(1 for _ in ds)
            step_rate = steps / seconds
            results.append(
                {
                    "model": name,
                    "input_batches_per_s": input_rate,
                    "train_batches_per_s": step_rate,
                    "ratio": input_rate / step_rate,
                    "train_examples_per_s": len(data.rows["train"]) / seconds,
                    "length_buckets": cfg.train.length_buckets,
                    "batch_size": cfg.train.batch_size,
                    "train_examples": len(data.rows["train"]),
                }
            )
    print(
        table(
            [
                [
                    r["model"],
                    r["input_batches_per_s"],
                    r["train_batches_per_s"],
                    r["ratio"],
                    r["train_examples_per_s"],
                ]
                for r in results
            ],
            ["model", "tf.data batches/s", "train steps/s", "input / model", "train examples/s"],
        )
    )
    out = {"files": len(rows), "results": results}
    if not args.no_rss:
        out["peak_rss_mb"] = peak_rss_mb(args, args.rss_epochs)
        out["rss_epochs"] = args.rss_epochs
        print(
            f"peak RSS of a full lstm training run ({args.rss_epochs} epochs, "
            f"{args.corpora}): {out['peak_rss_mb']:.0f} MB"
        )
    write(args.out, "pipeline", out)


if __name__ == "__main__":
    main()
