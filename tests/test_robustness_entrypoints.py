"""Every awkward input through the other entry points: ``evaluate.py``, ``ser predict``,
``ser data convert``, the HTTP API and the WebSocket stream.

Each usable case is accepted; each broken one is named with the reason and skipped
while the rest goes on; a command exits non-zero only when nothing usable remains;
the API answers 4xx with a JSON error (never 500) and keeps no upload on disk; the
stream answers a bad frame with an error message and a clean close. What each entry
point did is recorded (``robustlog``) for ROBUSTNESS.md, which ``robustness_report.py``
renders; its renderer is tested at the end.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from badinputs import CATALOGUE, NAME_CASES, ROWS, expected_usable, short, write_corpus
from fastapi.testclient import TestClient
from robustlog import record
from starlette.websockets import WebSocketDisconnect
from tiny_run import ROOT, tiny_run, tone

from ser.cli import main
from ser.inference import Predictor
from ser.serving.app import create_app
from ser.serving.settings import ServingSettings

FOLDER = "directory named like a file"
# Uploads above the API's configured limits are refused whatever their content.
SETTINGS = ServingSettings(
    max_upload_mb=25, max_clip_seconds=120, max_batch_files=len(ROWS), max_batch_windows=2,
    stream_window=1.0, stream_hop=1.0, stream_max_chunk_seconds=2.0,
)  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """``root/custom``: every case (the 10-minute one written once here) and good clips."""
    root = tmp_path_factory.mktemp("entry")
    return root, write_corpus(root / "custom", good_per_class=3)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    return Predictor.load(tiny_run(tmp_path_factory))


@pytest.fixture(scope="module")
def run_dir(predictor) -> Path:
    return predictor.run_dir


@pytest.fixture
def load_once(predictor, monkeypatch):
    """``ser predict`` runs unchanged but gets the module's loaded model instead of
    loading and compiling it again for every call (seconds each)."""

    def load(cls, run_dir, **_kw):
        assert Path(run_dir) == predictor.run_dir
        return predictor

    monkeypatch.setattr(Predictor, "load", classmethod(load))


def good_clip(corpus) -> Path:
    return corpus[0] / "custom" / "good" / "good0_sad.wav"


# ------------------------------------------------------------------ evaluate.py
def evaluate(run_dir: Path, root: Path, capsys) -> tuple[int, str]:
    code = main([
        "evaluate", str(run_dir), "--corpus", "custom", "--data-root", str(root),
        "--no-baselines", "--set", "evaluation.plots=false", "--set", "evaluation.tensorboard=false",
    ])  # fmt: skip
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_evaluate_skips_bad_files_with_a_count_and_scores_the_rest(run_dir, corpus, capsys):
    root, paths = corpus
    code, out = evaluate(run_dir, root, capsys)
    assert code == 0, out
    lines = out.splitlines()
    with open(run_dir / "cross_corpus" / "custom" / "predictions.csv", encoding="utf-8") as f:
        scored = {row["path"] for row in csv.DictReader(f)}
    named = {
        case: next((line for line in lines if line.startswith("warning:") and str(p) in line), "")
        for case, p in paths.items()
    }
    rejected = [c for c in ROWS if c != FOLDER and (c in NAME_CASES or not expected_usable(c))]
    # The count: the reader's skipped files (all but NaN), then extraction's failure.
    assert f"{len(rejected) - 1} files skipped" in out
    assert "1 failed" in next(line for line in lines if line.startswith("features:"))
    assert len(scored) == 6 + len([c for c in CATALOGUE if c != FOLDER and c not in rejected])
    for case in ROWS:
        path = str(paths[case].absolute())
        if case == FOLDER:
            assert not named[case] and not any(s.startswith(path) for s in scored)
            record("inputs", case, "evaluate.py", "walked as a folder (holds no audio)")
        elif case in rejected:
            assert path not in scored and named[case], f"{case}: not named"
            reason = named[case].split(f"{path}: ", 1)[1]
            record("inputs", case, "evaluate.py", f"skipped (named): {short(reason, path)}")
        else:
            assert path in scored and not named[case], f"{case}: not scored"
            record("inputs", case, "evaluate.py", "scored")
    # Nothing partial in the run's feature cache.
    cache = Path(Predictor.load(run_dir).cfg.features.cache_dir)
    assert [p for p in cache.rglob(".*") if p.is_file()] == []


@pytest.mark.parametrize("broken", ["header", "samples"])
def test_evaluate_exits_non_zero_when_nothing_usable_remains(
    run_dir, corpus, tmp_path, capsys, broken
):
    _, paths = corpus
    folder = tmp_path / "custom"
    folder.mkdir()
    if broken == "header":  # every file the reader rejects
        for case in ROWS:
            if paths[case].is_file() and (case in NAME_CASES or not expected_usable(case)):
                (folder / paths[case].name).write_bytes(paths[case].read_bytes())
        (folder / paths["NaN and Inf samples"].name).unlink()
    # Two classes that pass the reader (valid headers) but fail extraction.
    for emotion in ("happy", "sad") if broken == "samples" else ():
        (folder / f"nan_{emotion}.wav").write_bytes(paths["NaN and Inf samples"].read_bytes())
    code, out = evaluate(run_dir, tmp_path, capsys)
    assert code != 0 and "Traceback" not in out, out
    error = next(line for line in out.splitlines() if line.startswith("error: "))[7:]
    assert error.startswith("custom: no usable clips")
    for path in folder.iterdir():
        assert any(line.startswith("warning:") and str(path) in line for line in out.splitlines())
    row = {"header": "only broken files", "samples": "only NaN-sample files"}[broken]
    record("inputs", row, "evaluate.py", f"exit {code}: {short(error, tmp_path.absolute())}")


# ------------------------------------------------------------------ ser predict
def predict(paths: list[Path], run_dir: Path, capsys) -> tuple[int, dict, str]:
    code = main(["predict", *map(str, paths), "--run", str(run_dir), "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out else {}, captured.err


@pytest.mark.parametrize("case", ROWS)
def test_predict_each_case_alone(case, corpus, run_dir, predictor, load_once, capsys):
    path = corpus[1][case]
    code, doc, err = predict([path], run_dir, capsys)
    assert "Traceback" not in err
    if case == FOLDER:
        assert code == 2 and f"error: {path}: folder holds no audio files" in err
        record("inputs", case, "ser predict", f"exit {code}: {short(err.splitlines()[0], path)}")
    elif expected_usable(case):
        assert code == 0, err
        (result,) = doc["results"]
        probabilities = result["probabilities"]
        assert list(probabilities) == predictor.labels and result["emotion"] in probabilities
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-4)
        windows = f", {len(result['timeline'])} windows" if result.get("timeline") else ""
        record("inputs", case, "ser predict", f"exit 0: {len(probabilities)} classes{windows}")
    else:
        assert code != 0
        (result,) = doc["results"]
        assert result["path"] == str(path) and result["error"].startswith(f"{path}: ")
        assert "1 of 1 path(s) could not be predicted" in err
        record("inputs", case, "ser predict", f"exit {code}: {short(result['error'], path)}")


def test_predict_mix_exits_0_and_reports_the_bad_files(corpus, run_dir, load_once, capsys):
    paths = [corpus[1][case] for case in ROWS] + [good_clip(corpus)]
    code, doc, err = predict(paths, run_dir, capsys)
    assert code == 0, err
    results = {r["path"]: r for r in doc["results"]}
    bad = [c for c in ROWS if not expected_usable(c) or c == FOLDER]
    for case in ROWS:
        assert ("error" in results[str(corpus[1][case])]) == (case in bad), case
    assert "emotion" in results[str(good_clip(corpus))]
    assert f"{len(bad)} of {len(paths)} path(s) could not be predicted" in err
    record("inputs", "good and broken together", "ser predict", f"exit 0: {err.strip()}")


def test_predict_exits_non_zero_when_nothing_is_usable(corpus, run_dir, load_once, capsys):
    bad = [corpus[1][c] for c in ROWS if not expected_usable(c) and c != FOLDER]
    code, doc, err = predict(bad, run_dir, capsys)
    assert code != 0 and all("error" in r for r in doc["results"]) and len(doc["results"]) == len(bad)
    record("inputs", "only broken files", "ser predict", f"exit {code}: {err.strip()}")
