"""End-to-end training on generated corpora: run directory, cache reuse, resume, mirrored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ser.config import load_config
from ser.training import (
    averaged_weights,
    class_weights,
    cosine_learning_rate,
    ema_momentum,
    train,
    validation_loss,
)
from tests.support import ROOT
from tests.support.fakes import make_corpora, write_bytes, write_empty_wav
from tests.support.tiny_run import tiny_overrides


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> Path:
    root = make_corpora(tmp_path_factory.mktemp("corpora"))
    # Broken files inside corpus folders: skipped with a warning, counted, never fatal.
    write_empty_wav(root / "emodb" / "wav" / "03a02Wb.wav")
    write_bytes(root / "tess" / "OAF_angry" / "OAF_bone_angry.wav", b"not audio at all")
    return root


def test_one_epoch_end_to_end_writes_a_complete_run(corpora, tmp_path, capsys):
    import keras

    cfg = load_config(ROOT / "configs" / "quick.yaml", tiny_overrides(corpora, tmp_path), env={})
    summary = train(cfg)
    out = capsys.readouterr().out

    run_dir = Path(summary["run_dir"])
    for name in (
        "model.keras",
        "config.json",
        "model.weights.h5",
        "run.yaml",
        "labels.json",
        "normaliser.json",
        "split.json",
        "versions.json",
        "manifest.jsonl",
        "history.csv",
        "summary.json",
    ):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "backup").exists()  # removed once training finished

    best = tmp_path / "checkpoints" / "best"
    assert best.is_symlink() and best.resolve() == run_dir.resolve()
    model = keras.models.load_model(best)  # the run directory itself loads
    labels = json.loads((run_dir / "labels.json").read_text())
    assert model.output_shape[-1] == len(labels)
    assert keras.models.load_model(best / "model.keras").count_params() == model.count_params()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    validation = EventAccumulator(str(tmp_path / "experiments" / run_dir.name / "validation"))
    validation.Reload()
    tags = validation.Tags()
    assert "epoch_val_ua" in tags["tensors"] + tags["scalars"]
    assert "validation_confusion" in tags["tensors"] + tags["images"]

    test = summary["test"]
    assert 0.0 <= test["ua"] <= 1.0 and 0.0 <= test["wa"] <= 1.0
    assert sum(m["n"] for m in test["per_corpus"].values()) == test["n"]
    assert "per corpus: " in out
    assert summary["speaker_independent"] is True
    assert "UA" in out and "WA" in out and "speaker-independent" in out

    # Broken files were skipped, named and counted.
    assert summary["files"]["skipped_unreadable"] == 2
    assert "03a02Wb.wav" in out and "OAF_bone_angry.wav" in out

    split = json.loads((run_dir / "split.json").read_text())
    test_speakers = set(split["test_speakers"])
    assert test_speakers and not test_speakers & set(
        split["train_speakers"] + split["val_speakers"]
    )


def test_second_run_reads_every_feature_from_the_cache(corpora, tmp_path):
    cfg = load_config(ROOT / "configs" / "quick.yaml", tiny_overrides(corpora, tmp_path), env={})
    first = train(cfg)
    second = train(
        cfg.model_copy(update={"train": cfg.train.model_copy(update={"run_name": "again"})})
    )
    assert first["files"]["extracted"] == first["files"]["manifest_rows"]
    assert second["files"]["extracted"] == 0
    assert second["files"]["cache_hits"] == second["files"]["manifest_rows"]


@pytest.mark.parametrize("model", ["cnn", "crnn", "tcn", "dense"])
def test_other_models_train_end_to_end(corpora, tmp_path, model):
    cfg = load_config(
        ROOT / "configs" / "base.yaml", tiny_overrides(corpora, tmp_path, model), env={}
    )
    summary = train(cfg)
    assert summary["model"] == model
    assert np.isfinite(summary["test"]["ua"])


def test_random_split_is_labelled_speaker_dependent(corpora, tmp_path, capsys):
    cfg = load_config(
        ROOT / "configs" / "quick.yaml",
        tiny_overrides(corpora, tmp_path, **{"split.method": "random"}),
        env={},
    )
    summary = train(cfg)
    assert summary["speaker_independent"] is False
    assert "SPEAKER-DEPENDENT" in capsys.readouterr().out


def test_class_weights_are_inverse_frequency():
    w = class_weights(np.array([0, 0, 0, 1]), 3)
    assert w == {0: 4 / 6, 1: 4 / 2, 2: 1.0}


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SER_DATA_ROOT", None)
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_validation_loss_is_the_keras_training_loss_without_weights(smoothing):
    """EpochReport's val_loss, from its one pass of predictions, is what Keras's own
    validation pass reported: the compiled cross-entropy, unweighted."""
    import keras

    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(5), size=40).astype("float32")
    probabilities[0] = [1.0, 0.0, 0.0, 0.0, 0.0]  # a certain wrong answer is clipped, not inf
    targets = rng.integers(0, 5, size=40)
    targets[0] = 3
    one_hot = keras.ops.one_hot(targets, 5)
    keras_loss = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)(
        one_hot, probabilities
    )
    ours = validation_loss(targets, probabilities, smoothing)
    assert np.isfinite(ours)
    assert ours == pytest.approx(float(keras_loss), rel=1e-5)


@pytest.mark.parametrize(
    "extra", [{}, {"train.speaker_adversarial": "0.5"}], ids=["plain", "adversarial"]
)
def test_resume_after_kill_continues_from_saved_epoch(corpora, tmp_path, extra):
    """Also with a speaker-adversarial trainer, whose epoch backups hold its speaker head."""
    sets = tiny_overrides(
        corpora, tmp_path, **{"train.epochs": "6", "train.run_name": "killed", **extra}
    )
    proc = _cli(["--config", "configs/quick.yaml", *[a for s in sets for a in ("--set", s)]])
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("epoch   3/"):
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert any(line.startswith("epoch   3/") for line in seen), "".join(seen)
    run_dir = tmp_path / "checkpoints" / "killed"
    assert (run_dir / "backup").is_dir()

    resumed = _cli(["--resume", str(run_dir)])
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    epochs = [
        int(line.split()[1].split("/")[0]) for line in out.splitlines() if line.startswith("epoch ")
    ]
    assert epochs and epochs[0] >= 3 and epochs[-1] == 6, out
    assert "features: " in out and " 0 extracted" in out
    assert json.loads((run_dir / "summary.json").read_text())["run"] == "killed"


def test_mirrored_strategy_trains_on_two_logical_cpus(corpora, tmp_path):
    sets = tiny_overrides(corpora, tmp_path, **{"train.distribute": "mirrored"})
    code = f"""
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from ser.config import load_config
from ser.training import train, make_strategy
assert make_strategy("mirrored").num_replicas_in_sync == 2
summary = train(load_config({str(ROOT / "configs" / "quick.yaml")!r}, {sets!r}, env={{}}))
print("REPLICAS-OK", summary["test"]["ua"])
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "REPLICAS-OK" in out.stdout


