"""What a shorter early-stopping patience would have kept, from cross-validated fold runs.

    python docs/generators/early_stopping_patience.py checkpoints/cv/<study>/<config> \
        [--patience 6 8 10] [--member 0]
    python docs/generators/early_stopping_patience.py checkpoints/<run>   # one run

Training validates every epoch, keeps the epoch of the best validation UA and stops
``train.early_stopping.patience`` epochs after it. A run's ``history.csv`` (each
member's, under ``members/<k>``) holds the validation UA of every epoch it trained. A
shorter patience trains exactly the same epochs up to its stop (the learning-rate
schedule, ``reduce_lr``, reacts to the same validation figures), so replaying the
history says, for each fold, the epoch a shorter patience would have kept and how many
epochs it would have trained: where the kept epoch is the run's own, the fold's model
and test UA are the run's. Only validation figures are read; no test figure is.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def stop(val_ua: list[float], patience: int) -> tuple[int, int]:
    """(kept epoch, epochs trained) of ``_replay``; the history's length where it ends first."""
    kept, trained, _ = _replay(val_ua, patience)
    return kept, trained


def _replay(val_ua: list[float], patience: int) -> tuple[int, int, bool]:
    """(kept epoch, epochs trained, whether it stopped within the history), 1-based, as
    training decides them: ``EpochReport``
    keeps the epoch of the best validation UA (a strictly higher float64 value; the first
    best on ties), and Keras's ``EarlyStopping`` stops ``patience`` epochs after its own
    last improvement, which it judges on the value as a float32 (two UAs that differ only
    in float64 rounding are a tie to it, so it can stop before the kept epoch + patience)."""
    kept_value, kept = float("-inf"), 0
    stopping_value, last_improvement = np.float32(-np.inf), 0
    for epoch, ua in enumerate(val_ua):
        if ua > kept_value:
            kept_value, kept = ua, epoch
        if np.float32(ua) > stopping_value:
            stopping_value, last_improvement = np.float32(ua), epoch
        if epoch - last_improvement >= patience:
            return kept + 1, epoch + 1, True
    return kept + 1, len(val_ua), False


def histories(config_dir: Path, member: int) -> list[tuple[str, list[float]]]:
    """(``corpus/fold``, validation UA by epoch) of every fold run's member ``member``
    (a single network's own ``history.csv`` where the run has no members)."""
    found = []
    runs = [config_dir] if (config_dir / "history.csv").is_file() else config_dir.glob("*/fold*")
    for fold in sorted(runs):
        path = fold / "members" / str(member) / "history.csv"
        path = path if path.is_file() else fold / "history.csv"
        if path.is_file():
            with path.open(newline="") as handle:
                found.append(
                    (
                        f"{fold.parent.name}/{fold.name}",
                        [float(r["val_ua"]) for r in csv.DictReader(handle)],
                    )
                )
    return found


def render(runs: list[tuple[str, list[float]]], trained_with: int, patience: list[int]) -> str:
    head = " | ".join(f"patience {p}: kept / trained" for p in patience)
    lines = [
        f"| fold | epochs trained (patience {trained_with}) | kept | {head} |",
        "|---|---:|---:|" + "---:|" * len(patience),
    ]
    same = dict.fromkeys(patience, 0)
    saved = dict.fromkeys(patience, 0)
    unknown = dict.fromkeys(patience, 0)
    for name, ua in runs:
        kept, trained = stop(ua, trained_with)
        cells = []
        for p in patience:
            k, t, stopped = _replay(ua, p)
            if not stopped and p > trained_with:  # it would train on past the history
                cells.append(f"? / > {t}")
                unknown[p] += 1
                continue
            same[p] += k == kept
            saved[p] += trained - t
            cells.append(f"{k} / {t}" if k == kept else f"**{k}** / {t}")
        lines.append(f"| {name} | {trained} | {kept} | " + " | ".join(cells) + " |")
    lines.append("")
    for p in patience:
        beyond = f" ({unknown[p]} would train past their history: unknown)" if unknown[p] else ""
        known = len(runs) - unknown[p]
        lines.append(
            f"- patience {p}: the run's own epoch kept on {same[p]} of {known} folds{beyond}; "
            f"{saved[p]} epochs fewer in all ({saved[p] / max(known, 1):.1f} a fold)"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "config_dir", type=Path, help="checkpoints/cv/<study>/<config>, or one run directory"
    )
    parser.add_argument("--patience", type=int, nargs="+", default=[6, 8, 10])
    parser.add_argument("--trained-with", type=int, default=12, help="the runs' own patience")
    parser.add_argument("--member", type=int, default=0, help="which member of an ensemble")
    args = parser.parse_args()
    runs = histories(args.config_dir, args.member)
    if not runs:
        raise SystemExit(f"{args.config_dir}: no fold run with a history.csv")
    print(render(runs, args.trained_with, args.patience))


if __name__ == "__main__":
    main()
