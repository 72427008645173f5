"""Evaluation: metrics against hand-computed values, run reports, cross-corpus, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from ser.config import ConfigError, load_config
from ser.cross_corpus import evaluate_cross_corpus
from ser.data.corpora import CorpusNotFoundError
from ser.evaluation import EvaluationError, evaluate_run, evaluation_config
from ser.metrics import classification_metrics, mean_std, metrics_by_group
from ser.runs import RunDirError
from ser.training import train
from tests.support import ROOT
from tests.support.fakes import make_corpora
from tests.support.tiny_run import tiny_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUIET = {"log": lambda _line: None}
FAST_BASELINES = "evaluation.baselines=[svc, logistic_regression, knn, seed_mlp]"


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> Path:
    return make_corpora(tmp_path_factory.mktemp("corpora"))


@pytest.fixture(scope="module")
def run(corpora, tmp_path_factory) -> Path:
    """An LSTM run trained on generated RAVDESS + TESS (EMO-DB stays unseen)."""
    work = tmp_path_factory.mktemp("work")
    summary = train(tiny_config(corpora, work, "[ravdess, tess]"), **QUIET)
    return Path(summary["run_dir"])


# ---------------------------------------------------------------- metrics
def test_metrics_match_hand_computed_values():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c", "d"])
    # Confusion [[2,1,0],[0,1,1],[0,0,1]]; "d" never occurs and is left out of UA/F1.
    assert m["confusion"][:3] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0]]
    assert m["wa"] == pytest.approx(4 / 6)
    assert m["ua"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # precision a 2/2, b 1/2, c 1/2; F1 a 0.8, b 0.5, c 2/3.
    assert m["per_class"]["a"] == {
        "precision": 1.0,
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(0.8),
        "support": 3,
    }
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["absent"] == ["d"] and m["per_class"]["d"]["recall"] is None
    # The same numbers as scikit-learn's definitions.
    assert m["ua"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def test_mean_std_uses_the_sample_deviation():
    s = mean_std([0.5, 0.7])
    assert s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(np.sqrt(0.02))
    assert mean_std([0.4])["std"] == 0.0 and mean_std([])["n"] == 0


def test_metrics_by_group_scores_each_corpus_on_its_own_classes():
    y_true = np.array([0, 1, 0, 2])
    y_pred = np.array([0, 0, 0, 2])
    by = metrics_by_group(y_true, y_pred, ["x", "x", "y", "y"], ["a", "b", "c"])
    assert by["x"] == {"ua": 0.5, "wa": 0.5, "macro_f1": pytest.approx(1 / 3), "n": 2}
    assert by["y"]["ua"] == 1.0 and by["y"]["n"] == 2


# ------------------------------------------------------------ run reports
def test_evaluate_run_writes_a_complete_report(run, capsys):
    report = evaluate_run(run, overrides=[FAST_BASELINES])
    out = capsys.readouterr().out

    for name in (
        "report.md",
        "report.json",
        "predictions.csv",
        "confusion.png",
        "per_class_recall.png",
        "training_curves.png",
    ):
        assert (run / name).is_file(), name
    for png in run.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in run.rglob("*") if p.suffix in {".pkl", ".pickle", ".joblib"}]

    saved = json.loads((run / "report.json").read_text())
    assert saved["ranking"] == report["ranking"]
    names = [m["name"] for m in saved["models"]]
    assert names == ["lstm", "svc", "logistic_regression", "knn", "seed_mlp"]
    assert {r["name"] for r in saved["ranking"]} == set(names)
    uas = [r["ua"] for r in saved["ranking"]]
    assert uas == sorted(uas, reverse=True)

    # Same loader, split and features as training: the very numbers training measured.
    summary = json.loads((run / "summary.json").read_text())
    keras = saved["models"][0]
    assert keras["ua"] == pytest.approx(summary["test"]["ua"], abs=1e-9)
    assert keras["wa"] == pytest.approx(summary["test"]["wa"], abs=1e-9)
    assert saved["examples"] == summary["examples"]

    # The report's test speakers are the run's and never in its train or validation lists.
    split = json.loads((run / "split.json").read_text())
    tested = set(saved["protocol"]["test_speakers"])
    assert tested == set(split["test_speakers"])
    assert not tested & set(split["train_speakers"] + split["val_speakers"])
    assert saved["protocol"]["speaker_independent"] is True
    rows = (run / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + summary["examples"]["test"]
    assert {line.split(",")[2] for line in rows[1:]} == tested

    markdown = (run / "report.md").read_text()
    assert "speaker-independent" in markdown and "| rank | model |" in markdown
    assert all(s in markdown for s in tested)
    assert "UA %" in out and "lstm (this run)" in out and "seed_mlp" in out

    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(Path(saved["log_dir"]) / "evaluation"))
    tags = events.Reload().Tags()["tensors"]
    assert {"evaluation/test_ua", "evaluation/test_wa", "baselines/svc_ua"} <= set(tags)
    assert "_hparams_/session_start_info" in tags  # the run appears in the HParams table


def test_evaluate_cli_prints_the_table(run):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), str(run), "--baselines", "svc"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rank  model" in proc.stdout and "svc" in proc.stdout
    assert "report: " in proc.stdout


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "no such run directory"),
        (lambda p: p, "not a run directory (missing run.yaml"),
        (lambda p: (p / "file.txt").write_text("x") and p / "file.txt", "not a directory"),
    ],
)
def test_a_path_that_is_not_a_run_directory_is_a_clear_error(tmp_path, make, message):
    target = make(tmp_path)
    with pytest.raises(RunDirError, match=message.replace("(", r"\(")):
        evaluate_run(target, **QUIET)
    from ser.cli import main

    assert main(["evaluate", str(target)]) == 2


def test_deleted_cache_is_recomputed_with_the_same_numbers(run, tmp_path):
    cfg = load_config(run / "run.yaml", env={})
    first = evaluate_run(run, overrides=[FAST_BASELINES], write=False, **QUIET)
    shutil.rmtree(cfg.features.cache_dir)
    again = evaluate_run(run, overrides=[FAST_BASELINES], write=False, **QUIET)
    assert "0 cache hits" in again["data"]
    assert [(m["name"], m["ua"], m["wa"]) for m in again["models"]] == [
        (m["name"], m["ua"], m["wa"]) for m in first["models"]
    ]


def test_a_moved_corpus_names_the_missing_root_and_can_be_pointed_at(tmp_path):
    old = make_corpora(tmp_path / "old-place")
    cfg = tiny_config(old, tmp_path, "[emodb]", model="dense", **{"split.method": "random"})
    run_dir = Path(train(cfg, **QUIET)["run_dir"])
    before = evaluate_run(run_dir, overrides=["evaluation.baselines=[svc]"], write=False, **QUIET)

    new = tmp_path / "new-place"
    shutil.move(old, new)
    with pytest.raises(CorpusNotFoundError) as err:
        evaluate_run(run_dir, write=False, env={}, **QUIET)
    assert str(old) in str(err.value) and "does not exist" in str(err.value)
    assert "--data-root" in str(err.value)

    after = evaluate_run(
        run_dir, data_root=new, overrides=["evaluation.baselines=[svc]"], write=False, **QUIET
    )
    # A random (speaker-dependent) split stores test paths: they moved with the root.
    assert after["examples"] == before["examples"]
    assert [m["ua"] for m in after["models"]] == [m["ua"] for m in before["models"]]
    assert after["protocol"]["speaker_independent"] is False
    with pytest.raises(CorpusNotFoundError, match="does not exist"):
        evaluate_run(run_dir, data_root=tmp_path / "nowhere", write=False, **QUIET)


def test_speaker_dependent_runs_are_labelled_so_in_the_report(tmp_path, corpora, capsys):
    cfg = tiny_config(corpora, tmp_path, "[emodb]", model="dense", **{"split.method": "random"})
    run_dir = Path(train(cfg, **QUIET)["run_dir"])
    evaluate_run(run_dir, overrides=["evaluation.baselines=[knn]"])
    assert "WARNING: SPEAKER-DEPENDENT" in capsys.readouterr().out
    assert "SPEAKER-DEPENDENT split: the test speakers" in (run_dir / "report.md").read_text()


def test_only_evaluation_settings_can_change_for_a_trained_run(run):
    cfg = load_config(run / "run.yaml", env={})
    assert evaluation_config(cfg, overrides=["evaluation.svc.C=2"]).evaluation.svc.C == 2.0
    with pytest.raises(ConfigError, match="only evaluation"):
        evaluation_config(cfg, overrides=["model.type=cnn"])
    with pytest.raises(ConfigError, match="evaluation.baselines"):
        evaluation_config(cfg, overrides=["evaluation.baselines=[svm]"])


# ------------------------------------------------------------ cross-corpus
def test_cross_corpus_on_an_unseen_generated_corpus(run):
    report = evaluate_cross_corpus(
        run, "emodb", overrides=["evaluation.baselines=[svc, seed_mlp]"], **QUIET
    )
    out_dir = run / "cross_corpus" / "emodb"
    assert (out_dir / "report.md").is_file() and (out_dir / "confusion.png").is_file()
    shared = ["neutral", "happy", "sad", "angry", "fear", "disgust"]  # boredom is EMO-DB only
    assert report["labels"] == shared
    protocol = report["protocol"]
    assert protocol["tested_on"] == "emodb" and protocol["trained_on"] == ["ravdess", "tess"]
    assert protocol["dropped_emotions"] == {"boredom": 5}
    assert all(s.startswith("emodb:") for s in protocol["test_speakers"])
    assert not set(protocol["test_speakers"]) & set(protocol["train_speakers"])
    for m in report["models"]:
        assert m["n"] == 5 * len(shared)  # 5 speakers x one utterance per shared emotion
        assert len(m["confusion"]) == len(shared)
    assert "cross-corpus" in (out_dir / "report.md").read_text()

    with pytest.raises(EvaluationError, match="never saw"):
        evaluate_cross_corpus(run, "tess", **QUIET)
