"""Feature extractors on tiny generated audio, with known answers where there are any."""

from __future__ import annotations

import librosa
import numpy as np
import pytest

from ser.config import FeaturesConfig
from ser.features import extractors
from ser.features.extractors import (
    FEATURES,
    Spectra,
    extract_features,
    feature_dims,
    feature_names,
    pool,
)
from ser.speech import speech_span

SR = 16000
FRAMES_1S = 1 + SR // 160  # default hop 160, centred STFT


def tone(freq: float, seconds: float = 1.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def voice_like(seconds: float = 1.0) -> np.ndarray:
    """A harmonic tone plus a little noise: nonzero in every band."""
    rng = np.random.default_rng(0)
    wave = sum(tone(220 * k, seconds) / k for k in range(1, 8))
    return (wave + 0.01 * rng.standard_normal(wave.shape[0])).astype(np.float32)


def config(*names: str, **sections: dict) -> FeaturesConfig:
    return FeaturesConfig.model_validate({"extractors": list(names), **sections})


def run(name: str, wave: np.ndarray, **params) -> np.ndarray:
    cfg = config(name, **({name: params} if params else {}))
    return FEATURES.get(name)(Spectra(wave, SR, cfg.frame), getattr(cfg, name))


def test_registry_names() -> None:
    assert FEATURES.names() == [
        "chroma",
        "compare",
        "contrast",
        "egemaps",
        "mel",
        "mfcc",
        "prosody",
        "tonnetz",
    ]


@pytest.mark.parametrize(
    ("name", "params", "dims"),
    [
        ("mfcc", {}, 40),
        ("mfcc", {"n_mfcc": 13, "deltas": 2}, 39),
        ("chroma", {}, 12),
        ("mel", {"n_mels": 32}, 32),
        ("contrast", {}, 7),
        ("tonnetz", {"harmonic": False}, 6),
        ("prosody", {}, 3),
    ],
)
@pytest.mark.filterwarnings("ignore::UserWarning")  # tonnetz's CQT: "n_fft too large"
def test_extractor_shape_and_dtype(name: str, params: dict, dims: int) -> None:
    out = run(name, voice_like(), **params)
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    assert out.shape[1] == dims
    # tonnetz runs its own CQT; its frame count may differ slightly
    assert abs(out.shape[0] - FRAMES_1S) <= (2 if name == "tonnetz" else 0)
    assert np.isfinite(out).all()


def test_chroma_of_a440_peaks_at_a() -> None:
    chroma = run("chroma", tone(440.0))
    assert np.argmax(chroma.mean(axis=0)) == 9  # C, C#, D, ..., A is index 9


def test_mel_of_1khz_peaks_in_the_band_around_1khz() -> None:
    mel = run("mel", tone(1000.0), n_mels=40)
    centres = librosa.mel_frequencies(n_mels=42, fmin=0.0, fmax=SR / 2)[1:-1]
    assert np.argmax(mel.mean(axis=0)) == np.argmin(np.abs(centres - 1000.0))


def test_deltas_of_a_stationary_tone_are_zero() -> None:
    out = run("mfcc", tone(440.0), n_mfcc=13, deltas=2)
    static, d1, d2 = out[:, :13], out[:, 13:26], out[:, 26:]
    inner = slice(10, -10)  # the padded edges are not stationary
    scale = np.abs(static[inner]).max()
    assert np.abs(d1[inner]).max() < 1e-3 * scale
    assert np.abs(d2[inner]).max() < 1e-3 * scale
    assert np.allclose(out[:, :13], run("mfcc", tone(440.0), n_mfcc=13))


def test_shared_spectrogram_gives_librosa_answers() -> None:
    """Sharing one STFT changes nothing: each extractor equals the plain librosa call."""
    wave = voice_like()
    kw = {"sr": SR, "n_fft": 512, "hop_length": 160, "win_length": 400}
    mfcc = librosa.feature.mfcc(y=wave, n_mfcc=40, n_mels=64, **kw)
    mel = librosa.power_to_db(librosa.feature.melspectrogram(y=wave, n_mels=64, **kw))
    chroma = librosa.feature.chroma_stft(y=wave, tuning=0.0, **kw)
    contrast = librosa.feature.spectral_contrast(y=wave, **kw)
    cfg = config("mfcc", "mel", "chroma", "contrast")
    out = extract_features(wave, SR, cfg)
    expected = np.concatenate([mfcc, mel, chroma, contrast]).T
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-3)


