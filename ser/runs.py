"""The run directory: the one contract between training, evaluation, inference,
export and serving, and the only module that spells its file names.

``train()`` writes ``checkpoints/<run>/`` (under ``train.distribute: multi_worker``,
only the chief does: ``ser.multi_worker``)::

    model.keras          the model of the best validation epoch (an ensemble: the
                         members' averaged probabilities, one graph)
    config.json, metadata.json, model.weights.h5
                         the same model unzipped, so ``keras.models.load_model(run_dir)``
                         loads the directory itself
    run.yaml             the resolved config (``ser.config.save_config``)
    labels.json          the label list, in the order of the model's outputs
    normaliser.json      training-split mean and std of the model inputs
    speaker_prior.json   the average training speaker's statistics (only with
                         ``features.pooled_normalisation: speaker``)
    frame_prior.json     the average training speaker's frame statistics, which a
                         served clip is normalised by (sequence models with
                         ``features.normalisation: speaker``)
    split.json           the split: protocol, speaker lists, validation/test paths
    manifest.jsonl       one row per utterance the run saw
    versions.json        library versions and git commit at training time
    history.csv          one row per epoch (Keras CSVLogger)
    summary.json         test metrics, counts, timings: written last, when the run is done
    progress.json, backup/, .best-epochNNNN.keras
                         resume state while training (``--resume``)
    members/<k>/         a seed ensemble's member runs (``model.ensemble`` > 1),
                         each with its own model.keras, history.csv, member.json

``evaluate.py`` adds ``report.md``, ``report.json``, ``predictions.csv`` and the PNG
plots ``confusion.png``, ``per_class_recall.png`` and ``training_curves.png`` (those
drawn are listed in report.json's ``files``, those not drawn with the reason),
and ``cross_corpus/<corpus>/`` for a corpus the run never saw. ``checkpoints/best`` is
a relative symlink to the newest finished run. TensorBoard logs live apart, in
``experiments/<run>/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

MODEL = "model.keras"
CONFIG = "run.yaml"
LABELS = "labels.json"
NORMALISER = "normaliser.json"
SPEAKER_PRIOR = "speaker_prior.json"
FRAME_PRIOR = "frame_prior.json"
SPLIT = "split.json"
MANIFEST = "manifest.jsonl"
VERSIONS = "versions.json"
HISTORY = "history.csv"
SUMMARY = "summary.json"
PROGRESS = "progress.json"
BACKUP = "backup"
MEMBERS = "members"
MEMBER_DONE = "member.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PREDICTIONS = "predictions.csv"
CONFUSION_PLOT = "confusion.png"
RECALL_PLOT = "per_class_recall.png"
CURVES_PLOT = "training_curves.png"
PLOTS = (CONFUSION_PLOT, RECALL_PLOT, CURVES_PLOT)
CROSS_CORPUS = "cross_corpus"
CONDITIONS = "conditions.json"  # the test clips scored in other recording conditions
BEST_LINK = "best"
# What inference needs; the other files serve evaluation, resuming and provenance.
REQUIRED = (CONFIG, LABELS, NORMALISER, MODEL)
# A best-epoch model waiting for its epoch's backup before it becomes MODEL.
CANDIDATE_PATTERN = ".best-epoch*.keras"
# Libraries whose versions versions.json records.
LIBRARIES = (
    "tensorflow",
    "tensorflow-cpu",
    "keras",
    "librosa",
    "soundfile",
    "numpy",
    "scikit-learn",
)


class RunDirError(FileNotFoundError):
    """A path that is not a usable run directory; the message says what is missing."""


def check_run_dir(run_dir: str | os.PathLike[str]) -> Path:
    """The resolved run directory, or ``RunDirError`` naming what is missing."""
    path = Path(run_dir)
    if not path.exists():
        where = "" if path.is_absolute() else f" (relative to the current folder, {Path.cwd()})"
        raise RunDirError(f"{path}: no such run directory{where}")
    if not path.is_dir():
        raise RunDirError(f"{path}: not a directory; pass a run directory such as checkpoints/best")
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        raise RunDirError(
            f"{path}: not a run directory (missing {', '.join(missing)}); "
            "train one with `python train.py` or pass e.g. checkpoints/best"
        )
    return path.resolve()


def model_id_of(run_dir: Path) -> str:
    """``<run name>@<first 12 hex digits of sha256(model.keras)>``: names the exact weights."""
    digest = hashlib.sha256()
    with open(run_dir / MODEL, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{run_dir.name}@{digest.hexdigest()[:12]}"


def candidate_model(run_dir: Path, epoch: int) -> Path:
    """Where the best model of (1-based) ``epoch`` waits until that epoch is backed up."""
    return run_dir / f".best-epoch{epoch:04d}.keras"


def candidate_epoch(path: Path) -> int:
    """The epoch of a ``candidate_model`` path."""
    return int(path.stem.removeprefix(".best-epoch"))


def member_dir(run_dir: Path, member: int, members: int) -> Path:
    """Where ensemble member ``member`` trains: the run itself for a single model."""
    return run_dir if members == 1 else run_dir / MEMBERS / str(member)


def history_files(run_dir: Path) -> list[Path]:
    """The run's ``history.csv`` files: its own, or each ensemble member's in member
    order; empty when training wrote none."""
    if (run_dir / HISTORY).is_file():
        return [run_dir / HISTORY]
    members = [p for p in (run_dir / MEMBERS).glob(f"*/{HISTORY}") if p.parent.name.isdigit()]
    return sorted(members, key=lambda p: int(p.parent.name))


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None if it is missing or unreadable (optional files)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json(path: Path, obj: Any) -> None:
    """Written to a temporary file and renamed: a killed run leaves the old or the new."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def versions() -> dict[str, str]:
    """Python and library versions, and the git commit of this checkout (``versions.json``)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            check=False,
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        out["git_commit"] = sha.stdout.strip() if sha.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = "unknown"
    return out


def new_run_name(config_name: str, run_name: str | None = None) -> str:
    """``train.run_name`` if set, else ``<config name>-<YYYYmmdd-HHMMSS>``."""
    return run_name or f"{config_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def point_best(checkpoints_dir: Path, run_dir: Path) -> Path:
    """Atomically make ``checkpoints_dir/best`` a relative symlink to ``run_dir``."""
    link = checkpoints_dir / BEST_LINK
    tmp = checkpoints_dir / f".{BEST_LINK}.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.relpath(run_dir, checkpoints_dir), tmp)
    os.replace(tmp, link)
    return link
