"""Speaker-grouped cross-validation: the plan and the summary on made-up rows and
records, then whole runs on generated corpora (folds, reports, dedupe, resume)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ser.training
from ser.crossval import FoldJob, config_labels, cross_validate, plan_cross_validation, summarise
from ser.data.corpora import Manifest, Utterance
from tests.support.fakes import make_emodb, make_tess
from tests.support.tiny_run import tiny_config

QUIET = {"log": lambda _line: None}
CV = {
    "evaluation.baselines": "[svc, knn]",
    "evaluation.cv.folds": "2",
    "train.epochs": "1",
}


# ---------------------------------------------------------- plan (no training)
EMOTIONS = ("neutral", "happy", "sad", "angry")
SPEAKERS = {"emodb": 5, "tess": 2}


def fake_manifest(corpus: str, speakers: int, clips: int = 2) -> Manifest:
    """Rows only (no audio): ``clips`` per speaker and emotion."""
    rows = [
        Utterance(f"/nowhere/{corpus}/{s}_{e}_{k}.wav", corpus, f"{corpus}:{s:02d}", None, e, 1.0)
        for s in range(speakers)
        for e in EMOTIONS
        for k in range(clips)
    ]
    return Manifest(rows=rows)


class FakeManifests:
    """A manifest loader over made-up corpora that counts what it is asked for."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, ...]] = []

    def __call__(self, data) -> Manifest:
        self.asked.append(tuple(data.corpora))
        rows = [r for c in data.corpora for r in fake_manifest(c, SPEAKERS[c]).rows]
        return Manifest(rows=rows)


def plan_config(tmp_path: Path, corpora: str = "[emodb, tess]", **extra: str):
    return tiny_config(tmp_path, tmp_path, corpora, model="dense", name="dense", **{**CV, **extra})


def plan(cfgs, tmp_path: Path, **options) -> tuple[list[FoldJob], list[str], FakeManifests]:
    manifests = FakeManifests()
    made = plan_cross_validation(cfgs, tmp_path / "out", manifests, **options)
    return made.jobs, made.notes, manifests


def test_plan_lists_speaker_folds_then_references_config_by_config_corpus_by_corpus(tmp_path):
    jobs, notes, manifests = plan([plan_config(tmp_path)], tmp_path, speaker_dependent=True)
    si_emodb = "speaker-independent, 2-fold by speaker"
    si_tess = "speaker-independent, leave-one-speaker-out (2 folds)"
    sd = "SPEAKER-DEPENDENT, random split x2"
    assert [(j.corpus, j.protocol, j.fold) for j in jobs] == [
        ("emodb", si_emodb, 0),
        ("emodb", si_emodb, 1),
        ("emodb", sd, 0),
        ("emodb", sd, 1),
        ("tess", si_tess, 0),
        ("tess", si_tess, 1),
        ("tess", sd, 0),
        ("tess", sd, 1),
    ]
    assert [n.split(": ")[0] for n in notes] == ["emodb", "emodb", "tess", "tess"]
    assert manifests.asked == [("emodb",), ("tess",)]
    for job in jobs:
        assert list(job.baseline_keys) == ["svc", "knn"]
        assert job.cfg.train.run_name == f"fold{job.fold}"
        assert job.cfg.train.checkpoints_dir == str(tmp_path / "out" / "dense" / job.corpus)
        if job.split.speaker_independent:
            assert job.keras_key == f"keras|dense|{job.corpus}|{job.protocol}|{job.fold}"
            assert job.cfg.split.fold == job.fold
        else:  # Keras runs only on speaker-independent folds
            assert job.keras_key is None and job.cfg.split.method == "random"


def test_plan_test_speakers_partition_each_corpus_and_never_train(tmp_path):
    jobs, _, _ = plan([plan_config(tmp_path)], tmp_path)
    assert all(j.split.speaker_independent for j in jobs)  # no reference asked for
    for corpus, n in (("emodb", 5), ("tess", 2)):
        folds = [j.split for j in jobs if j.corpus == corpus]
        tested = [s for split in folds for s in split.test_speakers]
        assert len(tested) == len(set(tested)) == n
        for split in folds:
            assert not set(split.test_speakers) & {*split.train_speakers, *split.val_speakers}


