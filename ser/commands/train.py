"""``ser train``: train a model from a YAML config, or resume an interrupted run."""

from __future__ import annotations

import argparse

from ser.cli import add_config_args, add_tensorflow_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from a YAML config",
        description="Train a model from a YAML config (default: the shipped lstm.yaml). The "
        "run goes to train.checkpoints_dir/<run> (checkpoints/), TensorBoard logs to "
        "train.experiments_dir (experiments/) and features to features.cache_dir (data/cache): "
        "relative paths there are taken from the current folder.",
    )
    add_config_args(p)
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its directory (uses the run's saved config)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    add_tensorflow_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ser.config import load_config

    if args.resume:
        from ser.training import train

        train(load_config(None, env={}), resume=args.resume)
        return 0
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(cfg.to_yaml())
        return 0
    from ser.training import train

    train(cfg)
    return 0