def test_bad_config_fails_before_any_work(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "extends: " + str(ROOT / "configs" / "base.yaml") + "\nmodel:\n  lstm:\n    layers: 3\n"
    )
    proc = _cli(["--config", str(bad), "--set", f"train.checkpoints_dir={tmp_path / 'ck'}"])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "model.lstm.layers: unknown key" in out and str(bad) in out
    assert not (tmp_path / "ck").exists()


def test_seed_ensemble_averages_members_and_resumes_past_finished_ones(corpora, tmp_path):
    import keras

    sets = tiny_overrides(
        corpora,
        tmp_path,
        "dense",
        **{
            "model.ensemble": "3",
            "train.epochs": "2",
            "train.run_name": "ens",
            "train.label_smoothing": "0.1",
            "augment.mixup": "0.2",
        },
    )
    cfg = load_config(ROOT / "configs" / "base.yaml", sets, env={})
    lines: list[str] = []
    summary = train(cfg, log=lines.append)
    run_dir = Path(summary["run_dir"])
    assert [m["seed"] for m in summary["members"]] == [42, 43, 44]
    assert len(summary["best_epoch"]) == 3 and "ensemble of 3: validation UA" in "\n".join(lines)
    members = [
        keras.models.load_model(run_dir / "members" / str(k) / "model.keras") for k in range(3)
    ]
    model = keras.models.load_model(run_dir / "model.keras")
    assert model.output_shape == (None, len(summary["labels"]))
    x = np.random.default_rng(0).normal(size=(6, model.input_shape[-1])).astype(np.float32)
    probs = [m.predict(x, verbose=0) for m in members]
    assert not np.allclose(probs[0], probs[1])  # different seeds, different members
    np.testing.assert_allclose(model.predict(x, verbose=0), np.mean(probs, axis=0), atol=1e-6)
    np.testing.assert_allclose(model.predict(x, verbose=0).sum(axis=1), 1.0, atol=1e-5)
    # Served like any run: safe-mode loading and the XLA-compiled function agree.
    from ser.inference import Predictor

    served = Predictor.load(run_dir).predict_batch(x)
    np.testing.assert_allclose(served, np.mean(probs, axis=0), atol=1e-5)

    # A resume after the second member: the finished ones are not trained again.
    (run_dir / "members" / "2" / "member.json").unlink()
    lines.clear()
    again = train(cfg, resume=run_dir, log=lines.append)
    text = "\n".join(lines)
    assert "member 1/3: done before" in text and "member 2/3: done before" in text
    assert "member 3/3 (seed 44)" in text
    assert again["members"][:2] == summary["members"][:2]