def test_plan_options_leave_out_keras_baselines_and_references(tmp_path):
    cfg = plan_config(tmp_path, **{"evaluation.cv.speaker_dependent_reference": "true"})
    jobs, _, _ = plan([cfg], tmp_path, keras=False)
    assert len(jobs) == 8 and all(j.keras_key is None for j in jobs)
    jobs, notes, _ = plan([cfg], tmp_path, baselines=False)
    # No baselines: no speaker-dependent reference (it scores baselines only).
    assert len(jobs) == 4 and all(j.keras_key and not j.baseline_keys for j in jobs)
    assert not any("SPEAKER-DEPENDENT" in n for n in notes)


def test_plan_gives_configs_with_the_same_baseline_inputs_the_same_keys(tmp_path):
    a = tiny_config(tmp_path, tmp_path, "[emodb]", **{**CV, "name": "a"})
    b = tiny_config(tmp_path, tmp_path, "[emodb]", model="dense", **{**CV, "name": "b"})
    c = tiny_config(tmp_path, tmp_path, "[emodb]", **{**CV, "name": "a", "seed": "7"})
    assert config_labels([a, b, c]) == ["a", "b", "a-2"]
    jobs, _, manifests = plan([a, b, c], tmp_path)
    assert manifests.asked == [("emodb",)] * 3  # the loader memoises, the plan does not
    by_config = {label: [j for j in jobs if j.config == label] for label in ("a", "b", "a-2")}
    assert [j.keras_model for j in jobs[::2]] == ["lstm (a)", "dense (b)", "lstm (a-2)"]
    for ja, jb in zip(by_config["a"], by_config["b"], strict=True):
        assert ja.baseline_keys == jb.baseline_keys and ja.keras_key != jb.keras_key
    assert by_config["a"][0].baseline_keys != by_config["a-2"][0].baseline_keys  # other seed


def test_resume_keeps_only_the_unfinished_part_of_a_job(tmp_path):
    job = plan([plan_config(tmp_path, "[tess]")], tmp_path)[0][0]
    svc, knn = job.baseline_keys.values()
    record = {"key": svc, "ua": 0.5}
    assert job.keys == [svc, knn, job.keras_key]
    assert job.unfinished({}) == job and job.finished({}) == []
    todo = job.unfinished({svc: record})
    assert todo is not None and todo.keras_key == job.keras_key
    assert todo.baseline_keys == {"knn": knn} and job.finished({svc: record}) == [record]
    keras_done = job.unfinished({job.keras_key: record})
    assert keras_done is not None and keras_done.keras_key is None
    assert job.unfinished({key: record for key in job.keys}) is None


# ------------------------------------------------------------- summary (no training)
def fake_record(model: str, fold: int, ua: float, protocol: str = "speaker-independent, x") -> dict:
    return {
        "key": f"{model}|{protocol}|{fold}",
        "config": "c",
        "model": model,
        "kind": "baseline",
        "corpus": "emodb",
        "protocol": protocol,
        "fold": fold,
        "test_speakers": [f"s{fold}"],
        "n": 10,
        "ua": ua,
        "wa": ua + 0.1,
        "macro_f1": ua - 0.1,
        "fit_seconds": 2.0 * (fold + 1),
        "features": "mfcc",
        "params": {},
        "grid": None,
        "classes": ["a", "b"],
    }


