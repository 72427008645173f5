"""Sequence runs on speaker-normalised frames (``features.normalisation: speaker``): the
average training speaker's frame statistics are saved with the run, a served clip's
frames are normalised by them, and evaluation scores the test clips that way too."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ser.config import load_config
from ser.data.pipeline import Normaliser, speaker_prior, zscore
from ser.data.prepare import prepare_data
from ser.evaluation import evaluate_run
from ser.features.extractors import analysed_span, extract_features
from ser.inference import Predictor, SpeakerSession
from ser.runs import FRAME_PRIOR
from ser.training import train
from tests.support import ROOT
from tests.support.fakes import make_emodb
from tests.support.streaming import stream_replies
from tests.support.tiny_run import tiny_overrides


def quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("frameprior")
    make_emodb(work / "corpora")
    sets = tiny_overrides(
        work / "corpora",
        work,
        "lstm",
        "[emodb]",
        **{
            "features.normalisation": "speaker",
            # configs/lstm.yaml's front end: each clip levelled and cut to its speech
            "features.loudness_db": "-25",
            "features.speech_span": "0.15",
            "model.lstm.pooling": "stats",
            "model.lstm.functionals": "[mean, std]",
            "train.confusion_images": "false",
            "train.run_name": "frameprior",
            "evaluation.baselines": "[logistic_regression]",
            "evaluation.plots": "false",
            "evaluation.tensorboard": "false",
        },
    )
    cfg = load_config(ROOT / "configs" / "base.yaml", sets, env={})
    return cfg, train(cfg, log=quiet)


def test_frame_prior_averages_each_speakers_frame_statistics():
    rng = np.random.default_rng(0)
    a = [rng.normal(5, 2, (40, 3)), rng.normal(5, 2, (10, 3))]  # speaker A: two clips
    b = [rng.normal(-5, 4, (30, 3))]
    prior = speaker_prior(a + b, ["A", "A", "B"])
    whole_a = np.concatenate(a)
    np.testing.assert_allclose(prior.mean, (whole_a.mean(0) + b[0].mean(0)) / 2, rtol=1e-5)
    np.testing.assert_allclose(prior.std, (whole_a.std(0) + b[0].std(0)) / 2, rtol=1e-5)


def test_training_saves_the_frame_prior_of_the_training_speakers(run):
    cfg, summary = run
    saved = Normaliser.load(f"{summary['run_dir']}/{FRAME_PRIOR}")
    data = prepare_data(cfg, log=quiet, keep_features=True)
    train_rows = data.rows["train"]
    expected = speaker_prior(
        [data.raw_features[r.path] for r in train_rows], [r.speaker for r in train_rows]
    )
    np.testing.assert_allclose(saved.mean, expected.mean, rtol=1e-5)
    np.testing.assert_allclose(saved.std, expected.std, rtol=1e-5)


def test_a_served_clip_is_normalised_by_the_frame_prior(run):
    cfg, summary = run
    predictor = Predictor.load(summary["run_dir"], xla=False)
    assert predictor.frame_prior is not None
    wave = 0.1 * np.sin(2 * np.pi * 180 * np.arange(16000) / 16000).astype(np.float32)
    raw = extract_features(wave, cfg.data.sample_rate, cfg.features)
    np.testing.assert_allclose(
        predictor.frame_features(wave), predictor.frame_prior.apply(raw), rtol=1e-5, atol=1e-5
    )
    # Not the clip's own z-score, which a lone clip got before the prior existed.
    assert not np.allclose(predictor.frame_features(wave), zscore(raw), atol=1e-3)


def test_a_run_saved_without_the_frame_prior_z_scores_each_clip(run, tmp_path):
    _cfg, summary = run
    copy = tmp_path / "old"
    shutil.copytree(summary["run_dir"], copy, symlinks=True)
    (copy / FRAME_PRIOR).unlink()
    predictor = Predictor.load(copy, xla=False)
    frames = np.random.default_rng(1).normal(3.0, 2.0, (50, predictor.input_dim))
    np.testing.assert_allclose(predictor.lone_clip_frames(frames), zscore(frames), atol=1e-6)


def test_evaluation_reports_each_clip_alone_in_sessions_and_by_whole_speaker(run):
    _cfg, summary = run
    report = evaluate_run(summary["run_dir"], write=False, log=quiet)
    assert set(report["served"]) == {"prior", "session", "session_by_emotion", "speaker"}
    assert all(0.0 <= ua <= 1.0 for ua in report["served"].values())
    # The whole-speaker mode is the Keras row of the report itself.
    keras_ua = next(m for m in report["models"] if m["kind"] == "keras")["ua"]
    assert report["served"]["speaker"] == pytest.approx(keras_ua, abs=1e-9)


def test_predict_http_and_evaluation_give_a_clip_the_same_probabilities(run, tmp_path, capsys):
    """The lone-clip path of evaluation (``served_modes``' prior) is what ``ser predict``
    and ``/predict`` serve, for the two-branch LSTM on speaker-normalised frames, with
    the clip levelled and cut to its speech as ``configs/lstm.yaml`` does."""
    import json

    import soundfile as sf
    from fastapi.testclient import TestClient

    from ser.audio import load_audio
    from ser.cli import main
    from ser.data.pipeline import to_model_input
    from ser.serving.app import create_app
    from tests.support.signals import gliding_tone
    from tests.support.tiny_run import silence

    cfg, summary = run
    path = tmp_path / "clip.wav"
    sf.write(
        path, np.concatenate([silence(0.6), gliding_tone(1.5, 200, seed=4), silence(0.6)]), 16000
    )
    wave = load_audio(path, 16000)
    start, stop = analysed_span(wave, 16000, cfg.features)
    assert start > 0.3 * 16000 and stop < len(wave) - 0.3 * 16000  # the silence is cut
    predictor = Predictor.load(summary["run_dir"], xla=False)
    raw = extract_features(wave, cfg.data.sample_rate, cfg.features)
    f = cfg.features
    x = to_model_input(predictor.lone_clip_frames(raw), f.mode, f.pooling, predictor.max_frames)
    evaluated = predictor.predict_inputs([x])[0]
    assert main(["predict", str(path), "--run", summary["run_dir"], "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)["results"][0]["probabilities"]
    assert list(predicted.values()) == pytest.approx(evaluated.tolist(), abs=1e-4)
    with TestClient(create_app(predictor)) as client:
        served = client.post(
            "/predict", files={"file": ("clip.wav", path.read_bytes(), "audio/wav")}
        ).json()["probabilities"]
    assert list(served.values()) == pytest.approx(evaluated.tolist(), abs=1e-4)


def test_served_frames_train_beside_the_speaker_normalised_clips(run):
    cfg, _summary = run
    served = cfg.model_copy(
        update={"augment": cfg.augment.model_copy(update={"served_frames": True})}
    )
    data = prepare_data(served, log=quiet, keep_features=True)
    copies, targets = data.served_train
    rows = data.rows["train"]
    assert len(copies) == len(rows) and targets.tolist() == data.targets["train"].tolist()
    first = data.raw_features[rows[0].path]
    np.testing.assert_allclose(
        copies[0], data.frame_prior.apply(first)[: copies[0].shape[0]], atol=1e-6
    )
    # The speaker-normalised inputs themselves are unchanged.
    plain = prepare_data(cfg, log=quiet)
    np.testing.assert_array_equal(data.inputs["train"][0], plain.inputs["train"][0])
    assert plain.served_train is None


def test_served_frames_need_speaker_normalised_frames():
    from ser.config import ConfigError

    with pytest.raises(ConfigError, match="served_frames needs features.mode: sequence"):
        load_config(ROOT / "configs" / "best.yaml", ["augment.served_frames=true"], env={})


def test_served_frames_cover_the_copies_in_recording_conditions(run):
    """A lone clip through a phone is normalised by the clean prior when served, so its
    training copies in conditions are also seen that way."""
    from ser.data.prepare import CONDITION_MARK

    cfg, _summary = run
    augment = cfg.augment.model_copy(
        update={"served_frames": True, "conditions": ["telephone"], "condition_copies": 1}
    )
    data = prepare_data(cfg.model_copy(update={"augment": augment}), log=quiet, keep_features=True)
    copies, targets = data.served_train
    rows = data.rows["train"]
    phoned = [i for i, r in enumerate(rows) if r.path.endswith(f"{CONDITION_MARK}telephone")]
    assert phoned and len(phoned) * 2 == len(rows) == len(copies)
    assert data.train_clips == len(phoned)  # the clips, without either kind of copy
    assert targets.tolist() == data.targets["train"].tolist()
    i = phoned[0]
    expected = data.frame_prior.apply(data.raw_features[rows[i].path])
    np.testing.assert_allclose(copies[i], expected[: copies[i].shape[0]], atol=1e-6)
    # normalised by the clean prior, not by the telephone "speaker" as the plain copy is
    assert not np.allclose(copies[i], data.inputs["train"][i][: copies[i].shape[0]])


def test_a_cap_on_clips_per_speaker_thins_training_and_no_other_part(run):
    """``train.max_clips_per_speaker``: fewer training clips (and so fewer copies) for
    a speaker over the cap; validation and test keep every clip, and the log says so."""
    cfg, _summary = run
    plain = prepare_data(cfg, log=quiet)
    per_speaker = Counter(r.speaker for r in plain.rows["train"])
    cap = min(per_speaker.values()) - 2
    augment = cfg.augment.model_copy(update={"conditions": ["telephone"], "condition_copies": 1})
    train_cfg = cfg.train.model_copy(update={"max_clips_per_speaker": cap})
    lines: list[str] = []
    capped = prepare_data(
        cfg.model_copy(update={"train": train_cfg, "augment": augment}), log=lines.append
    )
    assert capped.train_clips == cap * len(per_speaker) < plain.train_clips
    assert len(capped.rows["train"]) == 2 * capped.train_clips  # each kept clip's one copy
    for part in ("val", "test"):
        assert capped.rows[part] == plain.rows[part]
    assert any(
        f"train.max_clips_per_speaker {cap}: {capped.train_clips} of {plain.train_clips}" in line
        for line in lines
    ), lines


def test_an_epoch_of_clips_trains_on_clips_and_copies_in_turn(run, tmp_path):
    """``train.epoch_size: clips``: with a served copy of each clip, an epoch is as many
    examples as clips (half the pool), drawn from an endless shuffle of both; fitting
    ends after the configured epochs (an endless dataset without set steps would not)."""
    cfg, _summary = run
    cfg = cfg.model_copy(
        update={
            "augment": cfg.augment.model_copy(update={"served_frames": True}),
            "train": cfg.train.model_copy(
                update={"epoch_size": "clips", "epochs": 2, "run_name": "clip-epochs"}
            ),
        }
    )
    lines: list[str] = []
    summary = train(cfg, log=lines.append)
    clips = prepare_data(cfg, log=quiet).train_clips
    batches = -(-clips // cfg.train.batch_size)
    told = f"epoch: {batches} batches, {clips} of the {2 * clips} training examples"
    assert any(line.startswith(told) for line in lines), lines
    history = (Path(summary["run_dir"]) / "history.csv").read_text().splitlines()
    assert len(history) == 3  # a header and two epochs


def test_an_epoch_is_every_example_unless_the_clips_have_copies():
    from ser.training import _steps_per_epoch

    base = load_config(ROOT / "configs" / "base.yaml", ["train.batch_size=32"], env={})
    clips = base.model_copy(update={"train": base.train.model_copy(update={"epoch_size": "clips"})})
    assert _steps_per_epoch(base, 100, 400) is None
    assert _steps_per_epoch(clips, 100, 400) == 4
    assert _steps_per_epoch(clips, 100, 100) is None  # no copies: a pass is an epoch
    assert _steps_per_epoch(clips, 64, 192) == 2


def test_a_frame_session_converges_to_the_speakers_frame_statistics():
    rng = np.random.default_rng(3)
    prior = Normaliser(np.zeros(4, np.float32), np.ones(4, np.float32))
    clips = [rng.normal(2.0, 3.0, (int(rng.integers(40, 60)), 4)) for _ in range(400)]
    session = SpeakerSession(prior)
    with pytest.raises(ValueError, match=r"frame features \[T, 4\]"):
        session.add_frames(np.zeros((10, 5)))
    session.add_frames(clips[0])
    first = session.normaliser()
    assert session.count == 1 and not np.allclose(first.mean, prior.mean)  # the clip counts
    assert np.all(np.abs(first.mean) < np.abs(clips[0].mean(0)))  # shrunk towards the prior
    for frames in clips[1:]:
        session.add_frames(frames)
    whole = np.concatenate(clips)
    np.testing.assert_allclose(session.normaliser().mean, whole.mean(0), atol=0.05)
    np.testing.assert_allclose(session.normaliser().std, whole.std(0), atol=0.05)


def _session_clips(tmp_path):
    """Three speech-like clips of one voice as files, in name order."""
    import soundfile as sf

    from tests.support.signals import gliding_tone

    paths = []
    for i, hz in enumerate((150, 220, 330)):
        paths.append(tmp_path / f"{i}.wav")
        sf.write(paths[-1], gliding_tone(1.5, hz, seed=i), 16000)
    return paths


def test_every_served_session_normalises_a_sequence_runs_frames_as_evaluation(
    run, tmp_path, capsys
):
    """A session of a sequence run on speaker-normalised frames counts each clip's frames
    and normalises them by the speaker so far, as ``served_modes`` replays a session:
    ``ser predict --one-speaker``, ``/predict?session=`` and a live stream agree with it."""
    import json

    from fastapi.testclient import TestClient

    from ser.audio import load_audio
    from ser.cli import main
    from ser.serving.app import create_app
    from ser.serving.settings import ServingSettings

    cfg, summary = run
    paths = _session_clips(tmp_path)
    predictor = Predictor.load(summary["run_dir"], xla=False)
    assert predictor.frame_sessions
    replay = predictor.new_session()
    raws = [
        extract_features(load_audio(p, 16000), cfg.data.sample_rate, cfg.features) for p in paths
    ]
    inputs = [predictor.model_input(Predictor.session_frames(r, replay)) for r in raws]
    expected = predictor.predict_inputs(inputs)
    alone = predictor.predict_inputs(
        [predictor.model_input(predictor.lone_clip_frames(r)) for r in raws]
    )
    assert replay.count == 3 and not np.allclose(expected[1:], alone[1:], atol=1e-3)

    args = ["predict", str(tmp_path), "--run", summary["run_dir"], "--json", "--one-speaker"]
    assert main(args) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["type"] for r in results] == ["prediction"] * 3
    for got, want in zip(results, expected, strict=True):
        assert list(got["probabilities"].values()) == pytest.approx(want.tolist(), abs=1e-4)

    settings = ServingSettings(stream_window=1.5, stream_hop=1.5)
    with TestClient(create_app(predictor, settings=settings)) as client:
        made = client.post("/sessions").json()
        assert made["speaker_normalised"] is True
        for path, want in zip(paths, expected, strict=True):
            got = client.post(
                "/predict",
                params={"session": made["session"]},
                files={"file": (path.name, path.read_bytes(), "audio/wav")},
            ).json()
            assert list(got["probabilities"].values()) == pytest.approx(want.tolist(), abs=1e-4)
        # A live stream is one speaker: its windows count into one session.
        replies = stream_replies(client, np.concatenate([load_audio(p, 16000) for p in paths]))
    heard = [r for r in replies if r["type"] == "prediction"]
    assert [r["session_clips"] for r in heard] == [1, 2, 3]
    for got, want in zip(heard, expected, strict=True):  # the same clips, as 16-bit PCM
        assert list(got["probabilities"].values()) == pytest.approx(want.tolist(), abs=2e-3)


def test_prepare_data_takes_over_the_features_extracted_before_training(run):
    from ser.data.prepare import fill_feature_cache

    cfg, _ = run
    extracted = fill_feature_cache(cfg, log=quiet)
    count = len(extracted.features)
    assert count == len(extracted.manifest.rows) > 0
    data = prepare_data(cfg, manifest=extracted, log=quiet, keep_features=True)
    assert extracted.features == {}  # not held a second time through training
    assert len(data.raw_features) == count
    again = prepare_data(cfg, log=quiet)  # read from the cache instead: the same inputs
    for part in ("train", "val", "test"):
        assert [r.path for r in again.rows[part]] == [r.path for r in data.rows[part]]
        for a, b in zip(again.inputs[part], data.inputs[part], strict=True):
            np.testing.assert_array_equal(a, b)