def test_label_smoothing_and_mixup_train_with_probability_targets(corpora, tmp_path):
    sets = tiny_overrides(
        corpora,
        tmp_path,
        "dense",
        **{"train.label_smoothing": "0.2", "augment.mixup": "0.3", "train.epochs": "2"},
    )
    summary = train(load_config(ROOT / "configs" / "base.yaml", sets, env={}), log=lambda _l: None)
    assert summary["members"] is None and isinstance(summary["best_epoch"], int)
    assert np.isfinite(summary["test"]["ua"])
    history = (Path(summary["run_dir"]) / "history.csv").read_text().splitlines()
    assert len(history) == 3 and "val_loss" in history[0]


def test_averaged_weights_hold_the_moving_average_and_give_the_trained_weights_back():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(keras.optimizers.Adam(0.1, use_ema=True, ema_momentum=0.5), "mse")
    x, y = np.eye(3, dtype="float32"), np.ones((3, 2), "float32") / 2
    for _ in range(4):
        model.train_on_batch(x, y)
    trained = [w.copy() for w in model.get_weights()]
    average = [np.asarray(v) for v in model.optimizer._model_variables_moving_average]
    assert not all(np.allclose(a, t) for a, t in zip(average, trained, strict=True))
    with averaged_weights(model):
        for held, expected in zip(model.get_weights(), average, strict=True):
            np.testing.assert_allclose(held, expected, rtol=1e-6)
    for held, expected in zip(model.get_weights(), trained, strict=True):
        np.testing.assert_allclose(held, expected, rtol=1e-6)


def test_ema_momentum_averages_over_the_asked_epochs():
    assert ema_momentum(1.0, 100) == pytest.approx(0.99)
    assert ema_momentum(2.0, 50) == pytest.approx(0.99)
    assert ema_momentum(0.001, 10) == 0.0  # fewer than one step: no averaging


def test_weight_average_trains_and_keeps_its_best_epoch(corpora, tmp_path):
    """With ``train.ema_epochs`` a run trains, scores the averaged weights each epoch
    and keeps its best epoch's."""
    sets = tiny_overrides(
        corpora, tmp_path, "lstm", **{"train.ema_epochs": "1", "train.epochs": "2"}
    )
    cfg = load_config(ROOT / "configs" / "base.yaml", sets, env={})
    summary = train(cfg, log=lambda _l: None)
    assert isinstance(summary["best_epoch"], int) and np.isfinite(summary["test"]["ua"])
    history = (Path(summary["run_dir"]) / "history.csv").read_text().splitlines()
    assert len(history) == 3


