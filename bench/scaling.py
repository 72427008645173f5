"""How cost grows with data: extraction and training time at 25, 50 and 100 % of the corpora.

Each fraction takes every k-th utterance of each corpus (so the mix of corpora,
speakers and emotions is kept), extracts its features into an empty cache on all
cores, and trains the default LSTM for ``--epochs`` epochs (time per epoch reported).

    python -m bench.scaling [--limit 400] [--epochs 1] [--model lstm]
"""

from __future__ import annotations

import tempfile

from bench.common import (
    bench_config,
    epoch_seconds,
    manifest_rows,
    parser,
    prepare,
    table,
    timed,
    write,
)


def fraction_of(rows, fraction: float):
    out = []
    for corpus in sorted({r.corpus for r in rows}):
        mine = [r for r in rows if r.corpus == corpus]
        keep = max(1, round(len(mine) * fraction))
        step = len(mine) / keep
        out += [mine[int(i * step)] for i in range(keep)]
    return out


def main() -> None:
    p = parser("scaling", __doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--model", default="lstm", choices=["lstm", "cnn", "dense"])
    args = p.parse_args()
    cfg = bench_config(args, f"{args.model}.yaml")
    rows = manifest_rows(args)
    results = []
    for fraction in (0.25, 0.5, 1.0):
        subset = fraction_of(rows, fraction)
        hours = sum(r.duration for r in subset) / 3600
        with tempfile.TemporaryDirectory() as cache:
            prep, data = timed(lambda: prepare(cfg, subset, cache))
        epochs = epoch_seconds(cfg, data, args.epochs)
        results.append(
            {
                "fraction": fraction,
                "files": len(subset),
                "hours": hours,
                "extract_and_prepare_s": prep,
                "epoch_s": min(epochs),
                "train_examples": len(data.rows["train"]),
            }
        )
    base = results[-1]
    print(
        table(
            [
                [
                    f"{r['fraction']:.0%}",
                    r["files"],
                    r["hours"],
                    r["extract_and_prepare_s"],
                    r["epoch_s"],
                    r["epoch_s"] / base["epoch_s"],
                ]
                for r in results
            ],
            [
                "data",
                "files",
                "hours",
                "extract+prepare s",
                f"{args.model} epoch s",
                "epoch vs 100 %",
            ],
        )
    )
    write(args.out, "scaling", {"model": args.model, "epochs": args.epochs, "results": results})


if __name__ == "__main__":
    main()
