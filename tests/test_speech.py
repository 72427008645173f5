"""The speech detector (``ser.speech``): silence, noises and music-like tones are not
speech at any level; generated speech-like audio and every real corpus clip is, the
quietest ones and 30 dB quieter versions included."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ser.config import DATA_ROOT_ENV
from ser.speech import DEFAULT_THRESHOLDS, detect_speech, level_db, speech_span
from tests.support.signals import non_speech, speech_like

RATES = (8000, 16000, 44100, 48000)
GAINS_DB = (-30.0, -20.0, -10.0, 0.0, 6.0)
QUIETEST = 10  # clips per corpus in the quietest-clips test
CORPUS_FILES = {
    "ravdess": "ravdess/Actor_*/*.flac",
    "tess": "tess/*/*.flac",
    "emodb": "emodb/wav/*.flac",
}


def gained(wave: np.ndarray, db: float) -> np.ndarray:
    """``wave`` with its gain changed by ``db`` decibels (float: nothing clips)."""
    return (wave * 10 ** (db / 20)).astype(np.float32)


def pure_tone(seconds: float, hz: float = 220.0, sr: int = 16000) -> np.ndarray:
    """A sine with nothing else: periodic like a voice, with a pitch that never moves."""
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("kind", sorted(non_speech()))
def test_silence_noise_and_tones_are_not_speech(kind, rate):
    evidence = detect_speech(non_speech(3.0, rate)[kind], rate)
    assert evidence.speech is False, (kind, rate, evidence)


@pytest.mark.parametrize("db", GAINS_DB)
@pytest.mark.parametrize(
    "kind", ["loud_white_noise", "pink_noise", "brown_noise", "chord", "notes"]
)
def test_non_speech_stays_non_speech_at_any_level(kind, db):
    assert detect_speech(gained(non_speech(2.0)[kind], db), 16000).speech is False


def test_a_clean_tone_is_not_speech_and_the_evidence_says_why():
    evidence = detect_speech(pure_tone(2.0), 16000)
    assert evidence.speech is False
    assert evidence.voiced > DEFAULT_THRESHOLDS.min_voiced  # periodic ...
    assert evidence.flat > DEFAULT_THRESHOLDS.max_flat  # ... but its pitch never moves


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("hz", [110.0, 220.0, 400.0])
def test_speech_like_audio_is_speech(hz, rate):
    for seed in range(3):
        evidence = detect_speech(speech_like(1.5, hz, rate, seed), rate)
        assert evidence.speech is True, (hz, rate, seed, evidence)
        assert evidence.flat <= DEFAULT_THRESHOLDS.max_flat


@pytest.mark.parametrize("db", GAINS_DB)
def test_speech_decision_does_not_depend_on_level(db):
    wave = gained(speech_like(2.0, seed=5), db)
    evidence = detect_speech(wave, 16000)
    assert evidence.speech is True
    assert evidence.voiced == pytest.approx(detect_speech(speech_like(2.0, seed=5), 16000).voiced)


def test_speech_in_silence_is_still_speech_and_levels_are_reported():
    wave = np.concatenate([np.zeros(16000, np.float32), speech_like(1.0), np.zeros(16000)])
    evidence = detect_speech(wave, 16000)
    assert evidence.speech is True and 0 < evidence.voiced < 0.5
    assert evidence.rms_db == pytest.approx(level_db(wave))
    assert evidence.as_dict() == {
        "voiced": round(evidence.voiced, 3),
        "flat": round(evidence.flat, 3),
        "rms_db": round(evidence.rms_db, 1),
    }


def test_a_dc_offset_changes_nothing():
    wave = speech_like(2.0, seed=2)
    shifted = detect_speech(wave + 0.3, 16000)
    assert shifted.speech is True
    assert shifted.voiced == pytest.approx(detect_speech(wave, 16000).voiced, abs=0.02)


def test_samples_too_large_to_analyse_are_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"samples up to 1e\+20 .* not finite"):
        detect_speech(np.full(1600, 1e20, np.float32), 16000)


@pytest.mark.parametrize("samples", [0, 1, 100, 400])
def test_empty_and_tiny_waves_are_answered(samples):
    evidence = detect_speech(speech_like(1.0)[:samples], 16000)
    assert evidence.speech is False and evidence.voiced == 0.0


# -------------------------------------------------------------------- real data
def speech_in_silence(sr: int = 16000) -> np.ndarray:
    """1 s of digital silence, 1.5 s of speech-like audio, 1 s of silence."""
    pause = np.zeros(sr, np.float32)
    return np.concatenate([pause, speech_like(1.5, sr=sr, seed=3), pause])


@pytest.mark.parametrize("rate", (16000, 44100))
def test_the_speech_span_is_the_speech_with_its_margin(rate):
    wave = speech_in_silence(rate)
    start, stop = speech_span(wave, rate, margin=0.15)
    # Within the margin of the speech (1.0-2.5 s), never inside the margin's reach of it.
    assert 0.80 * rate <= start <= 0.90 * rate
    assert 2.60 * rate <= stop <= 2.72 * rate
    assert speech_span(wave, rate, margin=0.0)[0] >= 0.95 * rate
    assert speech_span(wave, rate, margin=2.0) == (0, wave.shape[0])  # clamped to the clip


@pytest.mark.parametrize("change", ("-30 dB", "noise 10 dB"))
def test_the_speech_span_is_not_moved_by_level_or_noise(change):
    wave = speech_in_silence()
    if change == "-30 dB":
        changed = gained(wave, -30.0)
    else:
        noise = np.random.default_rng(5).standard_normal(wave.shape[0]).astype(np.float32)
        speech_rms = float(np.sqrt(np.mean(np.square(wave[16000:40000]))))
        changed = wave + noise * speech_rms * 10 ** (-10 / 20)
    clean, moved = speech_span(wave, 16000, 0.15), speech_span(changed, 16000, 0.15)
    assert abs(moved[0] - clean[0]) <= 0.05 * 16000 and abs(moved[1] - clean[1]) <= 0.05 * 16000


@pytest.mark.parametrize("kind", ("silence", "white noise"))
def test_no_speech_span_keeps_the_whole_clip(kind):
    n = 32000
    wave = np.zeros(n, np.float32)
    if kind == "white noise":
        wave = 0.1 * np.random.default_rng(2).standard_normal(n).astype(np.float32)
    assert speech_span(wave, 16000, 0.15) == (0, n)


def corpus_files(corpus: str) -> list[Path]:
    root = os.environ.get(DATA_ROOT_ENV)
    if not root or not Path(root).is_dir():
        pytest.skip(f"set {DATA_ROOT_ENV} to the folder holding ravdess/, tess/, emodb/")
    files = sorted(Path(root).glob(CORPUS_FILES[corpus]))
    if not files:
        pytest.skip(f"{root}: no {corpus} files ({CORPUS_FILES[corpus]})")
    return files


@pytest.mark.corpus
@pytest.mark.parametrize("corpus", sorted(CORPUS_FILES))
def test_quietest_corpus_clips_are_speech_even_30_db_quieter(corpus):
    levels = []
    for path in corpus_files(corpus):
        wave, rate = sf.read(path, dtype="float32")
        levels.append((level_db(wave), path, wave, rate))
    levels.sort(key=lambda item: item[0])
    for level, path, wave, rate in levels[:QUIETEST]:
        for db in (0.0, -30.0):
            evidence = detect_speech(gained(wave, db), rate)
            assert evidence.speech is True, (str(path), level, db, evidence)


@pytest.mark.corpus
@pytest.mark.parametrize("corpus", sorted(CORPUS_FILES))
def test_every_tenth_corpus_clip_is_speech(corpus):
    """A spread sample of each corpus (the whole of each was measured at 100 %)."""
    missed = []
    for path in corpus_files(corpus)[::10]:
        wave, rate = sf.read(path, dtype="float32")
        if not detect_speech(wave, rate).speech:
            missed.append(path.name)
    assert missed == []


def under_voices(wave: np.ndarray, db_below: float, sr: int = 16000) -> np.ndarray:
    """``wave`` with three other speech-like voices talking through all of it, together
    ``db_below`` dB under its speech's level (babble: voiced, unlike noise)."""
    n = wave.shape[0]
    voices = sum(
        speech_like(n / sr, hz=hz, sr=sr, seed=10 + i) for i, hz in enumerate((110, 190, 240))
    )
    speech_rms = float(np.sqrt(np.mean(np.square(wave[sr : int(2.5 * sr)]))))
    voices_rms = float(np.sqrt(np.mean(np.square(voices))))
    return (wave + voices * (speech_rms / voices_rms) * 10 ** (-db_below / 20)).astype(np.float32)