def test_summarise_gives_mean_and_sample_std_per_model_and_protocol():
    records = [
        fake_record("knn", 1, 0.7),
        fake_record("knn", 0, 0.5),
        fake_record("svc", 0, 0.4),
        fake_record("svc", 1, 0.4),
        fake_record("svc", 0, 0.9, "SPEAKER-DEPENDENT, random"),
    ]
    groups = summarise(records)
    assert [(g["model"], g["speaker_independent"]) for g in groups] == [
        ("knn", True),
        ("svc", True),
        ("svc", False),
    ]  # speaker-independent first, then best mean UA first
    knn = groups[0]
    assert knn["ua"]["values"] == [0.5, 0.7]  # in fold order
    assert knn["ua"]["mean"] == pytest.approx(0.6)
    assert knn["ua"]["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert knn["wa"]["mean"] == pytest.approx(0.7) and knn["macro_f1"]["mean"] == pytest.approx(0.5)
    assert knn["fit_seconds"]["mean"] == pytest.approx(3.0)
    assert (knn["folds"], knn["speakers"], knn["classes"]) == (2, 2, ["a", "b"])
    assert groups[1]["ua"]["std"] == 0.0
    assert groups[2]["folds"] == 1 and groups[2]["ua"]["std"] == 0.0


# ------------------------------------------------------------ whole runs (training)
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


def test_resume_without_cv_json_counts_the_finished_folds_time(result, corpora, tmp_path):
    """A run stopped before it wrote cv.json, resumed: its duration is the reused folds'
    recorded seconds, not only the resume's own (which only renders the reports)."""
    import shutil

    out = tmp_path / "stopped"
    shutil.copytree(result["out_dir"], out)
    (out / "cv.json").unlink()
    work = Path(result["out_dir"]).parent  # the first run's feature cache
    cfg = tiny_config(corpora, work, "[emodb, tess]", model="dense", name="dense", **CV)
    again = cross_validate([cfg], speaker_dependent=True, out_dir=out, resume=True, **QUIET)
    recorded = sum(f.get("train_seconds") or f["fit_seconds"] for f in result["folds"])
    assert recorded > 0
    assert again["seconds"] == pytest.approx(recorded)


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
        "data.root": str(corpora),
        "data.corpora": "[emodb]",
        "features.extractors": "[mfcc]",
        "features.workers": "1",
        "features.cache_dir": str(tmp_path / "cache"),
        **CV,
    }
    args = [
        "evaluate",
        "--cv",
        "--no-keras",
        "--speaker-dependent",
        "--out",
        str(tmp_path / "cv"),
        "--results",
        str(tmp_path / "RESULTS.md"),
    ]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "UA % (mean ± std)" in out and "results: " in out
    page = (tmp_path / "RESULTS.md").read_text()
    assert page.startswith("# Results: speaker-independent cross-validation")
    command = page.split("```bash\n")[1].split("\n")[0]  # the command that made the page
    assert command.startswith("python evaluate.py --cv --set data.root=")
    assert command.endswith(
        f"--no-keras --speaker-dependent --out {tmp_path / 'cv'} "
        f"--results {tmp_path / 'RESULTS.md'}"
    )
    assert "## EMO-DB: 7 classes" in page and "SPEAKER-DEPENDENT, random split x2" in page
    assert "## The speaker-dependent gap" not in page  # no seed_mlp in this run


def test_per_corpus_method_and_speaker_normalised_pooled_vectors(corpora, tmp_path, monkeypatch):
    """emodb leave-one-speaker-out while tess keeps 2-fold; the fold data the model and
    the baselines see is z-normalised per speaker."""
    from ser import baselines, training
    from ser.data import prepare as preparation

    seen: list[tuple[str, np.ndarray]] = []
    real_prepare, real_matrix = preparation.prepare_data, baselines.PooledFeatures.matrix

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

    # Training binds prepare_data at import; the baselines import it when they run.
    monkeypatch.setattr(training, "prepare_data", prepare)
    monkeypatch.setattr(preparation, "prepare_data", prepare)
    monkeypatch.setattr(baselines.PooledFeatures, "matrix", matrix)
    cfg = tiny_config(
        corpora,
        tmp_path,
        "[emodb, tess]",
        model="dense",
        name="dense",
        **{
            **CV,
            "evaluation.baselines": "[logistic_regression]",
            "evaluation.cv.method_by_corpus": "{emodb: loso}",
            "features.pooled_normalisation": "speaker",
        },
    )
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
        corpora,
        tmp_path,
        "[tess]",
        model="dense",
        name="multi",
        **{
            **CV,
            "evaluation.baselines": "[logistic_regression]",
            "evaluation.cv.extra_training_corpora": "{tess: [emodb]}",
        },
    )
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
