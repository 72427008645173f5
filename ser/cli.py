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


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.lstm.units=[256] (repeatable)",
    )


def cmd_train(args: argparse.Namespace) -> int:
    from ser.config import load_config
    from ser.training import train

    if args.resume:
        train(load_config(None, env={}), resume=args.resume)
        return 0
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(cfg.to_yaml())
        return 0
    train(cfg)
    return 0




def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ser", description="Speech emotion recognition.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML config")
    _config_args(p)
    p.add_argument(
        "--resume", metavar="RUN_DIR",
        help="continue an interrupted run from its directory (uses the run's saved config)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_tensorflow()
    from ser.config import ConfigError
    from ser.registry import UnknownNameError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, UnknownNameError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with: ser train --resume <run directory>", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
