"""The default LSTM's training step: Keras's own recurrent loop against ``HoistedLSTM``.

Builds ``configs/lstm.yaml``'s model twice with the same weights, once with Keras's
``LSTM`` (the input kernel applied inside the loop, step by step) and once as the
project builds it (``ser.models.layers.HoistedLSTM``: the input kernel applied to every
frame before the loop), and times ``fit`` over the same batches, the two models
taking turns for ``--rounds`` rounds so that a shared machine's load falls on both;
the speed-up is the ratio of each model's fastest pass (the one least slowed by other
jobs), the medians are reported beside it.
The batches are synthetic normalised frames shaped like ``make train``'s: batches of
``train.batch_size`` clips, each batch's clips of similar length (as
``train.length_buckets`` makes them) with lengths drawn from 140 to 260 frames (clips
cut to their speech are 1.4 to 2.5 s at 10 ms). Also reports the largest difference
between the two models' probabilities on those batches. Needs no corpus.

    python -m bench.recurrent [--batches 40] [--rounds 9]
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np

from bench.common import ROOT, parser, table, write


@contextmanager
def keras_own_lstm():
    """Build ``ser.models.lstm``'s models with Keras's ``LSTM`` in place of ``HoistedLSTM``."""
    import keras

    import ser.models.lstm as lstm_module

    hoisted = lstm_module.HoistedLSTM
    lstm_module.HoistedLSTM = keras.layers.LSTM
    try:
        yield
    finally:
        lstm_module.HoistedLSTM = hoisted


def synthetic_batches(count: int, batch: int, dim: int, seed: int = 0) -> list:
    """``count`` (frames [batch, T, dim], labels [batch]) pairs, clips padded at the end."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        longest = int(rng.integers(140, 261))
        x = rng.standard_normal((batch, longest, dim)).astype(np.float32)
        for row in range(batch):
            x[row, int(rng.integers(longest - 30, longest + 1)) :] = 0.0
        out.append((x, rng.integers(0, 9, size=batch)))
    return out


def alternating_fit_passes(models: dict, dataset, rounds: int, batches: int) -> dict:
    """Time ``fit`` over ``dataset()`` for each compiled model, the models taking turns
    for ``rounds`` rounds (after one untimed pass each, which traces the step), so that a
    shared machine's load falls on all of them. Returns ``{"seconds": {name: [s per
    pass]}, "ms_fastest": {name: ms per step of the fastest pass}, "ms_median": {...}}``."""
    for model in models.values():
        model.fit(dataset(), epochs=1, verbose=0)  # traces the step function
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.fit(dataset(), epochs=1, verbose=0)
            seconds[name].append(time.perf_counter() - start)
    return {
        "seconds": seconds,
        "ms_fastest": {name: 1000 * float(np.min(s)) / batches for name, s in seconds.items()},
        "ms_median": {name: 1000 * float(np.median(s)) / batches for name, s in seconds.items()},
    }


def main() -> None:
    p = parser("recurrent", __doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=40, help="batches per timed pass")
    p.add_argument("--rounds", type=int, default=9, help="timed passes of each model, in turn")
    args = p.parse_args()

    import keras
    import tensorflow as tf

    from ser.config import load_config
    from ser.models import build_model

    cfg = load_config(ROOT / "configs" / "lstm.yaml")
    dim, classes = 206, len(cfg.data.emotions)
    batches = synthetic_batches(args.batches, cfg.train.batch_size, dim)
    signature = (tf.TensorSpec([None, None, dim]), tf.TensorSpec([None], tf.int64))

    def dataset():
        return tf.data.Dataset.from_generator(lambda: iter(batches), output_signature=signature)

    models = {}
    for name in ("keras LSTM", "HoistedLSTM"):
        keras.utils.set_random_seed(cfg.seed)
        if name == "keras LSTM":
            with keras_own_lstm():
                model = build_model(cfg.model, dim, classes)
        else:
            model = build_model(cfg.model, dim, classes)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        models[name] = model
    models["HoistedLSTM"].set_weights(models["keras LSTM"].get_weights())
    difference = max(
        float(np.abs(models["HoistedLSTM"](x) - models["keras LSTM"](x)).max())
        for x, _ in batches[:5]
    )
    passes = alternating_fit_passes(models, dataset, args.rounds, args.batches)
    seconds, ms, median = passes["seconds"], passes["ms_fastest"], passes["ms_median"]
    ratio = ms["keras LSTM"] / ms["HoistedLSTM"]
    print(
        table(
            [[name, ms[name], median[name], ms["keras LSTM"] / ms[name]] for name in models],
            ["recurrent loop", "ms / step (fastest pass)", "ms / step (median)", "speed-up"],
        )
    )
    print(f"largest probability difference with the same weights: {difference:.1e}")
    write(
        args.out,
        "recurrent",
        {
            "batches": args.batches,
            "rounds": args.rounds,
            "batch_size": cfg.train.batch_size,
            "ms_per_step_fastest_pass": ms,
            "ms_per_step_median": median,
            "seconds_per_pass": seconds,
            "speed_up": ratio,
            "max_probability_difference": difference,
        },
    )


if __name__ == "__main__":
    main()
