"""``ser export RUN_DIR --format savedmodel|tflite|onnx``: the model for TF Serving, TFLite or
ONNX Runtime."""

from __future__ import annotations

import argparse

from ser.cli import add_tensorflow_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a run's model as a SavedModel, TFLite or ONNX file",
        description="Write the model with its labels, normaliser and features config, then "
        "check that it gives the Keras model's probabilities.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, e.g. checkpoints/best")
    p.add_argument(
        "--format",
        required=True,
        choices=["savedmodel", "tflite", "onnx"],
        help="savedmodel, tflite or onnx (every model type; an ensemble as one graph)",
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/export/FORMAT)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")
    add_tensorflow_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ser.export import export_run

    meta = export_run(args.run_dir, args.format, args.out, overwrite=args.overwrite)
    shape = "x".join("?" if n is None else str(n) for n in meta["input"]["shape"])
    print(
        f"exported {meta['model_id']} as {meta['format']} to {meta['path']} "
        f"(input features {shape}; max difference from Keras {meta['parity_max_abs_diff']:.1e})"
    )
    return 0
