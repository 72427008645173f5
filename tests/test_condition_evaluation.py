"""Scoring a trained run's test clips in other recording conditions, end to end: a tiny
speaker-normalised run on a generated corpus, through ``evaluate.py RUN --perturb``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ser import runs
from ser.cli import main
from ser.condition_evaluation import CLEAN, evaluate_run_conditions, render_conditions
from tests.support.tiny_run import train_speaker_normalised


@pytest.fixture(scope="module")
def levelled_run(tmp_path_factory):
    """A run whose clips are brought to -25 dBFS before features."""
    work = tmp_path_factory.mktemp("levelled")
    extra = {"features.loudness_db": "-25", "train.run_name": "levelled", "train.epochs": "30"}
    return train_speaker_normalised(work, **extra)[1]


def test_clean_by_speaker_is_what_training_measured(levelled_run):
    result = evaluate_run_conditions(levelled_run["run_dir"], "noise:white:10", log=print)
    clean = result["conditions"][CLEAN]
    assert clean["speaker"]["ua"] == pytest.approx(levelled_run["test"]["ua"], abs=1e-6)
    assert set(result["conditions"]) == {CLEAN, "noise:white:10"}
    assert 0.0 <= result["conditions"]["noise:white:10"]["no_speech"] <= 1.0
    saved = json.loads((Path(levelled_run["run_dir"]) / runs.CONDITIONS).read_text())
    assert saved["conditions"]["noise:white:10"] == result["conditions"]["noise:white:10"]


def test_a_levelled_run_answers_the_same_at_any_gain(levelled_run):
    result = evaluate_run_conditions(levelled_run["run_dir"], "gain:-30,gain:6", log=print)
    scores = result["conditions"]
    for mode in ("alone", "speaker"):
        clean = scores[CLEAN][mode]["predicted"]
        assert len(set(clean)) > 1  # the model tells clips apart, so a change would show
        for name in ("gain:-30", "gain:6"):
            assert scores[name][mode]["predicted"] == clean, (name, mode)
    table = render_conditions({"conditions": list(scores), "corpora": {"emodb": [result]}})
    assert "| gain:-30 | alone |" in table and "+0.0" in table


def test_cli_scores_conditions_and_refuses_a_typo_at_once(levelled_run, capsys):
    assert main(["evaluate", str(levelled_run["run_dir"]), "--perturb", "gain:-10"]) == 0
    assert "| gain:-10 | speaker |" in capsys.readouterr().out
    assert main(["evaluate", str(levelled_run["run_dir"]), "--perturb", "gain:-10,phone"]) == 2
    assert "'phone': unknown condition" in capsys.readouterr().err


def _wav(wave, sr=16000) -> bytes:
    import io

    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, wave, sr, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def test_served_answers_do_not_depend_on_the_level(levelled_run):
    """``features.loudness_db`` is applied where every entry point extracts features:
    ``Predictor`` (``ser predict``, the stream) and ``POST /predict`` give the same
    probabilities for a clip 30 dB quieter or 6 dB louder."""
    import numpy as np
    from fastapi.testclient import TestClient

    from ser.inference import Predictor
    from ser.serving.app import create_app
    from tests.support.signals import speech_like

    predictor = Predictor.load(levelled_run["run_dir"], xla=False)
    voice = speech_like(2.0, hz=180.0, seed=5, amplitude=0.2)
    gains = (-30.0, 0.0, 6.0)
    waves = [voice * np.float32(10 ** (g / 20)) for g in gains]
    direct = [predictor.predict_clip(w).probabilities for w in waves]
    for probs in direct[1:]:
        np.testing.assert_allclose(probs, direct[0], atol=1e-3)
    with TestClient(create_app(predictor)) as client:
        answers = [
            client.post("/predict", files={"file": ("v.wav", _wav(w), "audio/wav")}).json()
            for w in waves
        ]
    assert all(a["type"] == "prediction" for a in answers), answers
    for a in answers:
        assert a["probabilities"] == pytest.approx(answers[0]["probabilities"], abs=2e-3)
    assert answers[0]["probabilities"] == pytest.approx(
        dict(zip(predictor.labels, direct[0].tolist())), abs=2e-3
    )


def test_babble_comes_from_recorded_training_clips_of_an_augmented_run(tmp_path):
    extra = {
        "features.loudness_db": "-25",
        "train.run_name": "augmented",
        "augment.conditions": "[gain:-10, noise:white:20]",
        "augment.condition_copies": "1",
    }
    summary = train_speaker_normalised(tmp_path, **extra)[1]
    result = evaluate_run_conditions(summary["run_dir"], "babble:10", log=print)
    assert set(result["conditions"]) == {CLEAN, "babble:10"}
