"""The ``ser`` console script: ``ser train``, ``ser evaluate``, ...

Each subcommand parses its arguments, calls one library function and prints the
result; errors the user can fix are printed as one ``error:`` line with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config`` and repeatable ``--set KEY=VALUE`` for commands that read a config."""
    from ser.config import CONFIG_LOOKUP_HELP, DEFAULT_CONFIG_NAME, default_config_path

    parser.add_argument(
        "--config",
        "-c",
        default=str(default_config_path()),
        help=f"YAML config (default: the shipped {DEFAULT_CONFIG_NAME}); {CONFIG_LOOKUP_HELP}",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.lstm.units=[256] (repeatable)",
    )


def add_runtime_arg(parser: argparse.ArgumentParser, default: str) -> None:
    """``--runtime`` (what runs the model, see ``Predictor.load``) and ``--onnx``, its
    alias for ``--runtime onnx``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--runtime",
        choices=["auto", "numpy", "onnx", "keras"],
        default=default,
        help=f"what runs the model (default {default}): auto runs every model type this "
        "project trains (lstm, cnn, crnn, tcn, dense, ensembles) on ONNX Runtime (no TensorFlow "
        "import, the fastest calls) and a model holding any other layer on Keras; onnx "
        "always ONNX Runtime, an error naming the layer it cannot convert otherwise; numpy "
        "the same models on NumPy alone; keras always XLA-compiled Keras",
    )
    group.add_argument(
        "--onnx",
        dest="runtime",
        action="store_const",
        const="onnx",
        default=argparse.SUPPRESS,
        help="same as --runtime onnx: run the model on ONNX Runtime, or stop with an error "
        "naming the layer that cannot be converted",
    )


def add_tensorflow_args(parser: argparse.ArgumentParser, *, on_demand: bool = False) -> None:
    """``--verbose`` for commands that use TensorFlow, imported without its start-up
    notices unless ``--verbose`` is given: by ``main`` before the command runs, or, with
    ``on_demand``, only if the command comes to need it (a dense model runs on NumPy, so
    ``ser predict`` with one never pays TensorFlow's ~6 s import)."""
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="also show TensorFlow's start-up notices and C++ log lines (hidden by default; "
        "failures are reported either way)",
    )
    parser.set_defaults(uses_tensorflow="on_demand" if on_demand else True)


# Each module defines ``add_parser(subparsers)``, adding one subcommand whose
# ``func(args) -> int`` does the work. Imports are deferred to keep ``--help`` fast.
COMMAND_MODULES = (
    "ser.commands.train",
    "ser.commands.data",
    "ser.commands.predict",
    "ser.commands.serve",
    "ser.commands.record",
    "ser.commands.export",
    "ser.commands.evaluate",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="ser", description="Speech emotion recognition.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ser.config import ConfigError
    from ser.registry import UnknownNameError

    args = build_parser().parse_args(argv)
    uses = getattr(args, "uses_tensorflow", False)
    if uses:
        from ser.tensorflow_startup import import_tensorflow, set_verbose

        set_verbose(args.verbose)  # for an import on demand, later
        if uses is True:
            import_tensorflow(verbose=args.verbose)
    try:
        return int(args.func(args) or 0)
    # OSError: missing or existing paths, a full disk, an unwritable cache (CacheError).
    except (ConfigError, UnknownNameError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with: ser train --resume <run directory>", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
