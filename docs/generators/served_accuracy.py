"""How accurate a speaker-normalised model is when served, clip by clip.

    python docs/generators/served_accuracy.py checkpoints/cv/accuracy/<config> [--json out.json]

Cross-validation normalises each test speaker's pooled vectors by the statistics of
all of that speaker's clips at once. A served clip arrives alone, or one after another
in a session (``?session=`` on the HTTP API, every WebSocket stream). For every fold
run of one cross-validated config (``<config>/<corpus>/fold<k>``), this replays each
test speaker's clips in a seeded random order through ``Predictor`` three ways:

- ``prior``: each clip alone, normalised by the average training speaker;
- ``session``: the clips in order through one ``SpeakerSession`` per speaker (each
  clip counted, then normalised by the speaker's statistics so far, shrunk towards
  the prior);
- ``speaker``: all of the speaker's clips at once, as cross-validation scores them.

A sequence model on speaker-normalised frames is replayed the same ways, its session
keeping statistics of the speaker's frames (``SpeakerSession.add_frames``) and its
``prior`` the average training speaker's frames (``frame_prior.json``).

The script prints UA per corpus (mean ± std over folds) and the session's UA by how
many of the speaker's clips it had heard. Labels only score; nothing is chosen here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]  # the checkout, so `ser` imports from it
sys.path.insert(0, str(ROOT))


def replay_fold(run_dir: Path, seed: int = 0) -> dict:
    """UA of one fold run in the served modes, and session hits by position."""
    from ser.evaluation import load_run_data
    from ser.inference import Predictor
    from ser.served_evaluation import served_modes

    predictor = Predictor.load(run_dir, xla=False)
    frames = predictor.cfg.features.speaker_normalised_frames
    if predictor.speaker_prior is None and not frames:
        raise SystemExit(
            f"{run_dir}: not a speaker-normalised run (features.pooled_normalisation, or "
            "features.normalisation in sequence mode)"
        )
    data = load_run_data(predictor, log=lambda _line: None)
    if frames:
        # A run saved before frame_prior.json existed: the same statistics, recomputed
        # from its own training split as training computes them.
        predictor.frame_prior = predictor.frame_prior or data.frame_prior
    return {"fold": run_dir.name, **served_modes(predictor, data, seed)}


def render(config: str, results: dict[str, list[dict]]) -> str:
    def cell(values: list[float]) -> str:
        spread = 100 * np.std(values, ddof=1) if len(values) > 1 else 0
        return f"{100 * np.mean(values):.1f} ± {spread:.1f}"

    lines = [
        f"Config `{config}`, every fold run of its cross-validation; UA % mean ± std over folds.",
        "",
        (
            "| corpus | folds | each clip alone (prior) | session, random order | "
            "session, sorted by emotion | all of the speaker's clips (as CV) |"
        ),
        "|---|---:|---:|---:|---:|---:|",
    ]
    modes = ("prior", "session", "session_by_emotion", "speaker")
    for corpus, folds in results.items():
        cells = " | ".join(
            cell([f["ua"][k] for f in folds]) if all(k in f["ua"] for f in folds) else "n/a"
            for k in modes
        )
        lines.append(f"| {corpus} | {len(folds)} | {cells} |")
    first = next(iter(results.values()))[0]
    if "session_hits_by_position" not in first:  # results replayed without sessions
        return "\n".join(lines)
    names = list(first["session_hits_by_position"])
    for key, order in (
        ("session_hits_by_position", "random order"),
        ("session_by_emotion_hits_by_position", "sorted by emotion"),
    ):
        lines += [
            "",
            (
                f"Session accuracy ({order}; plain, all folds pooled) by the clip's position in "
                "its speaker's session:"
            ),
            "",
            "| corpus | " + " | ".join(f"clip {n}" for n in names) + " |",
            "|---|" + "---:|" * len(names),
        ]
        for corpus, folds in results.items():
            cells = []
            for name in names:
                hits = [h for f in folds for h in f.get(key, {}).get(name, [])]
                cells.append(f"{100 * np.mean(hits):.1f} (n={len(hits)})" if hits else "")
            lines.append(f"| {corpus} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fold_runs(path: Path) -> tuple[Path, dict[str, list[Path]]]:
    """The config folder at ``path`` and its finished fold runs by corpus
    (``<corpus>/fold<k>/summary.json``). ``path`` may also be the cross-validation
    folder around one config's folder; ``SystemExit`` naming the choices when it holds
    several, or naming ``path`` when it holds none."""
    from ser import runs

    def finished(config_dir: Path) -> dict[str, list[Path]]:
        found = {}
        for corpus_dir in sorted(p for p in config_dir.iterdir() if p.is_dir()):
            folds = sorted(p for p in corpus_dir.glob("fold*") if (p / runs.SUMMARY).is_file())
            if folds:
                found[corpus_dir.name] = folds
        return found

    if not path.is_dir():
        raise SystemExit(f"{path}: no such folder")
    if found := finished(path):
        return path, found
    inside = {p: f for p in sorted(path.iterdir()) if p.is_dir() and (f := finished(p))}
    if len(inside) == 1:
        return next(iter(inside.items()))
    if inside:
        names = ", ".join(str(p) for p in inside)
        raise SystemExit(f"{path} holds several configs' fold runs; name one of: {names}")
    raise SystemExit(f"{path}: no finished fold runs (<corpus>/fold<k>/summary.json)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "config_dir",
        type=Path,
        help="checkpoints/cv/<study>/<config> (or checkpoints/cv/<study> holding one config)",
    )
    parser.add_argument("--json", type=Path, help="also write every fold's figures here")
    parser.add_argument("--seed", type=int, default=0, help="order of each speaker's clips")
    parser.add_argument(
        "--from-json", type=Path, metavar="JSON", help="render the tables of an earlier --json"
    )
    args = parser.parse_args(argv)
    if args.from_json:
        print(render(args.config_dir.name, json.loads(args.from_json.read_text(encoding="utf-8"))))
        return 0
    config_dir, fold_dirs = fold_runs(args.config_dir)
    results: dict[str, list[dict]] = {}
    for corpus, folds in fold_dirs.items():
        results[corpus] = []
        for fold in folds:
            print(f"{corpus} {fold.name} ...", file=sys.stderr, flush=True)
            results[corpus].append(replay_fold(fold, args.seed))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(render(config_dir.name, results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
