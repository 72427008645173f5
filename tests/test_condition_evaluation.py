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


@pytest.fixture(scope="module")
def levelled_lstm_run(tmp_path_factory):
    """The kind of run ``configs/lstm.yaml`` trains: a sequence model on speaker-normalised
    frames (served with the frame prior) of clips brought to -25 dBFS."""
    from ser.config import load_config
    from ser.training import train
    from tests.support import ROOT
    from tests.support.fakes import make_emodb
    from tests.support.tiny_run import tiny_overrides

    work = tmp_path_factory.mktemp("levelled_lstm")
    make_emodb(work / "corpora")
    extra = {
        "features.loudness_db": "-25",
        "features.normalisation": "speaker",
        "model.lstm.pooling": "stats",
        "train.epochs": "5",
        "train.run_name": "levelled_lstm",
        "train.confusion_images": "false",
        "evaluation.baselines": "[]",
    }
    sets = tiny_overrides(work / "corpora", work, "lstm", "[emodb]", **extra)
    return train(load_config(ROOT / "configs" / "base.yaml", sets, env={}), log=lambda _: None)


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


@pytest.mark.parametrize("kind", ["levelled_run", "levelled_lstm_run"])
def test_served_answers_do_not_depend_on_the_level(kind, request, tmp_path):
    """``features.loudness_db`` is applied where every entry point extracts features:
    ``Predictor`` (``ser predict``, the stream) and ``POST /predict`` give the same
    probabilities for a clip 30 dB quieter or 6 dB louder, for a dense run on
    speaker-normalised vectors and for a sequence run served with its frame prior. The
    clips are tones like the generated corpus's (served without the speech check, which
    rejects tones), so that the answers differ from clip to clip."""
    import numpy as np
    from fastapi.testclient import TestClient

    from ser.audio import load_audio
    from ser.inference import Predictor
    from ser.serving.app import create_app
    from ser.serving.settings import ServingSettings
    from tests.support.fakes import EMOTION_HZ, write_tone

    predictor = Predictor.load(
        request.getfixturevalue(kind)["run_dir"], xla=False, speech_check=False
    )
    assert (predictor.frame_prior is not None) == (kind == "levelled_lstm_run")
    gains = (-30.0, 0.0, 6.0)
    firsts = []
    with TestClient(create_app(predictor, settings=ServingSettings(speech_check=False))) as client:
        for emotion in ("sad", "angry", "fear"):
            tone = load_audio(
                write_tone(tmp_path / f"{emotion}.wav", 0.6, hz=EMOTION_HZ[emotion]), 16000
            )
            waves = [tone * np.float32(10 ** (g / 20)) for g in gains]
            direct = [predictor.predict_clip(w).probabilities for w in waves]
            for probs in direct[1:]:
                np.testing.assert_allclose(probs, direct[0], atol=1e-3)
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
            firsts.append(direct[0])
    # The clips get different answers, by far more than the tolerances: the checks can fail.
    assert max(np.abs(a - b).max() for a in firsts for b in firsts) > 5e-2


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
