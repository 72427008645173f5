"""Speaker-grouped cross-validation on generated corpora: folds, summaries, dedupe, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fakes import make_emodb, make_tess
from test_evaluation import tiny_config

import ser.training
from ser.crossval import cross_validate

QUIET = {"log": lambda _line: None}
CV = {
    "evaluation.baselines": "[svc, knn]",
    "evaluation.cv.folds": "2",
    "train.epochs": "1",
}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpora")
    make_emodb(root)  # 5 speakers
    make_tess(root)  # 2 speakers
    return root


@pytest.fixture(scope="module")
def result(corpora, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("cv")
    cfg = tiny_config(corpora, work, "[emodb, tess]", model="dense", name="dense", **CV)
    return cross_validate([cfg], speaker_dependent=True, out_dir=work / "out", **QUIET)


def test_every_corpus_gets_speaker_folds_for_keras_and_baselines(result, corpora):
    groups = {(g["corpus"], g["model"], g["speaker_independent"]): g for g in result["groups"]}
    for corpus in ("emodb", "tess"):
        assert groups[(corpus, "dense", True)]["folds"] == 2
        for name in ("svc", "knn"):
            assert groups[(corpus, f"{name} (mfcc; mean+std)", True)]["folds"] == 2
            assert groups[(corpus, f"{name} (mfcc; mean+std)", False)]["folds"] == 2
        assert (corpus, "dense", False) not in groups  # Keras runs only speaker-independent
    for g in result["groups"]:
        assert 0 <= g["ua"]["mean"] <= 1 and g["ua"]["std"] >= 0 and len(g["ua"]["values"]) == 2
    assert groups[("tess", "dense", True)]["protocol"].endswith("leave-one-speaker-out (2 folds)")
    assert groups[("emodb", "dense", True)]["protocol"].endswith("2-fold by speaker")


def test_test_speakers_partition_each_corpus_and_never_train(result):
    keras = [f for f in result["folds"] if f["kind"] == "keras"]
    for corpus, n in (("emodb", 5), ("tess", 2)):
        folds = [f for f in keras if f["corpus"] == corpus]
        tested = [s for f in folds for s in f["test_speakers"]]
        assert len(tested) == len(set(tested)) == n  # each speaker tested exactly once
        for f in folds:
            split = json.loads((Path(f["run_dir"]) / "split.json").read_text())
            seen = set(split["train_speakers"]) | set(split["val_speakers"])
            assert not seen & set(f["test_speakers"])
            assert f["fit_seconds"] > 0 and f["best_epoch"] == 1


def test_reports_are_written(result):
    out = Path(result["out_dir"])
    md = (out / "cv.md").read_text()
    assert "UA % (mean ± std)" in md and "SPEAKER-DEPENDENT, random split x2" in md
    assert json.loads((out / "cv.json").read_text())["groups"] == result["groups"]
    assert (out / "folds.jsonl").read_text().count("\n") == len(result["folds"])


def test_resume_reuses_finished_folds(result, corpora, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(ser.training, "train", no_training)
    cfg = tiny_config(
        corpora, Path(result["out_dir"]).parent, "[emodb, tess]", model="dense", name="dense", **CV
    )
    again = cross_validate(
        [cfg], speaker_dependent=True, out_dir=result["out_dir"], resume=True, **QUIET
    )
    assert again["groups"] == result["groups"]


def test_baselines_shared_by_two_configs_are_fitted_once(corpora, tmp_path):
    lstm = tiny_config(corpora, tmp_path, "[emodb]", **{**CV, "name": "a"})
    dense = tiny_config(corpora, tmp_path, "[emodb]", model="dense", **{**CV, "name": "b"})
    out = cross_validate([lstm, dense], keras=False, out_dir=tmp_path / "out", **QUIET)
    # Same frame features and pooling: the dense config reuses the lstm config's fits.
    lines = (tmp_path / "out" / "folds.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2  # 2 baselines x 2 folds, not twice that
    assert {g["model"] for g in out["groups"]} == {"svc (mfcc; mean+std)", "knn (mfcc; mean+std)"}


def test_cli_cross_validates_baselines_and_writes_the_results_page(
    corpora, tmp_path, capsys, monkeypatch
):
    from ser.cli import main

    monkeypatch.delenv("SER_DATA_ROOT", raising=False)  # it would replace data.root

    sets = {
        "data.root": str(corpora), "data.corpora": "[emodb]", "features.extractors": "[mfcc]",
        "features.workers": "1", "features.cache_dir": str(tmp_path / "cache"), **CV,
    }  # fmt: skip
    args = ["evaluate", "--cv", "--no-keras", "--speaker-dependent", "--out", str(tmp_path / "cv"),
            "--results", str(tmp_path / "RESULTS.md")]  # fmt: skip
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "UA % (mean ± std)" in out and "results: " in out
    page = (tmp_path / "RESULTS.md").read_text()
    assert page.startswith("# Results: speaker-independent cross-validation")
    command = page.split("```bash\n")[1].split("\n")[0]  # the command that made the page
    assert command.startswith("python evaluate.py --cv --set data.root=")
    assert command.endswith(f"--no-keras --speaker-dependent --out {tmp_path / 'cv'} "
                            f"--results {tmp_path / 'RESULTS.md'}")  # fmt: skip
    assert "## EMO-DB: 7 classes" in page and "SPEAKER-DEPENDENT, random split x2" in page
    assert "## The speaker-dependent gap" not in page  # no seed_mlp in this run


def test_per_corpus_method_and_speaker_normalised_pooled_vectors(corpora, tmp_path, monkeypatch):
    """emodb leave-one-speaker-out while tess keeps 2-fold; the fold data the model and
    the baselines see is z-normalised per speaker."""
    from ser import baselines, training

    seen: list[tuple[str, np.ndarray]] = []
    real_prepare, real_matrix = training.prepare_data, baselines.PooledFeatures.matrix

    def prepare(*args, **kwargs):
        data = real_prepare(*args, **kwargs)
        rows = [r for p in ("train", "val", "test") for r in data.rows[p]]
        x = np.stack([v for p in ("train", "val", "test") for v in data.inputs[p]])
        seen.extend(zip([r.speaker for r in rows], x, strict=True))
        return data

    def matrix(self, rows):
        x = real_matrix(self, rows)
        for speaker in {r.speaker for r in rows}:
            own = x[[r.speaker == speaker for r in rows]]
            np.testing.assert_allclose(own.mean(0), 0, atol=1e-4)
        return x

    monkeypatch.setattr(training, "prepare_data", prepare)
    monkeypatch.setattr(baselines.PooledFeatures, "matrix", matrix)
    cfg = tiny_config(
        corpora, tmp_path, "[emodb, tess]", model="dense", name="dense",
        **{**CV, "evaluation.baselines": "[logistic_regression]",
           "evaluation.cv.method_by_corpus": "{emodb: loso}",
           "features.pooled_normalisation": "speaker"},
    )  # fmt: skip
    out = cross_validate([cfg], out_dir=tmp_path / "out", **QUIET)
    groups = {(g["corpus"], g["model"]): g for g in out["groups"]}
    assert groups[("emodb", "dense")]["folds"] == 5  # one per speaker
    assert groups[("emodb", "dense")]["protocol"].endswith("leave-one-speaker-out (5 folds)")
    assert groups[("tess", "dense")]["folds"] == 2
    assert groups[("emodb", "logistic_regression (mfcc; mean+std)")]["folds"] == 5
    speakers = {s for s, _ in seen}
    assert len(speakers) == 7
    for speaker in speakers:
        own = np.stack([x for s, x in seen if s == speaker])
        np.testing.assert_allclose(own.mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(own.std(0), 1, atol=1e-3)


def test_extra_training_corpora_join_training_only(corpora, tmp_path):
    cfg = tiny_config(
        corpora, tmp_path, "[tess]", model="dense", name="multi",
        **{**CV, "evaluation.baselines": "[logistic_regression]",
           "evaluation.cv.extra_training_corpora": "{tess: [emodb]}"},
    )  # fmt: skip
    out = cross_validate([cfg], out_dir=tmp_path / "out", **QUIET)
    groups = {g["model"]: g for g in out["groups"]}
    assert {g["corpus"] for g in out["groups"]} == {"tess"}
    assert "training also on all of emodb" in groups["dense (multi)"]["protocol"]
    assert groups["dense (multi)"]["folds"] == 2
    assert groups["logistic_regression (mfcc; mean+std)"]["folds"] == 2
    tess_emotions = {"neutral", "happy", "sad", "angry", "fear", "disgust", "ps"}
    for fold in (0, 1):
        run = tmp_path / "out" / "multi" / "tess" / f"fold{fold}"
        split = json.loads((run / "split.json").read_text())
        assert any(s.startswith("emodb:") for s in split["train_speakers"])
        assert all(s.startswith("tess:") for s in split["test_speakers"] + split["val_speakers"])
        assert set(json.loads((run / "labels.json").read_text())) <= tess_emotions