def test_cosine_rates_fall_from_the_learning_rate_to_the_floor():
    rates = [cosine_learning_rate(e, 10, 1e-3, 1e-5) for e in range(10)]
    assert rates[0] == pytest.approx(1e-3)
    assert rates[5] == pytest.approx((1e-3 + 1e-5) / 2)  # half way down
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[-1] > 1e-5
    assert cosine_learning_rate(10, 10, 1e-3, 1e-5) == pytest.approx(1e-5)
    assert cosine_learning_rate(25, 10, 1e-3, 1e-5) == pytest.approx(1e-5)  # never below


def test_a_cosine_schedule_sets_each_epochs_rate(corpora, tmp_path):
    """``train.schedule: cosine``: the rates the epochs trained at (history.csv) are the
    cosine's, not the constant rate a plateau schedule keeps over three epochs."""
    from ser.reports import read_history

    sets = tiny_overrides(
        corpora,
        tmp_path,
        "lstm",
        **{
            "train.epochs": "3",
            "train.schedule": "cosine",
            "train.early_stopping.enabled": "false",
        },
    )
    cfg = load_config(ROOT / "configs" / "base.yaml", sets, env={})
    summary = train(cfg, log=lambda _l: None)
    rates = read_history(Path(summary["run_dir"]) / "history.csv")["learning_rate"]
    lr = cfg.train.learning_rate
    expected = [cosine_learning_rate(e, 3, lr, cfg.train.reduce_lr.min_lr) for e in range(3)]
    np.testing.assert_allclose(rates, expected, rtol=1e-5)


def test_an_unknown_schedule_is_refused_by_name(tmp_path):
    from ser.config import ConfigError

    with pytest.raises(ConfigError, match="train.schedule"):
        load_config(ROOT / "configs" / "base.yaml", ["train.schedule=linear"], env={})


def test_distillation_targets_blend_the_label_with_the_softened_teacher():
    from ser.training import distillation_targets

    teacher = np.array([[0.8, 0.15, 0.05], [0.25, 0.25, 0.5]])
    targets = distillation_targets(teacher, np.array([0, 1]), weight=0.5, temperature=2.0)
    soft = np.sqrt(teacher) / np.sqrt(teacher).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(targets, 0.5 * np.eye(3)[[0, 1]] + 0.5 * soft, atol=1e-6)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
    # Temperature 1 keeps the teacher's probabilities; weight 0 keeps the labels.
    same = distillation_targets(teacher, np.array([0, 1]), weight=1.0, temperature=1.0)
    np.testing.assert_allclose(same, teacher, atol=1e-6)
    hard = distillation_targets(teacher, np.array([2, 0]), weight=0.0, temperature=3.0)
    np.testing.assert_array_equal(hard, np.eye(3)[[2, 0]])


def _distilled_lstm(corpora: Path, tmp_path: Path, **extra: str):
    """A tiny LSTM run's config distilled from a seed ensemble of two."""
    sets = tiny_overrides(
        corpora, tmp_path, "lstm", **{"model.ensemble": "2", "model.distill": "0.5", **extra}
    )
    return load_config(ROOT / "configs" / "base.yaml", sets, env={})


