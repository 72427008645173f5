"""``ser train``: train a model from a YAML config, or resume an interrupted run."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import TYPE_CHECKING

from ser.cli import add_config_args, add_tensorflow_args

if TYPE_CHECKING:
    from ser.config import Config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from a YAML config",
        description="Train a model from a YAML config (default: the shipped lstm.yaml). The "
        "run goes to train.checkpoints_dir/<run> (checkpoints/), TensorBoard logs to "
        "train.experiments_dir (experiments/) and features to features.cache_dir (data/cache): "
        "relative paths there are taken from the current folder. A configured corpus missing "
        "under data.root is named with its source and licence and downloaded once the licence "
        "is accepted (a y/N question at a terminal, or --accept-licences). With "
        "--set train.distribute=multi_worker, run the same command on every host, each with "
        "its TF_CONFIG (README: Training on several machines).",
    )
    add_config_args(p)
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its directory (uses the run's saved config)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "--accept-licences",
        action="store_true",
        help="download missing corpora without asking, accepting their licences (printed "
        "first); same as SER_ACCEPT_LICENCES=1",
    )
    add_tensorflow_args(p, on_demand=True)  # imported once the features are cached
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ser.config import load_config
    from ser.tensorflow_startup import import_tensorflow

    if args.resume:
        import_tensorflow()
        from ser.training import train

        train(load_config(None, env={}), resume=args.resume)
        return 0
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(cfg.to_yaml())
        return 0
    from ser.multi_worker import task_for

    task_for(cfg.train.distribute)  # a missing or malformed TF_CONFIG fails before any work
    from ser.data.prepare import augment_conditions

    augment_conditions(cfg)  # so does a condition that cannot run here (opus without ffmpeg)
    try:
        cfg = _with_corpora(cfg, args)
    except KeyboardInterrupt:
        from ser.datatools.fetch_missing import interrupted_message

        print(interrupted_message(cfg.data.root), file=sys.stderr)
        return 130
    from ser.data.prepare import fill_feature_cache

    extracted = fill_feature_cache(cfg)  # before TensorFlow's import: see there
    import_tensorflow()
    from ser.training import train

    train(cfg, manifest=extracted)
    return 0


def _with_corpora(cfg: Config, args: argparse.Namespace) -> Config:
    """``cfg`` once its corpora are under the data root, fetched if need be (see
    ``ser.datatools.fetch_missing``); ``CorporaMissing`` when they are not."""
    from ser.config import parse_override
    from ser.datatools.fetch_missing import ensure_corpora, licences_accepted

    subset = any(parse_override(text)[0] == "data.corpora" for text in args.overrides)
    accepted = licences_accepted(args.accept_licences, os.environ)
    say = functools.partial(print, flush=True)  # in order with the error lines on stderr
    return ensure_corpora(cfg, accepted=accepted, subset=subset, log=say)
