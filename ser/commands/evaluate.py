"""``ser evaluate``: score a run against scikit-learn baselines, on its own test split,
on an unseen corpus (``--corpus``), or cross-validate configs by speaker (``--cv``)."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from ser.cli import add_tensorflow_args
from ser.config import CONFIG_LOOKUP_HELP, DATA_ROOT_ENV, DEFAULT_CONFIG_NAME, default_config_path

EXAMPLES = """examples:
  python evaluate.py checkpoints/best                     report.md/json + plots in the run folder
  python evaluate.py checkpoints/best --grid              baselines' grids searched on training speakers
  python evaluate.py checkpoints/best --corpus emodb      cross-corpus: a corpus the run never saw
  python evaluate.py checkpoints/best --data-root /new/place/of/corpora
  python evaluate.py --cv --config configs/dense.yaml     speaker-grouped k-fold per corpus
  python evaluate.py --cv -c configs/lstm.yaml -c configs/cnn.yaml -c configs/dense.yaml \\
      --speaker-dependent --results docs/results/defaults.md   the detail page behind docs/RESULTS.md
"""


# Long: one flat list of the command's options, each with its help text.
def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a run against baselines, cross-corpus, or cross-validate configs",
        description="Evaluate a trained run (UA, WA, macro-F1, per-class scores, confusion "
        "matrix) against scikit-learn baselines on the same split and features, or run "
        "speaker-grouped cross-validation (--cv).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "run_dir", nargs="?", metavar="RUN_DIR", help="a run directory, e.g. checkpoints/best"
    )
    p.add_argument(
        "--config",
        "-c",
        action="append",
        default=[],
        metavar="YAML",
        help="with RUN_DIR: use this file's evaluation section; with --cv: a config to "
        f"cross-validate (repeatable; default: the shipped {DEFAULT_CONFIG_NAME}); "
        + CONFIG_LOOKUP_HELP,
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (with RUN_DIR only evaluation.* keys), repeatable",
    )
    p.add_argument(
        "--grid", action="store_true", help="search each baseline's grid (training speakers only)"
    )
    p.add_argument(
        "--baselines", metavar="NAMES", help="comma-separated subset, e.g. svc,knn,seed_mlp"
    )
    p.add_argument("--no-baselines", action="store_true", help="score the Keras model only")
    p.add_argument(
        "--corpus",
        action="append",
        default=[],
        metavar="NAME",
        help="cross-corpus: evaluate RUN_DIR on this corpus, which it was not trained on (repeatable)",
    )
    p.add_argument(
        "--data-root",
        metavar="DIR",
        help="folder holding the corpus folders, if they moved since training "
        "(default: $SER_DATA_ROOT, else the run's data.root, whichever holds the run's files)",
    )
    p.add_argument(
        "--cv", action="store_true", help="speaker-grouped cross-validation (see evaluation.cv)"
    )
    p.add_argument("--no-keras", action="store_true", help="--cv: baselines only")
    p.add_argument(
        "--speaker-dependent",
        action="store_true",
        help="--cv: also score baselines on random (SPEAKER-DEPENDENT) splits, for the gap",
    )
    p.add_argument(
        "--out", metavar="DIR", help="--cv: output folder (default checkpoints/cv/<name>-<time>)"
    )
    p.add_argument(
        "--resume", metavar="CV_DIR", help="--cv: continue an interrupted cross-validation"
    )
    p.add_argument(
        "--results",
        metavar="MARKDOWN",
        help="--cv: also write the results page, e.g. docs/results/defaults.md",
    )
    p.add_argument(
        "--perturb",
        metavar="CONDITIONS",
        help="score the test clips in other recording conditions, each clip alone and by "
        "speaker, beside the clean clips: comma-separated, e.g. "
        "gain:-20,clip:12,telephone,noise:white:10,noise:pink:20,babble:10,mp3:32,reverb:0.4 "
        "(ser.perturb lists them); writes conditions.json into RUN_DIR, or with --cv into "
        "the cross-validation folder for every fold",
    )
    p.add_argument(
        "--perturb-corpora",
        metavar="NAMES",
        help="--cv --perturb: only these corpora's folds, comma-separated (each clip and "
        "condition costs one feature extraction)",
    )
    add_tensorflow_args(p)
    p.set_defaults(func=run)


def _shortcuts(args: argparse.Namespace) -> list[str]:
    extra = []
    if args.grid:
        extra.append("evaluation.grid=true")
    if args.baselines:
        names = [n.strip() for n in args.baselines.split(",") if n.strip()]
        extra.append(f"evaluation.baselines=[{', '.join(names)}]")
    return extra


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this cross-validation (``--resume`` left out: a
    resumed run continues the same command), with the data root when it came from
    the environment."""
    words = ["python", "evaluate.py", "--cv"] + ([args.run_dir] if args.run_dir else [])
    for path in args.config:
        words += ["--config", path]
    for text in args.overrides:
        words += ["--set", text]
    for flag in ("grid", "no_baselines", "no_keras", "speaker_dependent"):
        if getattr(args, flag):
            words.append("--" + flag.replace("_", "-"))
    for option in ("baselines", "data_root", "out", "results", "perturb", "perturb_corpora"):
        if getattr(args, option):
            words += ["--" + option.replace("_", "-"), getattr(args, option)]
    command = shlex.join(words)
    if os.environ.get(DATA_ROOT_ENV):
        command = f"{DATA_ROOT_ENV}={shlex.quote(os.environ[DATA_ROOT_ENV])} {command}"
    return command


