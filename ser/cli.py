"""The ``ser`` console script: ``ser train``, ``ser evaluate``, ...

Each subcommand parses its arguments, calls one library function and prints the
result; errors the user can fix are printed as one ``error:`` line with exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

DEFAULT_CONFIG = "configs/lstm.yaml"


def _quiet_tensorflow() -> None:
    # TF's C++ start-up chatter hides the lines users need; real errors still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config`` and repeatable ``--set KEY=VALUE`` for commands that read a config."""
    parser.add_argument(
        "--config", "-c", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.lstm.units=[256] (repeatable)",
    )


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
    _quiet_tensorflow()
    from ser.config import ConfigError
    from ser.registry import UnknownNameError

    args = build_parser().parse_args(argv)
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
