"""Recording conditions (``ser.perturb``), level-free features (``features.loudness_db``)
and scoring a run's test clips in those conditions (``ser.condition_evaluation``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from ser import audio
from ser.audio import ffmpeg_path, mp3_in_process
from ser.config import FeaturesConfig, FrameParams, load_config
from ser.features.cache import cache_key
from ser.features.extractors import active_level_db, extract_features
from ser.perturb import Babble, ConditionError, parse_condition, parse_conditions
from tests.support import ROOT
from tests.support.signals import speech_like

SR = 16000
FRAME = FrameParams()
needs_ffmpeg = pytest.mark.skipif(ffmpeg_path() is None, reason="ffmpeg is not installed")
mp3_in_soundfile = pytest.mark.skipif(
    not mp3_in_process(), reason="this soundfile's libsndfile does not write MP3"
)


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    return speech_like(3.0, hz=140.0, sr=SR, seed=3, amplitude=0.3)


def _band_power(wave: np.ndarray, lo: float, hi: float) -> float:
    f, p = signal.welch(wave, fs=SR, nperseg=1024)
    return float(p[(f >= lo) & (f < hi)].sum())


# ------------------------------------------------------------------ parsing
def test_conditions_parse_to_canonical_names_once_each():
    conditions = parse_conditions("gain:-20, telephone,NOISE:Pink:10,gain:-20.0,reverb:0.4")
    assert [c.name for c in conditions] == ["gain:-20", "telephone", "noise:pink:10", "reverb:0.4"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("loud:3", "unknown condition"),
        ("gain", "expected gain:DB"),
        ("noise:10", "expected noise:COLOUR:SNR"),
        ("noise:red:10", "COLOUR must be one of white, pink, brown"),
        ("gain:-100", "DB must be within -60 to 20"),
        ("reverb:x", "RT60 must be a number"),
        ("telephone:3", "expected telephone"),
        ("noise:white:20..5", "needs LO below HI"),
        ("noise:white:5..", "SNR must be a number or a range"),
        ("babble:5..90", "SNR must be within -10 to 60"),
        ("speed:3", "FACTOR must be within 0.5 to 2"),
        (" , ", "no conditions given"),
    ],
)
def test_bad_conditions_are_refused_naming_the_item(text, says):
    with pytest.raises(ConditionError, match=says):
        parse_conditions(text)


# ------------------------------------------------------------------ conditions
def test_gain_is_exact_and_clip_stays_within_full_scale(voice):
    np.testing.assert_allclose(parse_condition("gain:-20").apply(voice, SR), voice * 0.1, rtol=1e-5)
    clipped = parse_condition("clip:12").apply(voice, SR)
    assert np.abs(clipped).max() == pytest.approx(1.0)
    assert np.mean(np.abs(clipped) >= 1.0) > 0.002  # it did clip


@pytest.mark.parametrize("colour", ["white", "pink", "brown"])
def test_noise_lands_at_the_asked_snr(voice, colour):
    noisy = parse_condition(f"noise:{colour}:10").apply(voice, SR, "clip-a")
    noise = noisy - voice
    noise_db = 10 * np.log10(np.mean(noise.astype(np.float64) ** 2))
    assert active_level_db(voice, FRAME) - noise_db == pytest.approx(10.0, abs=0.1)


def test_noise_colours_tilt_the_spectrum(voice):
    silence = np.zeros_like(voice)
    silence[::400] = 1e-3  # a level to measure the SNR against, nothing else
    tilt = {}
    for colour in ("white", "pink", "brown"):
        noise = parse_condition(f"noise:{colour}:0").apply(silence, SR, "k") - silence
        tilt[colour] = _band_power(noise, 100, 500) / _band_power(noise, 4000, 4400)
    assert tilt["white"] < 2 < tilt["pink"] < tilt["brown"]


def test_a_range_draws_one_seeded_value_per_clip_within_it(voice):
    c = parse_condition("noise:white:5.0..25")
    assert c.name == "noise:white:5..25"
    snrs = {}
    for key in [f"clip-{i}" for i in range(12)]:
        noise = c.apply(voice, SR, key) - voice
        noise_db = 10 * np.log10(np.mean(noise.astype(np.float64) ** 2))
        snrs[key] = active_level_db(voice, FRAME) - noise_db
        assert snrs[key] == pytest.approx(c.amount(key), abs=0.1)
    assert all(5.0 <= s <= 25.0 for s in snrs.values())
    assert max(snrs.values()) - min(snrs.values()) > 5.0  # a spread, not one setting
    again = parse_condition("noise:white:5..25").apply(voice, SR, "clip-3") - voice
    np.testing.assert_array_equal(again, c.apply(voice, SR, "clip-3") - voice)
    gains = [parse_condition("gain:-30..-10").amount(f"k{i}") for i in range(8)]
    assert all(-30.0 <= g <= -10.0 for g in gains) and len(set(gains)) == 8


def test_conditions_are_seeded_by_clip(voice):
    c = parse_condition("noise:white:10")
    a1, a2, b = c.apply(voice, SR, "a"), c.apply(voice, SR, "a"), c.apply(voice, SR, "b")
    np.testing.assert_array_equal(a1, a2)
    assert not np.allclose(a1, b)
    other_seed = parse_condition("noise:white:10", seed=1).apply(voice, SR, "a")
    assert not np.allclose(a1, other_seed)


def test_telephone_keeps_the_band_and_the_length():
    white = np.random.default_rng(0).standard_normal(SR * 2).astype(np.float32) * 0.1
    phone = parse_condition("telephone").apply(white, SR)
    assert phone.shape == white.shape
    assert _band_power(phone, 4200, 8000) < 1e-4 * _band_power(white, 4200, 8000)
    assert _band_power(phone, 60, 150) < 0.05 * _band_power(white, 60, 150)
    assert _band_power(phone, 800, 2500) > 0.5 * _band_power(white, 800, 2500)


def test_reverb_adds_a_decaying_tail(voice):
    click = np.zeros(SR, np.float32)
    click[100] = 1.0
    wet = parse_condition("reverb:0.4").apply(click, SR, "k")
    assert wet[100] == pytest.approx(1.0)
    early = np.sum(wet[200:1800] ** 2)
    late = np.sum(wet[5000:6600] ** 2)
    assert early > 10 * late > 0
    assert parse_condition("reverb:0.4").apply(voice, SR, "k").shape == voice.shape


def test_speed_plays_the_clip_faster_with_pitch_and_length_in_step():
    t = np.arange(2 * SR) / SR
    tone = (0.3 * np.sin(2 * np.pi * 150 * t) + 0.1 * np.sin(2 * np.pi * 300 * t)).astype("f4")
    for factor in (0.9, 1.1):
        fast = parse_condition(f"speed:{factor}").apply(tone, SR, "k")
        assert fast.dtype == np.float32
        assert len(fast) == pytest.approx(len(tone) / factor, abs=2)
        # The fundamental moves by the same factor as the tempo.
        f, p = signal.welch(fast, fs=SR, nperseg=4096)
        f0, p0 = signal.welch(tone, fs=SR, nperseg=4096)
        band = (f > 80) & (f < 400)
        assert f[band][p[band].argmax()] == pytest.approx(
            factor * f0[band][p0[band].argmax()], rel=0.05
        )
    ranged = parse_condition("speed:0.9..1.1")
    lengths = {len(ranged.apply(tone, SR, f"clip{i}")) for i in range(6)}
    assert len(lengths) > 1 and all(
        len(tone) / 1.1 - 2 <= n <= len(tone) / 0.9 + 2 for n in lengths
    )


def test_babble_mixes_other_voices_at_the_snr(voice):
    others = {f"v{i}": speech_like(2.0, hz=100.0 + 40 * i, sr=SR, seed=i) for i in range(6)}
    babble = Babble(tuple(others), others.__getitem__)
    noisy = parse_condition("babble:5", babble=babble).apply(voice, SR, "clip")
    noise = noisy - voice
    noise_db = 10 * np.log10(np.mean(noise.astype(np.float64) ** 2))
    assert active_level_db(voice, FRAME) - noise_db == pytest.approx(5.0, abs=0.1)
    with pytest.raises(ConditionError, match="no clips of other speakers"):
        parse_condition("babble:5").apply(voice, SR, "clip")


@pytest.mark.parametrize(
    "codec",
    [
        pytest.param("mp3:32", marks=mp3_in_soundfile),
        pytest.param("opus:24", marks=needs_ffmpeg),
    ],
)
def test_codec_round_trip_is_aligned_and_close(voice, codec):
    out = parse_condition(codec).apply(voice, SR)
    assert out.shape == voice.shape
    assert np.corrcoef(out, voice)[0, 1] > 0.9  # aligned: a lag would decorrelate it
    assert not np.allclose(out, voice, atol=1e-4)  # and lossy


@mp3_in_soundfile
@pytest.mark.parametrize(("sample_rate", "kbps"), [(16000, 24), (16000, 64), (44100, 128)])
def test_mp3_is_encoded_in_process_at_the_asked_bit_rate(monkeypatch, sample_rate, kbps):
    """The MP3 round trip needs no ffmpeg where soundfile writes MP3, and its bit rate
    is the one asked (within the frames' headers)."""
    monkeypatch.setattr("ser.perturb.ffmpeg_path", lambda: None)
    monkeypatch.setattr(audio, "ffmpeg_path", lambda: None)
    wave = speech_like(4.0, hz=140.0, sr=sample_rate, seed=5, amplitude=0.3)
    encoded = audio.encode_mp3(wave, sample_rate, kbps)
    assert len(encoded) * 8 / 4.0 / 1000 == pytest.approx(kbps, rel=0.1)
    out = parse_condition(f"mp3:{kbps}").apply(wave, sample_rate, "clip")
    assert out.shape == wave.shape and np.corrcoef(out, wave)[0, 1] > 0.9


@mp3_in_soundfile
@needs_ffmpeg
def test_mp3_in_process_distorts_a_clip_as_ffmpegs_lame_does(voice, monkeypatch):
    """Both routes are LAME at the same constant bit rate: a clip comes back as far
    from the original (signal-to-error ratio) either way."""

    def error_db(out: np.ndarray) -> float:
        return float(10 * np.log10(np.sum(voice**2) / np.sum((voice - out) ** 2)))

    in_process = error_db(parse_condition("mp3:24").apply(voice, SR, "clip"))
    monkeypatch.setattr("ser.perturb.mp3_in_process", lambda: False)
    through_ffmpeg = error_db(parse_condition("mp3:24").apply(voice, SR, "clip"))
    assert in_process == pytest.approx(through_ffmpeg, abs=2.0)
    assert in_process < 30.0  # lossy at 24 kbit/s, so the comparison can fail


# ------------------------------------------------------------------ loudness
def test_loudness_normalisation_makes_features_level_free(voice):
    base = FeaturesConfig(extractors=["mfcc", "mel", "prosody"])
    levelled = base.model_copy(update={"loudness_db": -25.0})
    for gain_db in (-30.0, 6.0):
        louder = voice * np.float32(10 ** (gain_db / 20))
        np.testing.assert_allclose(
            extract_features(louder, SR, levelled),
            extract_features(voice, SR, levelled),
            atol=2e-2,
        )
        # Without it the recording level shows (so the check above can fail).
        assert not np.allclose(
            extract_features(louder, SR, base), extract_features(voice, SR, base), atol=1.0
        )
    assert active_level_db(voice * np.float32(10 ** (-30 / 20)), FRAME) == pytest.approx(
        active_level_db(voice, FRAME) - 30, abs=1e-3
    )


def test_loudness_is_part_of_the_cache_key_only_when_set():
    base = FeaturesConfig()
    assert cache_key("d", base, SR) == cache_key(
        "d", base.model_copy(update={"loudness_db": None}), SR
    )
    assert cache_key("d", base, SR) != cache_key(
        "d", base.model_copy(update={"loudness_db": -25.0}), SR
    )


def test_loudness_setting_is_checked():
    with pytest.raises(Exception, match="loudness_db"):
        load_config(ROOT / "configs" / "base.yaml", ["features.loudness_db=3"], env={})


# ------------------------------------------------------------------ train-time conditions
def _augmented_config(work, conditions: str, copies: int):
    """A tiny dense config on a generated EMO-DB with ``augment.conditions``."""
    from tests.support.fakes import make_emodb
    from tests.support.tiny_run import tiny_config

    make_emodb(work / "corpora")
    extra = {"augment.conditions": conditions, "augment.condition_copies": str(copies)}
    return tiny_config(work / "corpora", work, "[emodb]", "dense", **extra)


def test_training_clips_get_copies_in_recording_conditions(tmp_path):
    from ser.data.prepare import CONDITION_MARK, prepare_data

    cfg = _augmented_config(tmp_path, "[gain:-20, noise:white:20, telephone]", 2)
    lines: list[str] = []
    data = prepare_data(cfg, log=lines.append, keep_features=True)
    clean = [r for r in data.rows["train"] if CONDITION_MARK not in r.path]
    copies = [r for r in data.rows["train"] if CONDITION_MARK in r.path]
    assert len(copies) == 2 * len(clean) == len(data.inputs["train"]) - len(clean)
    assert len(data.targets["train"]) == len(data.inputs["train"])
    for r in copies:  # each copy is a clean training clip's, under its own speaker name
        source, condition = r.path.split(CONDITION_MARK)
        assert r.speaker.endswith(f"{CONDITION_MARK}{condition}")
        assert condition in {"gain:-20", "noise:white:20", "telephone"}
        assert any(c.path == source and c.emotion == r.emotion for c in clean)
    # two distinct conditions per clip, and none of the other parts is touched
    per_clip: dict[str, set[str]] = {}
    for r in copies:
        source, condition = r.path.split(CONDITION_MARK)
        per_clip.setdefault(source, set()).add(condition)
    assert all(len(v) == 2 for v in per_clip.values())
    assert not any(CONDITION_MARK in r.path for p in ("val", "test") for r in data.rows[p])
    # The copies' features are those of the changed audio, and cached.
    noisy = next(r for r in copies if r.path.endswith("noise:white:20"))
    source = noisy.path.split(CONDITION_MARK)[0]
    assert not np.allclose(data.features[noisy.path], data.features[source])
    again: list[str] = []
    prepare_data(cfg, log=again.append)
    assert any(f"{len(copies)} cache hits, 0 extracted" in line for line in again)


def test_bad_training_conditions_name_the_setting(tmp_path):
    from ser.config import ConfigError
    from ser.data.prepare import prepare_data

    cfg = _augmented_config(tmp_path, "[phone]", 1)
    with pytest.raises(ConfigError, match="augment.conditions: 'phone': unknown condition"):
        prepare_data(cfg, log=lambda _line: None)
    with pytest.raises(ConfigError, match="condition_copies needs augment.conditions"):
        load_config(ROOT / "configs" / "base.yaml", ["augment.condition_copies=1"], env={})


def test_train_refuses_a_codec_condition_without_ffmpeg_before_any_work(
    tmp_path, monkeypatch, capsys
):
    """The default config trains on MP3 copies: where soundfile cannot write MP3 and
    ffmpeg is missing, ``ser train`` says so, and how to go on, before it looks for
    corpora or extracts anything."""
    from ser import cli

    monkeypatch.setattr(audio, "ffmpeg_path", lambda: None)
    monkeypatch.setattr("ser.perturb.ffmpeg_path", lambda: None)
    monkeypatch.setattr("ser.perturb.mp3_in_process", lambda: False)
    monkeypatch.setenv("SER_DATA_ROOT", str(tmp_path / "no-corpora-here"))
    code = cli.main(["train", "--config", "lstm.yaml", "--set", f"features.cache_dir={tmp_path}/c"])
    err = capsys.readouterr().err
    assert code == 2
    assert "augment.conditions: 'mp3:24': the codec round trip needs ffmpeg" in err
    assert "install ffmpeg" in err
    assert not (tmp_path / "c").exists() and not (tmp_path / "no-corpora-here").exists()


def test_evaluate_runs_the_seed_recipe_beside_a_run_trained_in_recording_conditions(
    tmp_path_factory,
):
    """``evaluate.py RUN_DIR`` on a run with copies in recording conditions (the default
    config's kind): the seed recipe, on features of its own, fits on the recorded clips
    (the copies have no file to read), beside a baseline on the run's features, which
    fits on the copies too."""
    from ser.evaluation import evaluate_run
    from tests.support.tiny_run import tiny_run

    run = tiny_run(
        tmp_path_factory,
        "dense",
        variant="conditions",
        **{"augment.conditions": "[telephone, noise:white:20]", "augment.condition_copies": "1"},
    )
    report = evaluate_run(
        run,
        overrides=["evaluation.baselines=[logistic_regression, seed_mlp]"],
        write=False,
        log=lambda _line: None,
    )
    names = [m["name"] for m in report["models"]]
    assert names == ["dense", "logistic_regression", "seed_mlp"]
    test_clips = report["models"][0]["n"]
    assert all(m["n"] == test_clips and 0.0 <= m["ua"] <= 1.0 for m in report["models"])