def test_a_distilled_run_serves_one_student_trained_on_the_ensemble(corpora, tmp_path, monkeypatch):
    """``model.distill``: the members train, then one more network learns from their
    averaged probabilities; the run keeps and serves that network alone."""
    import keras

    import ser.training as training
    from ser import runs
    from ser.inference import Predictor

    seen: list[np.ndarray] = []

    def recorded(*args, **kwargs):
        seen.append(distil(*args, **kwargs))
        return seen[-1]

    distil = training.distillation_targets
    monkeypatch.setattr(training, "distillation_targets", recorded)
    cfg = _distilled_lstm(corpora, tmp_path, **{"train.epochs": "2", "train.run_name": "kd"})
    lines: list[str] = []
    summary = train(cfg, log=lines.append)
    run_dir = Path(summary["run_dir"])
    assert [m["seed"] for m in summary["members"]] == [42, 43, 44]
    student = summary["members"][-1]
    assert student["student"] and 0.0 <= student["teacher_val_ua"] <= 1.0
    assert summary["best_epoch"] == student["best_epoch"]
    assert "teacher (ensemble of 2): validation UA" in "\n".join(lines)
    # The student's targets: every training example, half its label, half the teacher.
    (targets,) = seen
    assert targets.shape[1] == len(summary["labels"])
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-5)
    assert targets.max(axis=1).min() >= 0.5 and not np.all(targets.max(axis=1) > 0.999)
    # One network is served: not the members' average, and the same through Predictor.
    model = keras.models.load_model(run_dir / runs.MODEL)
    assert not model.name.startswith("ensemble_of")
    x = np.random.default_rng(0).normal(size=(3, 40, model.input_shape[-1])).astype(np.float32)
    members = [keras.models.load_model(run_dir / "members" / str(k) / runs.MODEL) for k in range(2)]
    average = np.mean([m.predict(x, verbose=0) for m in members], axis=0)
    assert not np.allclose(model.predict(x, verbose=0), average, atol=1e-4)
    served = Predictor.load(run_dir)
    np.testing.assert_allclose(
        served.model(x, training=False), model.predict(x, verbose=0), atol=1e-5
    )
    assert runs.history_files(run_dir) == [run_dir / runs.HISTORY]  # the student's curves

    # A resume trains neither member again.
    lines.clear()
    train(cfg, resume=run_dir, log=lines.append)
    text = "\n".join(lines)
    assert "member 1/2: done before" in text and "member 2/2: done before" in text


def test_distillation_without_an_ensemble_is_refused(tmp_path):
    from ser.config import ConfigError

    with pytest.raises(ConfigError, match="model.distill"):
        load_config(ROOT / "configs" / "base.yaml", ["model.distill=0.5"], env={})


def test_held_out_teachers_never_heard_the_speaker_they_teach_on(corpora, tmp_path, monkeypatch):
    """``model.distill_teacher: held_out``: member k fits without the k-th group of
    training speakers, and each training example's teacher probabilities come from the
    member that left its speaker out."""
    import ser.training as training

    fitted: list[np.ndarray | None] = []
    fit_member = training._fit_member

    def recording_fit(*args, **kwargs):
        fitted.append(kwargs.get("examples"))
        return fit_member(*args, **kwargs)

    monkeypatch.setattr(training, "_fit_member", recording_fit)
    groups: list[np.ndarray] = []
    held_out_groups = training._held_out_groups
    monkeypatch.setattr(
        training,
        "_held_out_groups",
        lambda cfg, data: groups.append(held_out_groups(cfg, data)) or groups[-1],
    )
    cfg = _distilled_lstm(
        corpora,
        tmp_path,
        **{
            "model.distill_teacher": "held_out",
            "train.epochs": "1",
            "augment.conditions": "[telephone]",
            "augment.condition_copies": "1",
        },
    )
    lines: list[str] = []
    summary = train(cfg, log=lines.append)
    assert "teacher (held-out members of 2)" in "\n".join(lines)
    (group,) = groups
    assert set(group) == {0, 1}
    # Each member fits on the other group's examples only; the student on all of them.
    np.testing.assert_array_equal(fitted[0], np.flatnonzero(group != 0))
    np.testing.assert_array_equal(fitted[1], np.flatnonzero(group != 1))
    assert fitted[2] is None and summary["members"][-1]["student"]
    # Speakers (and a clip's copy in a recording condition) stay in one group.
    from ser.data.prepare import CONDITION_MARK

    rows = training.prepare_data(cfg, log=lambda _l: None).rows["train"]
    by_speaker: dict[str, set[int]] = {}
    for row, g in zip(rows, group[: len(rows)], strict=True):
        by_speaker.setdefault(row.speaker.split(CONDITION_MARK)[0], set()).add(int(g))
    assert len(by_speaker) >= 2 and all(len(g) == 1 for g in by_speaker.values())


