"""``ser predict`` on files and folders, and ``ser record`` with and without a microphone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ser.cli import main
from ser.inference import Predictor
from tests.support import ROOT
from tests.support.fakes import EMOTION_HZ
from tests.support.signals import gliding_tone, non_speech
from tests.support.tiny_run import encode, tiny_run, tone


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    sf.write(folder / "angry.wav", gliding_tone(0.8, EMOTION_HZ["angry"]), 16000)
    (folder / "nested").mkdir()
    sf.write(folder / "nested" / "sad.flac", gliding_tone(0.6, EMOTION_HZ["sad"]), 16000)
    sf.write(folder / "nested" / "long.ogg", gliding_tone(3.0, EMOTION_HZ["happy"]), 16000)
    (folder / "nested" / "notes.txt").write_text("not audio, and not an audio suffix")
    return folder


def test_predict_folder_prints_a_table(run_dir, clips, capsys):
    assert main(["predict", str(clips), "--run", str(run_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("model tiny-lstm@")
    assert out[1].split() == ["file", "emotion", "conf", "seconds", "top", "3"]
    rows = out[2:]
    assert len(rows) == 3  # notes.txt has no audio suffix: not collected
    assert [Path(r.split()[0]).name for r in rows] == ["angry.wav", "long.ogg", "sad.flac"]
    labels = Predictor.load(run_dir).labels
    for row in rows:
        assert row.split()[1] in labels
    assert "windows)" in rows[1]  # the 3 s clip was cut into windows


def test_predict_json_matches_the_library(run_dir, clips, capsys):
    target = clips / "angry.wav"
    assert main(["predict", str(target), "--run", str(run_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (result,) = doc["results"]
    expected = Predictor.load(run_dir).predict_file(target)
    assert result["path"] == str(target) and result["emotion"] == expected["emotion"]
    assert doc["model_id"] == expected["model_id"]
    assert result["type"] == "prediction" and result["voiced"] == expected["voiced"]
    assert result["probabilities"] == expected["probabilities"]
    assert all(p == round(p, 4) for p in result["probabilities"].values())  # 4 decimals
    assert result["confidence"] == round(result["confidence"], 4)


@pytest.fixture(scope="module")
def quiet_clips(tmp_path_factory) -> Path:
    """One file of each kind of non-speech audio, and one of speech."""
    folder = tmp_path_factory.mktemp("quiet")
    for kind, wave in non_speech(2.0).items():
        sf.write(folder / f"{kind}.wav", wave, 16000, subtype="FLOAT")
    sf.write(folder / "speech.wav", gliding_tone(1.5), 16000)
    return folder


def test_predict_shows_no_speech_instead_of_an_emotion(run_dir, quiet_clips, capsys):
    assert main(["predict", str(quiet_clips), "--run", str(run_dir)]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    emotions = {Path(r.split()[0]).stem: r.split()[1] for r in rows}
    assert set(emotions) == {*non_speech(), "speech"}
    assert emotions.pop("speech") in Predictor.load(run_dir).labels
    assert set(emotions.values()) == {"no_speech"}


def test_predict_json_has_no_speech_with_null_emotion(run_dir, quiet_clips, capsys):
    assert main(["predict", str(quiet_clips), "--run", str(run_dir), "--json"]) == 0
    results = {Path(r["path"]).stem: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert results.pop("speech")["type"] == "prediction"
    for kind, result in results.items():
        assert result["type"] == "no_speech", kind
        assert result["emotion"] is None and result["confidence"] is None, kind
        assert result["probabilities"] is None and "voiced" in result and "rms_db" in result


def test_predict_without_the_speech_check_gives_silence_an_emotion(run_dir, quiet_clips, capsys):
    silence = str(quiet_clips / "silence.wav")
    assert main(["predict", silence, "--run", str(run_dir), "--json", "--no-speech-check"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["type"] == "prediction" and result["voiced"] is None


def test_predict_subprocess_answers_no_speech_for_silence(run_dir, quiet_clips):
    proc = subprocess.run(
        [sys.executable, "-m", "ser.cli", "predict", str(quiet_clips / "silence.wav")]
        + ["--run", str(run_dir), "--json"],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout)["results"]
    assert result["type"] == "no_speech" and result["emotion"] is None


def test_long_paths_keep_the_file_name_whole():
    from ser.commands.predict import format_table, short_path

    path = "/data/recordings/2026/session-17/speaker-with-a-long-name/" + "clip_0042_take3.wav"
    short = short_path(path, 40)
    assert len(short) <= 40 and short.endswith("/clip_0042_take3.wav") and "…" in short
    assert short.startswith("/data")  # the middle of the folder part goes
    assert short_path("clip.wav", 40) == "clip.wav"
    assert short_path("a/" + "n" * 50 + ".wav", 20) == "…/" + "n" * 50 + ".wav"
    result = {"path": path, "type": "prediction", "emotion": "sad", "confidence": 0.5}
    result |= {"probabilities": {"sad": 0.5, "angry": 0.5}, "duration": 1.0}
    table = format_table([result] * 2 + [{"path": "x" * 70, "error": "x: broken"}])
    assert "clip_0042_take3.wav" in table.splitlines()[1]


def test_predict_timeline_lists_each_window(run_dir, clips, capsys):
    assert (
        main(["predict", str(clips / "nested" / "long.ogg"), "--run", str(run_dir), "--timeline"])
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    windows = [line for line in lines if " s  " in line and "-" in line]
    assert len(windows) == 5  # 3 s, 1 s window, half-window hop
    assert windows[-1].split()[0].endswith("3.00")


def test_bad_files_are_named_and_the_rest_predicted(run_dir, clips, tmp_path, capsys):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....WAVEfmt not really")
    missing = tmp_path / "nowhere.wav"
    code = main(
        ["predict", str(clips / "angry.wav"), str(bad), str(missing), "--run", str(run_dir)]
    )
    captured = capsys.readouterr()
    assert code == 0  # one file was predicted
    assert "broken.wav" in captured.out and "not readable as audio" in captured.out
    assert f"{missing}: no such file or folder" in captured.out
    assert "angry.wav" in captured.out
    assert "2 of 3 path(s) could not be predicted" in captured.err


def test_nothing_to_predict_exits_2(run_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--run", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "folder holds no audio files" in err and "no audio files to predict" in err


def test_a_run_directory_given_as_audio_is_refused_naming_run(run_dir, clips, capsys):
    """`ser predict RUN FILE` (for `--run RUN FILE`) must not predict FILE with
    checkpoints/best, another model, as if nothing were wrong."""
    assert main(["predict", str(run_dir), str(clips / "angry.wav")]) == 2
    captured = capsys.readouterr()
    assert f"{run_dir}: a run directory, not audio" in captured.err
    assert f"--run {run_dir}" in captured.err and "angry.wav" not in captured.out


def test_bad_run_directory_exits_2_with_a_message(clips, tmp_path, capsys):
    assert main(["predict", str(clips), "--run", str(tmp_path)]) == 2
    assert "not a run directory (missing run.yaml" in capsys.readouterr().err


# -------------------------------------------------------------------------- record
def fake_sounddevice(inputs: int, wave: np.ndarray | None = None, rate: int = 44100):
    """A stand-in for the sounddevice module: ``inputs`` input devices at ``rate``."""
    calls = {}

    def query_devices(device=None, kind=None):
        devices = [
            {"name": f"mic {i}", "max_input_channels": 1, "default_samplerate": float(rate)}
            for i in range(inputs)
        ] + [{"name": "speaker", "max_input_channels": 0}]
        if kind == "input":
            return devices[0 if device is None else int(device)]
        return devices

    def rec(frames, samplerate, channels, dtype, device):
        calls.update(frames=frames, samplerate=samplerate, channels=channels, device=device)
        return wave[:frames, None]

    module = types.SimpleNamespace(query_devices=query_devices, rec=rec, wait=lambda: None)
    return module, calls


def test_record_without_sounddevice_says_how_to_get_it(run_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails
    assert main(["record", "--seconds", "1", "--run", str(run_dir)]) == 2
    assert "pip install 'ser[record]'" in capsys.readouterr().err


def test_record_without_an_input_device_says_so(run_dir, monkeypatch, capsys):
    module, _ = fake_sounddevice(inputs=0)
    monkeypatch.setitem(sys.modules, "sounddevice", module)
    assert main(["record", "--seconds", "1", "--run", str(run_dir)]) == 2
    assert "no microphone: no audio input device found" in capsys.readouterr().err


def test_record_predicts_what_the_microphone_heard(run_dir, monkeypatch, tmp_path, capsys):
    heard = gliding_tone(2.0, EMOTION_HZ["angry"], sr=44100)
    module, calls = fake_sounddevice(inputs=1, wave=heard)
    monkeypatch.setitem(sys.modules, "sounddevice", module)
    saved = tmp_path / "take.wav"
    code = main(
        ["record", "--seconds", "1.5", "--run", str(run_dir), "--save", str(saved), "--json"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert calls == {"frames": 66150, "samplerate": 44100, "channels": 1, "device": None}
    result = json.loads(out[out.index("{") :])
    assert result["duration"] == pytest.approx(1.5) and result["path"] == str(saved)
    assert sf.info(str(saved)).samplerate == 44100
    expected = Predictor.load(run_dir).predict_file(saved)
    assert result["type"] == "prediction" and result["emotion"] == expected["emotion"]


def test_record_on_this_machine_records_or_explains(run_dir):
    """The real command, whatever this machine has: a recording, or a clear reason."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-m", "ser.cli", "record", "--seconds", "0.5", "--run", str(run_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode == 0:
        assert "recording 0.5 s" in proc.stdout
    else:
        assert proc.returncode == 2, proc.stderr
        reasons = ("pip install 'ser[record]'", "PortAudio library", "no microphone")
        assert any(reason in proc.stderr for reason in reasons), proc.stderr


def test_predict_reads_browser_webm_when_ffmpeg_is_there(run_dir, tmp_path, capsys):
    from ser.audio import ffmpeg_path

    if ffmpeg_path() is None:
        pytest.skip("ffmpeg not installed")
    webm = tmp_path / "rec.webm"
    webm.write_bytes(
        subprocess.run(
            [
                "ffmpeg",
                "-loglevel",
                "error",
                "-i",
                "pipe:0",
                "-c:a",
                "libopus",
                "-f",
                "webm",
                "pipe:1",
            ],
            input=encode(gliding_tone(1.0)),
            capture_output=True,
            check=True,
        ).stdout
    )
    assert main(["predict", str(webm), "--run", str(run_dir), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["duration"] == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("scope", ["utterance", "speaker"])
def test_predictor_z_scores_each_clip_when_the_run_did(run_dir, scope):
    import dataclasses

    from ser.data.pipeline import zscore
    from ser.features.extractors import extract_features

    plain = Predictor.load(run_dir)
    features = plain.cfg.features.model_copy(update={"normalisation": scope})
    scoped = dataclasses.replace(plain, cfg=plain.cfg.model_copy(update={"features": features}))
    wave = tone(2.5, EMOTION_HZ["fear"])
    frames = zscore(extract_features(wave, 16000, features))
    prepared = scoped.prepare_clip(wave)
    assert len(prepared.inputs) == 4  # z-scored over the whole clip, then windowed
    np.testing.assert_allclose(prepared.inputs[0], plain.normaliser.apply(frames[:101]), atol=1e-6)
    np.testing.assert_allclose(
        scoped.input_from_wave(wave[:8000]),
        zscore(extract_features(wave[:8000], 16000, features)),
        atol=1e-6,
    )
    assert not np.allclose(prepared.inputs[0], plain.prepare_clip(wave).inputs[0])


@pytest.mark.parametrize("model", ["lstm", "cnn", "crnn", "tcn", "dense"])
def test_compiled_padded_batches_give_the_keras_models_answer(tmp_path_factory, model):
    """The XLA path pads every batch to max_frames and a fixed batch size: no effect."""
    predictor = Predictor.load(tiny_run(tmp_path_factory, model))
    waves = [
        tone(s, hz, seed=i) for i, (s, hz) in enumerate([(0.4, 200.0), (1.0, 420.0), (2.2, 150.0)])
    ]
    prepared = [predictor.prepare_clip(w) for w in waves]
    inputs = [x for p in prepared for x in p.inputs]
    compiled = predictor.predict_normalised(inputs)  # one padded batch of 5 -> size 8
    for x, probs in zip(inputs, compiled):
        expected = np.asarray(predictor.model(x[None], training=False))[0]
        np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert predictor.xla is True  # compiled without falling back


def test_a_run_trained_with_trimming_trims_served_clips(tmp_path_factory):
    """Training (the cache workers) and the Predictor cut leading and trailing silence alike."""
    from ser.audio import load_audio
    from ser.config import load_config
    from ser.features.cache import extract_all
    from ser.features.extractors import extract_features, silence_bounds
    from ser.training import train
    from tests.support.fakes import make_emodb
    from tests.support.tiny_run import WINDOW_SECONDS, silence, tiny_overrides

    work = tmp_path_factory.mktemp("trim")
    paths = make_emodb(work / "corpora")
    for path in paths:  # 0.3 s of silence either side of every training tone
        wave, sr = sf.read(path, dtype="float32")
        sf.write(path, np.concatenate([silence(0.3), wave, silence(0.3)]), sr)
    sets = tiny_overrides(
        work / "corpora",
        work,
        "dense",
        "[emodb]",
        **{
            "features.trim_db": "30",
            "data.max_seconds": str(WINDOW_SECONDS),
            "train.run_name": "trim",
            "train.confusion_images": "false",
        },
    )
    summary = train(load_config(ROOT / "configs" / "base.yaml", sets, env={}), log=lambda _: None)
    predictor = Predictor.load(summary["run_dir"], xla=False)
    features = predictor.cfg.features
    assert features.trim_db == 30.0

    # A training file's cached (trimmed) features are what the Predictor computes.
    cached, report = extract_all([str(paths[0])], features, 16000, workers=1, progress=False)
    assert report.hits == 1
    served = predictor.frame_features(load_audio(paths[0], 16000))
    np.testing.assert_allclose(served, cached[str(paths[0])], rtol=1e-5, atol=1e-4)
    assert served.shape[0] < 0.6 * (1 + 0.9 * 16000 // 160)  # 0.9 s untrimmed

    wave = np.concatenate([silence(1.0), tone(2.5, EMOTION_HZ["sad"]), silence(1.0)])
    start, stop = silence_bounds(wave, 16000, features)
    untrimmed = features.model_copy(update={"trim_db": None})
    frames = predictor.frame_features(wave)
    assert frames.shape[0] < extract_features(wave, 16000, untrimmed).shape[0]
    np.testing.assert_array_equal(frames, extract_features(wave[start:stop], 16000, untrimmed))
    # Windows are timed from the clip's start, trimmed silence included.
    prepared = predictor.prepare_clip(wave)
    assert len(prepared.spans) > 1
    assert prepared.spans[0][0] == start / 16000 == pytest.approx(1.0, abs=0.02)
    assert prepared.spans[-1][1] == pytest.approx(stop / 16000, abs=0.011)  # + one frame