def test_extract_features_concatenates_in_config_order() -> None:
    wave = voice_like()
    cfg = config("mel", "mfcc", "chroma", mel={"n_mels": 48}, mfcc={"n_mfcc": 20, "deltas": 1})
    out = extract_features(wave, SR, cfg)
    names = feature_names(cfg)
    assert out.dtype == np.float32
    assert out.shape == (FRAMES_1S, feature_dims(cfg)) == (FRAMES_1S, len(names))
    assert feature_dims(cfg) == 48 + 40 + 12
    assert names[0] == "mel_0" and names[48] == "mfcc_0" and names[68] == "mfcc_d1_0"
    assert names[-1] == "chroma_11"
    np.testing.assert_array_equal(out[:, :48], run("mel", wave, n_mels=48))
    np.testing.assert_array_equal(out[:, 48:88], run("mfcc", wave, n_mfcc=20, deltas=1))
    np.testing.assert_array_equal(out[:, 88:], run("chroma", wave))


def test_feature_names_ignore_extractors_not_chosen() -> None:
    assert feature_names(config("contrast", mel={"n_mels": 100})) == [
        f"contrast_{i}" for i in range(7)
    ]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_frames_are_cut_to_the_shortest_extractor() -> None:
    cfg = config("mfcc", "tonnetz", tonnetz={"harmonic": False})
    out = extract_features(voice_like(0.5), SR, cfg)
    assert out.shape[1] == feature_dims(cfg) == 46
    assert abs(out.shape[0] - (1 + 8000 // 160)) <= 2


def test_one_stft_for_all_spectral_extractors(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = librosa.stft

    def counting_stft(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    # librosa.stft is what we call; core.spectrum.stft is what librosa's own
    # features call when handed a waveform instead of a spectrogram.
    monkeypatch.setattr(librosa, "stft", counting_stft)
    monkeypatch.setattr(librosa.core.spectrum, "stft", counting_stft)
    extract_features(voice_like(), SR, config("mfcc", "mel", "chroma", "contrast"))
    assert len(calls) == 1


def test_mel_power_is_shared_between_mfcc_and_mel() -> None:
    spectra = Spectra(voice_like(), SR, FeaturesConfig().frame)
    # fmax None means Nyquist: both spellings are one computation
    assert spectra.mel_power(64) is spectra.mel_power(64, 0.0, SR / 2)
    assert spectra.log_mel(64) is spectra.log_mel(64, 0.0, None)
    assert spectra.mel_power(64) is not spectra.mel_power(32)
    assert spectra.mel_power(64).dtype == np.float32


ALL = ("mfcc", "chroma", "mel", "contrast", "tonnetz", "prosody")


@pytest.mark.parametrize(
    "wave",
    [np.zeros(SR, np.float32), voice_like(0.01), np.zeros(0, np.float32)],
    ids=["silence", "shorter-than-n_fft", "empty"],
)
@pytest.mark.filterwarnings("ignore::UserWarning")  # librosa: "n_fft too large", "empty set"
def test_silence_and_short_waves_give_finite_frames(wave: np.ndarray) -> None:
    cfg = config(*ALL, mfcc={"deltas": 2})
    out = extract_features(wave, SR, cfg)
    assert out.shape[0] >= 1 and out.shape[1] == feature_dims(cfg)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("samples", [600, 1100, 1400, 2000])
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tonnetz_of_very_short_clips_is_finite(samples: int) -> None:
    # 2-3 HPSS frames used to come back as NaN or garbage from scipy's median filter
    out = run("tonnetz", voice_like()[:samples])
    assert out.shape[0] >= 1 and np.isfinite(out).all()


def test_filterbanks_are_read_only() -> None:
    """They are shared across calls: a caller mutating one would corrupt everyone."""
    basis = extractors._mel_basis(SR, 512, 64, 0.0, SR / 2)
    with pytest.raises(ValueError):
        basis[0, 0] = 1.0


def test_pool_statistics_in_order() -> None:
    x = np.array([[1.0, 10.0], [3.0, 30.0]], dtype=np.float32)
    out = pool(x, ["max", "mean", "std", "min"])
    assert out.dtype == np.float32 and out.shape == (8,)
    np.testing.assert_allclose(out, [3, 30, 2, 20, 1, 10, 1, 10])


def test_pool_shapes() -> None:
    x = np.random.default_rng(1).standard_normal((50, 7)).astype(np.float32)
    assert pool(x, ["mean", "std"]).shape == (14,)
    assert pool(x[:1], ["mean", "std", "min", "max"]).shape == (28,)
    with pytest.raises(ValueError):
        pool(x[:0], ["mean"])
    with pytest.raises(ValueError):
        pool(x, ["median_of_means"])


def test_prosody_tracks_pitch_and_energy() -> None:
    loud, quiet = tone(200.0), tone(200.0) * 0.01
    out = run("prosody", loud)
    f0 = np.exp(np.median(out[:, 0]))
    assert f0 == pytest.approx(200.0, rel=0.03)
    assert np.exp(np.median(run("prosody", tone(120.0))[:, 0])) == pytest.approx(120.0, rel=0.03)
    # log RMS: 40 dB quieter is log(100) lower
    assert np.median(out[:, 1]) - np.median(run("prosody", quiet)[:, 1]) == pytest.approx(
        np.log(100.0), abs=0.05
    )
    # a 200 Hz sine crosses zero 400 times a second
    assert np.median(out[:, 2]) == pytest.approx(400 / SR, rel=0.05)


def test_functional_statistics_have_known_answers() -> None:
    ramp = np.linspace(0.0, 10.0, 101)[:, None].astype(np.float32)  # 0, 0.1, ..., 10
    names = [
        "median",
        "p1",
        "p25",
        "p75",
        "p99",
        "range",
        "iqr",
        "skew",
        "kurtosis",
        "slope",
        "delta",
    ]
    out = dict(zip(names, pool(ramp, names), strict=True))
    assert out["median"] == pytest.approx(5.0)
    assert out["p1"] == pytest.approx(0.1) and out["p99"] == pytest.approx(9.9)
    assert out["p25"] == pytest.approx(2.5) and out["p75"] == pytest.approx(7.5)
    assert out["range"] == pytest.approx(9.8) and out["iqr"] == pytest.approx(5.0)
    assert out["skew"] == pytest.approx(0.0, abs=1e-6)
    assert out["kurtosis"] == pytest.approx(-1.2, abs=0.01)  # uniform distribution
    assert out["slope"] == pytest.approx(5.0)  # 10 units over t in [-1, 1]
    assert out["delta"] == pytest.approx(0.1)
    # one frame, or a constant: every statistic finite, moments and slope zero
    for x in (ramp[:1], np.ones((20, 1), np.float32)):
        got = dict(zip(names, pool(x, names), strict=True))
        assert np.isfinite(list(got.values())).all()
        assert got["skew"] == got["kurtosis"] == got["slope"] == got["delta"] == 0.0


def test_skew_sign() -> None:
    right_tail = np.array([0, 0, 0, 0, 10], np.float32)[:, None]
    assert pool(right_tail, ["skew"])[0] > 1.0
    assert pool(-right_tail, ["skew"])[0] < -1.0


def test_opensmile_sets_must_stand_alone_in_pooled_mode() -> None:
    ok = config("egemaps", mode="pooled", pooling=["mean"])
    assert feature_dims(ok) == 88
    for bad in (
        {"extractors": ["egemaps"]},
        {"extractors": ["egemaps", "mfcc"], "mode": "pooled", "pooling": ["mean"]},
        {"extractors": ["compare"], "mode": "pooled", "pooling": ["mean", "std"]},
    ):
        with pytest.raises(ValueError, match="use it alone, with mode: pooled"):
            FeaturesConfig.model_validate(bad)


@pytest.mark.parametrize(("name", "dims"), [("egemaps", 88), ("compare", 6373)])
def test_opensmile_functionals(name: str, dims: int) -> None:
    pytest.importorskip("opensmile", reason="the optional opensmile package is not installed")
    # openSMILE corrupts the heap of a process that has imported TensorFlow; the
    # extractor runs it in a child process, so this must not crash.
    import tensorflow  # noqa: F401

    cfg = config(name, mode="pooled", pooling=["mean"])
    for wave in (voice_like(), np.zeros(SR, np.float32), voice_like(0.01)):
        out = extract_features(wave, SR, cfg)
        assert out.shape == (1, dims) and out.dtype == np.float32 and np.isfinite(out).all()
    louder = extract_features(voice_like() * 2.0, SR, cfg)
    assert not np.allclose(louder, extract_features(voice_like(), SR, cfg))


def test_a_dead_opensmile_process_is_replaced() -> None:
    pytest.importorskip("opensmile", reason="the optional opensmile package is not installed")
    from ser.features.opensmile_worker import PROCESS

    cfg = config("egemaps", mode="pooled", pooling=["mean"])
    first = extract_features(voice_like(), SR, cfg)
    dead = PROCESS._proc
    dead.kill()
    dead.wait()
    np.testing.assert_array_equal(extract_features(voice_like(), SR, cfg), first)
    assert PROCESS._proc is not dead and PROCESS._proc.poll() is None


def test_opensmile_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import json
    import sys

    from ser.features import opensmile_worker

    # The child's side: without the package it answers with the MISSING marker.
    monkeypatch.setitem(sys.modules, "opensmile", None)  # import fails
    request = json.dumps({"feature_set": "eGeMAPSv02", "sample_rate": SR, "samples": 2}).encode()
    out = io.BytesIO()
    opensmile_worker._serve(io.BytesIO(request + b"\n" + np.zeros(2, "<f4").tobytes()), out)
    assert json.loads(out.getvalue()) == {"error": opensmile_worker.MISSING}

    # The parent's side: the marker becomes a message naming the extra to install.
    def missing(*_args):
        raise opensmile_worker.OpenSMILEError(opensmile_worker.MISSING)

    monkeypatch.setattr(opensmile_worker.PROCESS, "functionals", missing)
    with pytest.raises(extractors.OpenSMILEMissing, match=r"pip install 'ser\[opensmile\]'"):
        extract_features(voice_like(), SR, config("egemaps", mode="pooled", pooling=["mean"]))


# ------------------------------------------------------------------ silence trimming
def between_near_silence(core: np.ndarray, seconds: float = 1.0) -> np.ndarray:
    """``core`` with ``seconds`` of faint noise (about 74 dB below a 0.5 sine) either side."""
    rng = np.random.default_rng(1)
    quiet = [1e-4 * rng.standard_normal(int(seconds * SR)) for _ in range(2)]
    return np.concatenate([quiet[0], core, quiet[1]]).astype(np.float32)


def test_trimming_cuts_the_near_silence_around_a_tone() -> None:
    core = tone(440.0)  # 1 s, from sample SR to 2 * SR of the padded clip
    wave = between_near_silence(core)
    cfg = config("mfcc", "prosody", trim_db=30)
    start, stop = extractors.silence_bounds(wave, SR, cfg)
    # Never inside the tone; at most half a window (and a hop at the end) outside it.
    assert SR - 200 <= start <= SR and 2 * SR <= stop <= 2 * SR + 200 + 160
    trimmed = extract_features(wave, SR, cfg)
    untrimmed = extract_features(wave, SR, config("mfcc", "prosody"))
    alone = extract_features(core, SR, config("mfcc", "prosody"))
    assert untrimmed.shape[0] == 1 + 3 * SR // 160
    assert trimmed.shape[0] == 1 + (stop - start) // 160 <= alone.shape[0] + 4
    aligned = trimmed[(SR - start) // 160 :][: alone.shape[0]]
    assert aligned.shape == alone.shape
    # Frames whose window lies inside the tone are the tone's own; the two at each
    # edge see faint noise where the tone alone sees zero padding.
    np.testing.assert_allclose(aligned[2:-2], alone[2:-2], atol=1e-4)
    np.testing.assert_allclose(aligned[:, :40], alone[:, :40], atol=0.5)  # MFCCs reach ~100s


@pytest.mark.parametrize(
    "wave",
    [
        np.zeros(3 * SR, np.float32),
        between_near_silence(np.zeros(0, np.float32)),
        np.concatenate([np.zeros(SR), tone(440.0, 0.05), np.zeros(SR)]).astype(np.float32),
        voice_like(0.05),
        np.zeros(0, np.float32),
    ],
    ids=["silence", "near-silence", "blip-shorter-than-0.1s", "short-clip", "empty"],
)
@pytest.mark.filterwarnings("ignore::UserWarning")  # librosa on silence and empty waves
def test_trimming_keeps_silent_or_too_short_clips_whole(wave: np.ndarray) -> None:
    cfg = config(*ALL, trim_db=30)
    assert extractors.silence_bounds(wave, SR, cfg) == (0, wave.shape[0])
    out = extract_features(wave, SR, cfg)
    assert out.shape[0] >= 1 and np.isfinite(out).all()
    np.testing.assert_array_equal(out, extract_features(wave, SR, config(*ALL)))


def test_trimming_still_rejects_non_finite_waves() -> None:
    wave = between_near_silence(tone(440.0))
    wave[SR + 100] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        extract_features(wave, SR, config("mfcc", trim_db=30))


def test_opensmile_gets_the_trimmed_wave(monkeypatch: pytest.MonkeyPatch) -> None:
    from ser.features import opensmile_worker

    seen: list[int] = []

    def functionals(wave: np.ndarray, _sr: int, _set: str) -> np.ndarray:
        seen.append(wave.shape[0])
        return np.zeros(88, np.float32)

    monkeypatch.setattr(opensmile_worker.PROCESS, "functionals", functionals)
    cfg = config("egemaps", mode="pooled", pooling=["mean"], trim_db=30)
    wave = between_near_silence(tone(440.0))
    extract_features(wave, SR, cfg)
    start, stop = extractors.silence_bounds(wave, SR, cfg)
    assert seen == [stop - start] and stop - start < 1.1 * SR


@pytest.mark.parametrize("value", [0, -10, ".nan", ".inf"])
def test_trim_db_must_be_a_positive_number(value) -> None:
    import yaml
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="trim_db"):
        FeaturesConfig.model_validate({"trim_db": yaml.safe_load(str(value))})


def speech_like(seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    """Voiced syllables with gliding pitch, pauses of silence between them, and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 80 * np.sin(2 * np.pi * 1.3 * t) + rng.uniform(0, 60)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = np.clip(np.sin(2 * np.pi * 3 * t), 0, None) ** 2  # syllables and silences
    noise = 0.003 * rng.standard_normal(t.size)
    return (0.3 * voiced * envelope + noise).astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_yin_equals_librosa_yin(seed: int) -> None:
    """``yin_f0`` is librosa.yin computed faster: the same estimate on almost every frame
    (float32 rounding may move a borderline trough across the threshold)."""
    wave = speech_like(seed=seed)
    expected = librosa.yin(wave, fmin=60, fmax=500, sr=SR, frame_length=1024, hop_length=160)
    got = extractors.yin_f0(wave, SR, 60.0, 500.0, 1024, 160)
    assert got.shape == expected.shape
    same = np.abs(np.log(got / expected)) < 1e-3
    assert same.mean() >= 0.99
    assert np.median(np.abs(got - expected)[same]) < 1e-3  # Hz


def test_rms_and_zero_crossings_equal_librosa() -> None:
    wave = speech_like(seed=5)
    wave[100:200] = 0.0  # exact zeros, and a sign change from zero onwards
    frame = config("prosody").frame
    rms, zcr = extractors._frame_rms_zcr(wave, frame)
    kw = {"frame_length": frame.win_length, "hop_length": frame.hop_length}
    np.testing.assert_allclose(rms, librosa.feature.rms(y=wave, **kw)[0], rtol=1e-5, atol=1e-7)
    # the same crossing counts (one crossing is 1 / win_length = 0.0025)
    expected = librosa.feature.zero_crossing_rate(wave, **kw)[0]
    np.testing.assert_allclose(zcr, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("frames", [1, 2, 3, 100, 331, 1000])
def test_pooled_statistics_equal_numpy(frames: int) -> None:
    """The shared-sort pooling gives NumPy's percentiles and the moments' definitions."""
    x = (np.random.default_rng(frames).standard_normal((frames, 5)) * 3).astype(np.float32)
    names = list(extractors._STATISTICS)
    got = dict(zip(names, np.split(pool(x, names), len(names)), strict=True))
    wide = x.astype(np.float64)
    for q, name in [(50, "median"), (1, "p1"), (25, "p25"), (75, "p75"), (99, "p99")]:
        np.testing.assert_array_equal(got[name], np.percentile(wide, q, axis=0).astype(np.float32))
    np.testing.assert_array_equal(got["min"], x.min(axis=0))
    np.testing.assert_array_equal(got["max"], x.max(axis=0))
    np.testing.assert_allclose(got["mean"], wide.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(got["std"], wide.std(axis=0), rtol=1e-6)
    if frames > 2:
        centred = wide - wide.mean(axis=0)
        m2 = (centred**2).mean(axis=0)
        np.testing.assert_allclose(got["skew"], (centred**3).mean(axis=0) / m2**1.5, rtol=1e-5)
        kurt = (centred**4).mean(axis=0) / m2**2 - 3
        np.testing.assert_allclose(got["kurtosis"], kurt, rtol=1e-5)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("frames", [9, 10, 331])
def test_deltas_equal_librosa(order: int, frames: int) -> None:
    """The precomputed Savitzky-Golay maps give librosa.feature.delta's 'interp' answer."""
    x = (np.random.default_rng(frames).standard_normal((13, frames)) * 10).astype(np.float32)
    expected = librosa.feature.delta(x, width=9, order=order, mode="interp")
    np.testing.assert_allclose(extractors._delta(x, order), expected, rtol=0, atol=1e-4)


def test_speech_span_cuts_each_clip_to_its_speech_before_the_extractors() -> None:
    noise = 0.003 * np.random.default_rng(4).standard_normal(SR).astype(np.float32)
    wave = np.concatenate([noise, speech_like(1.2, seed=4), noise])
    cfg = config("mfcc", "prosody", speech_span=0.1, loudness_db=-25)
    start, stop = speech_span(wave, SR, 0.1)
    assert 0.85 * SR <= start < SR and 2.1 * SR < stop <= 2.35 * SR
    cut = extract_features(wave, SR, cfg)
    expected = extract_features(wave[start:stop], SR, config("mfcc", "prosody", loudness_db=-25))
    np.testing.assert_array_equal(cut, expected)
    assert cut.shape[0] < extract_features(wave, SR, config("mfcc", "prosody")).shape[0]


def test_speech_span_keeps_a_clip_without_speech_whole() -> None:
    wave = 0.05 * np.random.default_rng(6).standard_normal(2 * SR).astype(np.float32)
    spanned = extract_features(wave, SR, config("mfcc", speech_span=0.15))
    np.testing.assert_array_equal(spanned, extract_features(wave, SR, config("mfcc")))


@pytest.mark.parametrize("value", [-0.1, 6, ".nan", "a"])
def test_speech_span_must_be_a_margin_in_seconds(value) -> None:
    import yaml
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="speech_span"):
        FeaturesConfig.model_validate({"speech_span": yaml.safe_load(str(value))})


def test_the_span_foreground_needs_the_span() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="speech_span_foreground_db needs speech_span"):
        FeaturesConfig.model_validate({"speech_span_foreground_db": 16})
    spanned = FeaturesConfig.model_validate({"speech_span": 0.15, "speech_span_foreground_db": 16})
    assert spanned.speech_span_foreground_db == 16.0


def test_the_analysed_span_composes_the_silence_cut_and_the_speech_cut() -> None:
    noise = 0.003 * np.random.default_rng(7).standard_normal(SR).astype(np.float32)
    core = np.concatenate([noise, speech_like(1.2, seed=7), noise])
    wave = np.concatenate([np.zeros(SR // 2, np.float32), core, np.zeros(SR // 2, np.float32)])
    cfg = config("mfcc", trim_db=60, speech_span=0.1)
    start, stop = extractors.analysed_span(wave, SR, cfg)
    outer = extractors.silence_bounds(wave, SR, cfg)
    inner = speech_span(wave[outer[0] : outer[1]], SR, 0.1)
    assert (start, stop) == (outer[0] + inner[0], outer[0] + inner[1])
    assert 1.35 * SR <= start < 1.5 * SR  # the speech starts at 1.5 s
    np.testing.assert_array_equal(
        extract_features(wave, SR, cfg), extract_features(wave[start:stop], SR, config("mfcc"))
    )