def test_held_out_groups_fall_back_to_clips_for_one_training_speaker():
    """TESS's folds train on one speaker: the groups are then made of clips, each with
    its copies (a recording condition and the served copy that follows the rows)."""
    from types import SimpleNamespace

    from ser.training import _held_out_groups

    paths = [f"s/{n}.wav" for n in range(6)]
    rows = [SimpleNamespace(path=p, speaker="tess:OAF") for p in paths]
    rows += [SimpleNamespace(path=f"{p}@telephone", speaker="tess:OAF@telephone") for p in paths]
    data = SimpleNamespace(rows={"train": rows}, served_train=([0] * len(rows), None))
    sets = ["model.ensemble=3", "model.distill=0.5", "model.distill_teacher=held_out"]
    cfg = load_config(ROOT / "configs" / "base.yaml", sets, env={})
    groups = _held_out_groups(cfg, data)
    assert len(groups) == 2 * len(rows) and sorted(np.bincount(groups[:6])) == [2, 2, 2]
    np.testing.assert_array_equal(groups[:6], groups[6:12])  # a clip's copy goes with it
    np.testing.assert_array_equal(groups[:12], groups[12:])  # and its served copies
    # Pooled vectors' session copies: several per row, each row's together.
    pooled = SimpleNamespace(rows={"train": rows}, served_train=([0] * 3 * len(rows), None))
    copies = _held_out_groups(cfg, pooled)[len(rows) :]
    np.testing.assert_array_equal(copies, np.repeat(groups[: len(rows)], 3))
    ensemble = load_config(ROOT / "configs" / "base.yaml", sets[:2], env={})
    assert _held_out_groups(ensemble, data) is None


def test_a_refit_trains_on_the_validation_speakers_too_for_the_chosen_epochs(corpora, tmp_path):
    """``train.refit_with_validation``: the validated network is kept aside; the served
    one retrains from the start on training and validation clips for the validated
    fit's best number of epochs, with the normaliser of that data."""
    import keras

    from ser import runs
    from ser.data.pipeline import Normaliser
    from ser.data.prepare import prepare_data
    from ser.inference import Predictor

    sets = tiny_overrides(
        corpora, tmp_path, "lstm", **{"train.epochs": "3", "train.refit_with_validation": "true"}
    )
    cfg = load_config(ROOT / "configs" / "base.yaml", sets, env={})
    lines: list[str] = []
    summary = train(cfg, log=lines.append)
    run_dir = Path(summary["run_dir"])
    refit = summary["refit"]
    assert refit["epochs"] == summary["best_epoch"] >= 1
    assert summary["seconds"]["fit"] > refit["fit_seconds"] > 0  # both fits counted
    assert len((run_dir / "refit_history.csv").read_text().splitlines()) == refit["epochs"] + 1
    assert sum(line.startswith("refit epoch") for line in lines) == refit["epochs"]
    # More speakers than the validated fit trained on: the validation ones.
    data = prepare_data(cfg, log=lambda _l: None)
    both = prepare_data(cfg, log=lambda _l: None, validation_in_training=True)
    assert len(both.rows["train"]) == len(data.rows["train"]) + len(data.rows["val"])
    assert refit["speakers"] == len({r.speaker for r in both.rows["train"]})
    assert refit["speakers"] > len({r.speaker for r in data.rows["train"]})
    saved = Normaliser.load(run_dir / runs.NORMALISER)
    np.testing.assert_allclose(saved.mean, Normaliser.fit(both.inputs["train"]).mean, rtol=1e-5)
    # The served network is the refit one, not the validated one.
    validated = keras.models.load_model(run_dir / "validated" / runs.MODEL)
    served = Predictor.load(run_dir)
    x = np.random.default_rng(0).normal(size=(2, 30, served.input_dim)).astype(np.float32)
    refitted = keras.models.load_model(run_dir / runs.MODEL)
    assert not np.allclose(validated.predict(x, verbose=0), refitted.predict(x, verbose=0))
    np.testing.assert_allclose(
        served.model(x, training=False), refitted.predict(x, verbose=0), atol=1e-5
    )
    # The learning rate of every validated epoch is in the history the refit replays.
    history = (run_dir / "history.csv").read_text().splitlines()
    assert "learning_rate" in history[0]


def test_a_refit_is_of_one_network(tmp_path):
    from ser.config import ConfigError

    with pytest.raises(ConfigError, match="refit_with_validation"):
        load_config(
            ROOT / "configs" / "base.yaml",
            ["train.refit_with_validation=true", "model.ensemble=2"],
            env={},
        )