def test_voices_under_the_speaker_stretch_the_span_unless_only_the_foreground_counts():
    wave = speech_in_silence()
    clean = speech_span(wave, 16000, 0.15)
    babble = under_voices(wave, 20.0)
    # Voiced, the other voices are taken for speech: the span is most of the clip ...
    stretched = speech_span(babble, 16000, 0.15)
    assert stretched[1] - stretched[0] > 1.3 * (clean[1] - clean[0])
    # ... unless only voiced frames within 16 dB of the clip's loud stretches count; the
    # level is averaged over 0.41 s, so the span may reach half of that into the voices.
    narrowed = speech_span(babble, 16000, 0.15, foreground_db=16.0)
    assert abs(narrowed[0] - clean[0]) <= 0.21 * 16000
    assert abs(narrowed[1] - clean[1]) <= 0.21 * 16000


@pytest.mark.parametrize("rate", (16000, 44100))
def test_the_foreground_leaves_a_clean_clips_span_as_it_was(rate):
    wave = speech_in_silence(rate)
    assert speech_span(wave, rate, 0.15, foreground_db=16.0) == speech_span(wave, rate, 0.15)


@pytest.mark.corpus
def test_real_babble_under_a_corpus_clip_leaves_its_foreground_span_in_place():
    """Every 60th RAVDESS clip (pauses around the speech, which babble fills) under
    four voices of other actors 20 dB down: the foreground span stays on the speech."""
    from ser.perturb import Babble, parse_condition

    files = corpus_files("ravdess")
    others = [str(p) for p in files if p.parent.name in ("Actor_01", "Actor_02")][:40]
    babble = parse_condition(
        "babble:20", babble=Babble(others, lambda key: sf.read(key, dtype="float32")[0])
    )

    def overlap(a: tuple[int, int], b: tuple[int, int]) -> float:
        return max(0, min(a[1], b[1]) - max(a[0], b[0])) / (max(a[1], b[1]) - min(a[0], b[0]))

    plain, foreground = [], []
    for path in [p for p in files if p.parent.name not in ("Actor_01", "Actor_02")][::60]:
        wave, rate = sf.read(path, dtype="float32")
        clean = speech_span(wave, rate, 0.15, foreground_db=16.0)
        noisy = babble.apply(wave, rate, str(path))
        plain.append(overlap(speech_span(noisy, rate, 0.15), clean))
        foreground.append(overlap(speech_span(noisy, rate, 0.15, foreground_db=16.0), clean))
    assert len(foreground) >= 15
    assert np.mean(foreground) >= 0.85 > 0.70 >= np.mean(plain), (plain, foreground)
