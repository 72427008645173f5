"""Training step time of each sequence model type on the default's inputs.

Builds the model of each config given (by default ``configs/lstm.yaml``, ``configs/cnn.yaml``
and the TCN on the same recipe) for the default's 206 frame features and nine classes,
and times ``fit`` over the same synthetic batches (``bench.recurrent.synthetic_batches``:
batches of ``train.batch_size`` clips of similar length, 140 to 260 frames), the models
taking turns for ``--rounds`` rounds so that a shared machine's load falls on all of
them; each model's speed is its fastest pass (the one least slowed by other jobs), the
medians are reported beside it. Needs no corpus.

    python -m bench.model_step [--configs A.yaml B.yaml ...] [--batches 40] [--rounds 5]
"""

from __future__ import annotations

from bench.common import ROOT, parser, table, write
from bench.recurrent import alternating_fit_passes, synthetic_batches

DEFAULT_CONFIGS = (
    "configs/lstm.yaml",
    "configs/cnn.yaml",
    "configs/experiments/tcn_spk_level_conditions_served_span_buckets_fg16.yaml",
)
FRAME_FEATURES = 206  # configs/features/frames_prosody.yaml's features per frame


def main() -> None:
    p = parser("model_step", __doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="configs to compare")
    p.add_argument("--batches", type=int, default=40, help="batches per timed pass")
    p.add_argument("--rounds", type=int, default=5, help="timed passes of each model, in turn")
    args = p.parse_args()

    import keras
    import tensorflow as tf

    from ser.config import load_config
    from ser.models import build_model

    configs = {path: load_config(ROOT / path) for path in args.configs}
    first = next(iter(configs.values()))
    batches = synthetic_batches(args.batches, first.train.batch_size, FRAME_FEATURES)
    signature = (tf.TensorSpec([None, None, FRAME_FEATURES]), tf.TensorSpec([None], tf.int64))

    def dataset():
        return tf.data.Dataset.from_generator(lambda: iter(batches), output_signature=signature)

    models = {}
    for path, cfg in configs.items():
        keras.utils.set_random_seed(cfg.seed)
        model = build_model(cfg.model, FRAME_FEATURES, len(cfg.data.emotions))
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        models[f"{cfg.model.type} ({cfg.name})"] = model
    passes = alternating_fit_passes(models, dataset, args.rounds, args.batches)
    seconds, ms, median = passes["seconds"], passes["ms_fastest"], passes["ms_median"]
    parameters = {name: model.count_params() for name, model in models.items()}
    reference = next(iter(ms))
    print(
        table(
            [
                [name, parameters[name], ms[name], median[name], ms[reference] / ms[name]]
                for name in models
            ],
            ["model", "parameters", "ms / step (fastest pass)", "ms / step (median)", "speed-up"],
        )
    )
    write(
        args.out,
        "model_step",
        {
            "configs": args.configs,
            "batches": args.batches,
            "rounds": args.rounds,
            "batch_size": first.train.batch_size,
            "parameters": parameters,
            "ms_per_step_fastest_pass": ms,
            "ms_per_step_median": median,
            "seconds_per_pass": seconds,
        },
    )


if __name__ == "__main__":
    main()
