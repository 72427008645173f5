"""Test UA of each member of a cross-validated seed ensemble, their average, and the
run's own model (a distilled student, or the average itself), fold by fold.

    python docs/generators/ensemble_members.py checkpoints/cv/<study>/<config>

Each member of ``model.ensemble`` is a single network of the same recipe with its own
seed (and, with ``model.member_types``, its own model type), so the members are
single-network runs on the very folds, features and copies of their ensemble (or of the
student distilled from them): a control measured beside it. Each fold's test speakers are scored from the run's saved split through
``load_run_data`` and the run's normaliser, as ``evaluate.py`` scores the run. Labels
only score; nothing is chosen here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]  # the checkout, so `ser` imports from it
sys.path.insert(0, str(ROOT))


def score_fold(run_dir: Path) -> list[float]:
    """UA % of member 0, 1, ..., the members' average and the run's model on the fold."""
    import keras

    import ser.models.layers  # noqa: F401  (registers the project's layers for loading)
    from ser import runs
    from ser.data.pipeline import make_dataset
    from ser.evaluation import load_run_data
    from ser.inference import Predictor
    from ser.metrics import unweighted_accuracy

    predictor = Predictor.load(run_dir, xla=False)
    data = load_run_data(predictor, log=lambda _line: None)
    inputs = make_dataset(
        data.inputs["test"],
        None,
        normaliser=predictor.normaliser,
        batch_size=32,
        training=False,
        seed=0,
    )
    members = sorted(
        (p for p in (run_dir / runs.MEMBERS).iterdir() if p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    probs = [keras.models.load_model(p / runs.MODEL).predict(inputs, verbose=0) for p in members]
    own = predictor.model.predict(inputs, verbose=0)

    def ua(p: np.ndarray) -> float:
        return 100 * unweighted_accuracy(data.targets["test"], p.argmax(axis=1), len(data.labels))

    return [ua(p) for p in probs] + [ua(np.mean(probs, axis=0)), ua(own)]


def member_names(run_dir: Path) -> list[str]:
    """``member k (seed +k)`` for each member of the run, with its model type when the
    ensemble is across types (``model.member_types``; read from ``member.json``)."""
    import json

    from ser import runs

    summary = json.loads((run_dir / runs.SUMMARY).read_text())
    fits = [f for f in summary["members"] if not f.get("student")]
    types = {f.get("type") for f in fits}
    return [
        f"member {k} ({f['type'] + ', ' if len(types) > 1 else ''}seed +{k})"
        for k, f in enumerate(fits)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config_dir", type=Path, help="checkpoints/cv/<study>/<config>")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "docs" / "generators"))
    from served_accuracy import fold_runs

    config_dir, fold_dirs = fold_runs(args.config_dir)
    print(f"Config `{config_dir.name}`: test UA % by fold.\n")
    for corpus, folds in fold_dirs.items():
        rows = [(fold.name, score_fold(fold)) for fold in folds]
        head = member_names(folds[0]) + ["members' average", "run's model"]
        print(f"| {corpus} | " + " | ".join(head) + " |")
        print("|---|" + "---:|" * len(head))
        for name, values in rows:
            print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
        means = np.mean([v for _, v in rows], axis=0)
        print(f"| mean of {len(rows)} | " + " | ".join(f"{v:.1f}" for v in means) + " |\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
