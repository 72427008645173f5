"""Speaker-adversarial training (``train.speaker_adversarial``): the gradient reversal,
the targets, and a run that trains the adversary and serves only the emotion network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from ser.config import ConfigError, load_config
from ser.speaker_adversarial import GradientReversal, targets
from ser.training import train
from tests.support import ROOT
from tests.support.fakes import make_corpora
from tests.support.tiny_run import tiny_overrides


def test_gradient_reversal_is_the_identity_forward_and_negates_backward():
    x = tf.constant([[1.0, -2.0, 3.0]])
    layer = GradientReversal(0.5)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * tf.constant([[1.0, 2.0, 3.0]]))
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), [[-0.5, -1.0, -1.5]])


def test_targets_put_the_speaker_one_hot_beside_the_emotion():
    out = targets(np.array([2, 0]), np.array([1, 0]), classes=3, count=2)
    np.testing.assert_array_equal(out, [[0, 0, 1, 0, 1], [1, 0, 0, 1, 0]])
    soft = targets(np.array([[0.2, 0.8]], np.float32), np.array([2]), classes=2, count=3)
    np.testing.assert_allclose(soft, [[0.2, 0.8, 0, 0, 1]])


def test_an_adversarial_run_trains_the_speaker_head_and_serves_the_emotion_network(tmp_path):
    import keras

    from ser import runs
    from ser.inference import Predictor
    from ser.reports import read_history

    corpora = make_corpora(tmp_path / "corpora")
    sets = tiny_overrides(
        corpora,
        tmp_path,
        "lstm",
        **{
            "train.epochs": "2",
            "train.speaker_adversarial": "0.5",
            "augment.served_frames": "true",
            "features.normalisation": "speaker",
        },
    )
    cfg = load_config(ROOT / "configs" / "base.yaml", sets, env={})
    lines: list[str] = []
    summary = train(cfg, log=lines.append)
    run_dir = Path(summary["run_dir"])
    history = read_history(run_dir / runs.HISTORY)
    assert len(history["speaker_loss"]) == 2 and np.all(np.isfinite(history["speaker_loss"]))
    assert 0.0 <= min(history["speaker_accuracy"]) <= 1.0
    saved = keras.models.load_model(run_dir / runs.MODEL)
    assert not any("speaker" in layer.name for layer in saved.layers)
    assert saved.output.shape[-1] == len(summary["labels"])
    served = Predictor.load(run_dir)
    x = np.random.default_rng(0).normal(size=(2, 30, served.input_dim)).astype(np.float32)
    np.testing.assert_allclose(
        served.model(x, training=False), saved.predict(x, verbose=0), atol=1e-5
    )
    assert summary["parameters"] == saved.count_params()
    assert any(f"{saved.count_params():,} parameters" in line for line in lines)
    assert sum(" speaker_acc " in line for line in lines if line.startswith("epoch")) == 2


def test_each_training_example_gets_its_clips_speaker(tmp_path):
    """Copies in recording conditions and copies normalised as served carry the speaker
    of the clip they were made from."""
    from ser.data.prepare import CONDITION_MARK, prepare_data
    from ser.training import _training_examples, _training_speakers

    corpora = make_corpora(tmp_path / "corpora")
    sets = tiny_overrides(
        corpora,
        tmp_path,
        "lstm",
        **{
            "augment.served_frames": "true",
            "features.normalisation": "speaker",
            "augment.conditions": "[telephone]",
            "augment.condition_copies": "1",
        },
    )
    cfg = load_config(ROOT / "configs" / "base.yaml", sets, env={})
    data = prepare_data(cfg, log=lambda _l: None)
    index, count = _training_speakers(data)
    train_x, _, _ = _training_examples(cfg, data, lambda _l: None)
    assert len(index) == len(train_x) == 2 * len(data.rows["train"])
    rows = data.rows["train"]
    names = sorted({r.speaker.split(CONDITION_MARK)[0] for r in rows})
    assert count == len(names) >= 2
    own = [names.index(r.speaker.split(CONDITION_MARK)[0]) for r in rows]
    np.testing.assert_array_equal(index, own + own)
    assert any(CONDITION_MARK in r.speaker or CONDITION_MARK in r.path for r in rows)


def test_the_adversary_trains_on_one_process_only():
    with pytest.raises(ConfigError, match="train.speaker_adversarial"):
        load_config(
            ROOT / "configs" / "base.yaml",
            ["train.speaker_adversarial=0.5", "train.distribute=mirrored"],
            env={},
        )
