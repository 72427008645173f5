"""Runs with ``features.pooled_normalisation: speaker``: what training saves for
inference, and how a lone clip (no speaker statistics) is normalised."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from ser.config import load_config
from ser.data.pipeline import Normaliser, speaker_prior
from ser.data.prepare import prepare_data
from ser.inference import Predictor
from ser.runs import SPEAKER_PRIOR, RunDirError
from tests.support import ROOT
from tests.support.signals import gliding_tone, non_speech
from tests.support.streaming import stream_replies
from tests.support.tiny_run import train_speaker_normalised


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_speaker_normalised(tmp_path_factory.mktemp("prior"), **{"train.run_name": "prior"})


def test_prior_is_the_average_training_speaker():
    rng = np.random.default_rng(0)
    a = rng.normal(10, 2, (5, 3))
    b = rng.normal(-10, 4, (3, 3))
    prior = speaker_prior(list(a) + list(b), ["A"] * 5 + ["B"] * 3)
    np.testing.assert_allclose(prior.mean, (a.mean(0) + b.mean(0)) / 2, rtol=1e-5)
    np.testing.assert_allclose(prior.std, (a.std(0) + b.std(0)) / 2, rtol=1e-5)


def test_training_saves_the_prior_and_inference_applies_it(run):
    cfg, summary = run
    run_dir = summary["run_dir"]
    prior = Normaliser.load(f"{run_dir}/{SPEAKER_PRIOR}")
    predictor = Predictor.load(run_dir, xla=False)
    assert predictor.speaker_prior is not None
    # The prior is fitted on the raw pooled vectors of the training speakers.
    data = prepare_data(cfg, log=lambda _line: None)
    np.testing.assert_allclose(prior.mean, data.speaker_prior.mean, rtol=1e-5)
    wave = 0.1 * np.sin(2 * np.pi * 180 * np.arange(16000) / 16000).astype(np.float32)
    frames = predictor.frame_features(wave)
    raw = frames.mean(0)  # the first pooled statistic is the mean
    x = predictor.model_input(frames)
    d = raw.shape[0]
    np.testing.assert_allclose(x[:d], (raw - prior.mean[:d]) / prior.std[:d], rtol=1e-4, atol=1e-4)
    probs = predictor.predict_wave(wave)
    assert np.isclose(probs.sum(), 1.0, atol=1e-4)


def test_a_run_without_its_prior_is_refused(run, tmp_path):
    import shutil

    _cfg, summary = run
    copy = tmp_path / "copy"
    shutil.copytree(summary["run_dir"], copy, symlinks=True)
    (copy / SPEAKER_PRIOR).unlink()
    with pytest.raises(RunDirError, match=SPEAKER_PRIOR):
        Predictor.load(copy, xla=False)


def test_session_starts_at_the_prior_and_converges_to_the_speakers_statistics():
    from ser.inference import SpeakerSession

    rng = np.random.default_rng(1)
    prior = Normaliser(np.zeros(3, np.float32), np.ones(3, np.float32))
    clips = rng.normal([4.0, -2.0, 1.0], [2.0, 0.5, 3.0], size=(400, 3))
    session = SpeakerSession(prior, prior_weight=5)
    assert session.normaliser() is prior  # no clip yet: the average training speaker
    session.add(clips[0])
    first = session.normaliser()
    # One clip: its mean is shrunk 1 : 5 towards the prior's, its (zero) variance likewise.
    np.testing.assert_allclose(first.mean, clips[0] / 6, rtol=1e-5)
    np.testing.assert_allclose(first.std, np.sqrt(5 / 6), rtol=1e-5)
    for x in clips[1:]:
        session.add(x)
    last = session.normaliser()
    assert session.count == 400
    # After many clips: what training and cross-validation use, the speaker's own z-norm.
    k = 5 / 405
    np.testing.assert_allclose(last.mean, (1 - k) * clips.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(last.std, np.sqrt((1 - k) * clips.var(0) + k), rtol=1e-5)
    with pytest.raises(ValueError, match="pooled vector of 3"):
        session.add(np.zeros(4))
    with pytest.raises(ValueError, match="prior_weight"):
        SpeakerSession(prior, prior_weight=0)


def _sums(clips: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    return len(clips), clips.sum(0), (clips * clips).sum(0)


def test_a_run_of_alike_clips_leans_on_the_prior_more_than_a_varied_one():
    from ser.data.pipeline import blended_normaliser, session_spread, spread_weighted_normaliser

    rng = np.random.default_rng(2)
    prior = Normaliser(np.zeros(4, np.float32), np.ones(4, np.float32))
    centre = np.array([3.0, -3.0, 2.0, 1.0])
    # Ten clips of one emotion: close together. Ten varied clips: as varied as the prior
    # expects. Both centred on the same point, so only their spread differs.
    alike = centre + 0.1 * rng.standard_normal((10, 4))
    varied = centre + rng.standard_normal((10, 4))
    alike += centre - alike.mean(0)
    varied += centre - varied.mean(0)
    assert session_spread(*_sums(alike), prior) < 0.05
    assert session_spread(*_sums(varied), prior) > 0.5
    pulled = {
        name: np.linalg.norm(spread_weighted_normaliser(*_sums(c), prior, 5.0, 2.0).mean)
        for name, c in (("alike", alike), ("varied", varied))
    }
    assert pulled["alike"] < 0.1 * pulled["varied"]  # the run stays near the prior's centre
    # Exponent 0, or clips at least as varied as the prior's: the plain blend, unchanged.
    wide = centre + 3.0 * rng.standard_normal((10, 4))
    for clips, exponent in ((alike, 0.0), (wide, 4.0)):
        got = spread_weighted_normaliser(*_sums(clips), prior, 5.0, exponent)
        plain = blended_normaliser(*_sums(clips), prior, 5.0)
        np.testing.assert_array_equal(got.mean, plain.mean)
        np.testing.assert_array_equal(got.std, plain.std)


def test_a_spread_weighted_session_still_converges_to_the_speakers_statistics():
    from ser.inference import SpeakerSession

    rng = np.random.default_rng(3)
    prior = Normaliser(np.zeros(3, np.float32), np.full(3, 2.0, np.float32))
    # A speaker less varied than the average (spread 1/4): shrunk more, but all clips
    # together still outweigh the prior.
    clips = rng.normal([4.0, -2.0, 1.0], 1.0, size=(4000, 3))
    plain, robust = SpeakerSession(prior), SpeakerSession(prior, spread_exponent=2.0)
    assert robust.normaliser() is prior
    for x in clips[:10]:
        plain.add(x)
        robust.add(x)
    early = np.linalg.norm(robust.normaliser().mean), np.linalg.norm(plain.normaliser().mean)
    assert early[0] < 0.5 * early[1]
    for x in clips[10:]:
        robust.add(x)
    np.testing.assert_allclose(robust.normaliser().mean, clips.mean(0), atol=0.1)
    np.testing.assert_allclose(robust.normaliser().std, clips.std(0), atol=0.1)
    restored = SpeakerSession(prior, spread_exponent=2.0).restore(robust.statistics())
    np.testing.assert_array_equal(restored.normaliser().mean, robust.normaliser().mean)
    with pytest.raises(ValueError, match="spread_exponent"):
        SpeakerSession(prior, spread_exponent=-1.0)


def test_predictor_counts_each_clip_into_its_session(run):
    _, summary = run
    predictor = Predictor.load(summary["run_dir"], xla=False)
    session = predictor.new_session()
    assert session is not None and session.count == 0
    rate = predictor.sample_rate
    waves = [
        0.1 * np.sin(2 * np.pi * hz * np.arange(rate) / rate).astype(np.float32)
        for hz in (150, 220, 330)
    ]
    alone = [predictor.prepare_clip(w).inputs[0] for w in waves]
    together = [predictor.prepare_clip(w, session=session).inputs[0] for w in waves]
    assert session.count == 3
    # The first clip of a session is already normalised differently from the prior alone
    # (its own statistics count), and the inputs stay finite.
    assert not np.allclose(alone[0], together[0])
    assert all(np.isfinite(x).all() for x in together)
    # predict_clip checks for speech first: a pure tone is not counted, speech is.
    tonal = predictor.predict_clip(waves[0], session=session)
    assert tonal.kind == "no_speech" and tonal.emotion is None and session.count == 3
    clip = predictor.predict_clip(gliding_tone(1.0, 150.0), session=session)
    assert clip.kind == "prediction" and clip.speech.speech is True
    assert session.count == 4 and np.isclose(clip.probabilities.sum(), 1.0, atol=1e-4)


def test_http_sessions_and_streams_normalise_by_the_speaker_so_far(run):
    from fastapi.testclient import TestClient

    from ser.serving.app import create_app
    from ser.serving.settings import ServingSettings
    from tests.support.tiny_run import encode

    _, summary = run
    predictor = Predictor.load(summary["run_dir"], xla=False)
    settings = ServingSettings(
        max_sessions=2, stream_window=1.0, stream_hop=1.0, session_spread_exponent=2.0
    )
    clips = [encode(gliding_tone(1.0, hz, seed=i)) for i, hz in enumerate((150, 220, 330))]
    silence = encode(non_speech(1.0)["silence"])

    def post(data: bytes, session: str | None = None):
        params = {"session": session} if session is not None else {}
        return client.post("/predict", params=params, files={"file": ("c.wav", data, "audio/wav")})

    with TestClient(create_app(predictor, settings=settings)) as client:
        # Every session the service opens uses its statistics setting.
        assert client.app.state.service.new_speaker().spread_exponent == 2.0
        alone = post(clips[0]).json()
        assert alone["session_clips"] is None and alone["session"] is None
        made = client.post("/sessions").json()
        assert made["speaker_normalised"] is True
        speaker_1 = made["session"]
        counts = [post(c, speaker_1).json()["session_clips"] for c in clips[:2]]
        quiet = post(silence, speaker_1).json()  # no speech: not counted
        assert quiet["type"] == "no_speech" and quiet["session_clips"] is None
        counts.append(post(clips[2], speaker_1).json()["session_clips"])
        assert counts == [1, 2, 3]
        first_of_2 = post(clips[0], "new").json()  # ?session=new: a session of its own
        assert first_of_2["session_clips"] == 1 and first_of_2["session"] not in (None, speaker_1)
        # The third clip heard after two others of its speaker is normalised differently
        # from the same clip alone (the average training speaker).
        third_alone = post(clips[2]).json()["probabilities"]
        assert third_alone != post(clips[2], speaker_1).json()["probabilities"]
        # Used last, the second session stays; speaker-1, used before it, goes next.
        assert post(clips[1], first_of_2["session"]).json()["session_clips"] == 2
        third_in_session = post(clips[2], "new").json()  # pushes out speaker-1 (limit 2)
        assert third_in_session["session_clips"] == 1
        gone = post(clips[0], speaker_1)
        assert gone.status_code == 404 and gone.json()["field"] == "session"
        batch = client.post(
            "/predict/batch",
            params={"session": "new"},
            files=[("files", (f"{i}.wav", c, "audio/wav")) for i, c in enumerate(clips)],
        ).json()
        assert sorted(r["prediction"]["session_clips"] for r in batch["results"]) == [1, 2, 3]
        assert {r["prediction"]["session"] for r in batch["results"]} == {batch["session"]}
        named = post(clips[0], "../etc")  # a name the client made up: no such session
        assert named.status_code == 404 and named.json()["field"] == "session"
        # A live stream is one speaker: each speech window counts into it, silence not.
        parts = [gliding_tone(1.0, 150), np.zeros(16000), gliding_tone(1.0, 220, seed=1)]
        replies = stream_replies(client, np.concatenate([*parts, gliding_tone(1.0, 330, seed=2)]))
        assert [r["type"] for r in replies][1] == "no_speech"
        assert [r["session_clips"] for r in replies if r["type"] == "prediction"] == [1, 2, 3]


def test_predict_one_speaker_normalises_the_files_by_each_other(run, tmp_path, capsys):
    import soundfile as sf

    from ser.audio import load_audio
    from ser.cli import main

    _, summary = run
    for i, hz in enumerate((150, 220, 330)):
        sf.write(tmp_path / f"{i}.wav", gliding_tone(1.0, hz, seed=i), 16000)
    sf.write(tmp_path / "1z-silence.wav", non_speech(1.0)["silence"], 16000)  # between 1 and 2
    args = ["predict", str(tmp_path), "--run", summary["run_dir"], "--json"]
    assert main(args) == 0
    alone = json.loads(capsys.readouterr().out)["results"]
    assert main([*args, "--one-speaker"]) == 0
    together = json.loads(capsys.readouterr().out)["results"]
    assert [r["type"] for r in together] == ["prediction", "prediction", "no_speech", "prediction"]
    assert together[2]["emotion"] is None
    together = [r for r in together if r["type"] == "prediction"]  # silence was not counted
    predictor = Predictor.load(summary["run_dir"], xla=False)
    session = predictor.new_session()
    expected = [  # the files as written (16-bit), one session in the order given
        predictor.predict_clip(
            load_audio(tmp_path / f"{i}.wav", 16000), session=session
        ).probabilities
        for i in range(3)
    ]
    for result, probs in zip(together, expected, strict=True):
        assert list(result["probabilities"].values()) == pytest.approx(probs.tolist(), abs=1e-4)
    spoken = [r["probabilities"] for r in alone if r["type"] == "prediction"]
    assert spoken != [r["probabilities"] for r in together]  # the session changed them


def test_served_copies_are_normalised_as_sessions_would_be():
    from ser.data.pipeline import served_copies
    from ser.inference import SpeakerSession

    rng = np.random.default_rng(1)
    vectors = list(rng.normal(3.0, 2.0, (6, 4)))
    speakers = ["A"] * 4 + ["B"] * 2
    prior = Normaliser(np.zeros(4, np.float32), np.ones(4, np.float32))
    copies = served_copies(vectors, speakers, prior, 50, np.random.default_rng(0))
    assert [len(c) for c in copies] == [50] * 6
    # Every copy is one of the normalisations a session of that speaker could give it:
    # the prior alone, or the clip with some of its speaker's other clips.
    for i, per_clip in enumerate(copies):
        same = [j for j, s in enumerate(speakers) if s == speakers[i] and j != i]
        possible = [prior.apply(vectors[i].astype(np.float32))]
        for m in range(len(same) + 1):
            for others in combinations(same, m):
                session = SpeakerSession(prior)
                for j in (i, *others):
                    session.add(vectors[j])
                possible.append(session.normaliser().apply(vectors[i].astype(np.float32)))
        for copy in per_clip:
            assert min(np.abs(copy - p).max() for p in possible) < 1e-5
        # and the draws cover the lone clip and the whole speaker alike
        assert min(np.abs(per_clip[k] - possible[0]).max() for k in range(50)) < 1e-6
        assert min(np.abs(per_clip[k] - possible[-1]).max() for k in range(50)) < 1e-6


def test_session_copies_train_beside_the_whole_speaker_vectors(tmp_path):
    cfg, summary = train_speaker_normalised(
        tmp_path, **{"augment.session_copies": "3", "train.run_name": "served"}
    )
    data = prepare_data(cfg, log=lambda _line: None)
    vectors, targets = data.served_train
    assert len(vectors) == 3 * len(data.inputs["train"])
    np.testing.assert_array_equal(targets, np.repeat(data.targets["train"], 3))
    assert Predictor.load(summary["run_dir"], xla=False).speaker_prior is not None


def test_session_copies_need_speaker_normalisation():
    from ser.config import ConfigError

    with pytest.raises(ConfigError, match="session_copies needs features.pooled_normalisation"):
        load_config(ROOT / "configs" / "base.yaml", ["augment.session_copies=2"], env={})


def test_evaluation_reports_every_served_mode(run):
    from ser.evaluation import evaluate_run

    _cfg, summary = run
    lines: list[str] = []
    report = evaluate_run(summary["run_dir"], baselines=False, log=lines.append)
    served = report["served"]
    assert list(served) == ["prior", "session", "session_by_emotion", "speaker"]
    assert served["speaker"] == pytest.approx(report["models"][0]["ua"], abs=1e-6)
    assert any(line.startswith("served UA: each clip alone") for line in lines)
    text = (Path(summary["run_dir"]) / "report.md").read_text()
    assert "## Served: how each clip is normalised" in text
    assert "| speaker session, clips sorted by emotion (worst case) |" in text