def _cross_validate(args: argparse.Namespace) -> int:
    from ser.config import load_config
    from ser.crossval import cross_validate
    from ser.reports import render_results_markdown
    from ser.runs import CONFIG, check_run_dir

    overrides = list(args.overrides) + _shortcuts(args)
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.run_dir:
        if args.config:
            raise RuntimeError("--cv takes either RUN_DIR (its config) or --config, not both")
        cfgs = [load_config(check_run_dir(args.run_dir) / CONFIG, overrides)]
    else:
        cfgs = [load_config(path, overrides) for path in (args.config or [default_config_path()])]
    result = cross_validate(
        cfgs,
        keras=not args.no_keras,
        baselines=not args.no_baselines,
        speaker_dependent=True if args.speaker_dependent else None,
        out_dir=args.resume or args.out,
        resume=bool(args.resume),
        command=_command_line(args),
    )
    conditions = _score_conditions(result["out_dir"], args) if args.perturb else None
    if args.results:
        path = Path(args.results)
        path.parent.mkdir(parents=True, exist_ok=True)
        page = render_results_markdown(result, result["command"], conditions)
        path.write_text(page, encoding="utf-8")
        print(f"results: {path}")
    return 0


def _score_conditions(where: str, args: argparse.Namespace) -> str:
    """``--perturb``: score a run, or every fold of a cross-validation, in the conditions;
    prints the table and returns it."""
    from ser.condition_evaluation import (
        evaluate_cv_conditions,
        evaluate_run_conditions,
        render_conditions,
    )

    if args.cv:
        corpora = [c.strip() for c in (args.perturb_corpora or "").split(",") if c.strip()]
        result = evaluate_cv_conditions(
            where, args.perturb, corpora=corpora, data_root=args.data_root
        )
    else:
        one = evaluate_run_conditions(where, args.perturb, data_root=args.data_root)
        result = {"conditions": list(one["conditions"]), "corpora": {"test": [one]}}
    table = render_conditions(result)
    print(table)
    return table


def run(args: argparse.Namespace) -> int:
    from ser.cross_corpus import evaluate_cross_corpus
    from ser.data.splits import SplitError
    from ser.evaluation import evaluate_run

    try:
        if args.perturb:
            from ser.perturb import parse_conditions

            parse_conditions(args.perturb)  # a typo fails now, not after the training
        if args.cv:
            return _cross_validate(args)
        if not args.run_dir:
            raise RuntimeError(
                "pass a run directory (e.g. checkpoints/best), or --cv to cross-validate configs"
            )
        if len(args.config) > 1:
            raise RuntimeError("with RUN_DIR, --config names one file (its evaluation section)")
        for flag, given in (
            ("--no-keras", args.no_keras),
            ("--speaker-dependent", args.speaker_dependent),
            ("--out", args.out),
            ("--resume", args.resume),
            ("--results", args.results),
        ):
            if given:
                raise RuntimeError(f"{flag} only applies with --cv")
        common = {
            "config": args.config[0] if args.config else None,
            "overrides": list(args.overrides) + _shortcuts(args),
            "data_root": args.data_root,
            "baselines": not args.no_baselines,
        }
        if args.perturb:
            if args.corpus:
                raise RuntimeError("--perturb scores the run's own test split, not --corpus")
            _score_conditions(args.run_dir, args)
        elif args.corpus:
            for corpus in args.corpus:
                evaluate_cross_corpus(args.run_dir, corpus, **common)
        else:
            evaluate_run(args.run_dir, **common)
    except SplitError as exc:
        raise RuntimeError(str(exc)) from None
    return 0
