"""Is there speech in this audio? The one speech detector, used before every prediction.

``detect_speech(wave, sample_rate)`` says whether a clip (or a live window) holds
speech, with the evidence it decided on (``SpeechEvidence``). It decides by cues
that do not depend on the recording level, so speech 30 dB quieter is still speech,
and only near-digital silence is silent by level:

Audio is first block-averaged to about 8 kHz and its DC offset removed.

1. **Voicing.** Each 20 ms frame (10 ms hop) gets YIN's aperiodicity: the minimum of
   the cumulative mean normalised difference function over lags of a voice pitch
   (``F0_MIN_HZ``-``F0_MAX_HZ``), and the pitch at that lag (YIN's first dip, so not
   a multiple of the period). A frame is *voiced* when it is periodic (aperiodicity
   below ``SpeechThresholds.max_aperiodicity``), not digital silence, and within
   ``relative_floor_db`` of the clip's loud frames (a mains hum in the pauses is not a
   voice). Noise of any colour and level is
   aperiodic, so it has almost no voiced frames.
2. **Voiced runs.** Consecutive voiced frames form runs, split where the pitch jumps.
   Speech alternates short voiced runs (syllables) with unvoiced consonants and pauses,
   and its pitch moves within a syllable (intonation). Voiced frames in a stretch of
   ``FLAT_SECONDS`` whose pitch stays within ``FLAT_SEMITONES`` are *flat*: a held
   tone, a musical note.

A clip is speech when at least ``min_voiced`` of its frames lie in voiced runs and at
most ``max_flat`` of those voiced frames are flat. Measured on the corpora
(RAVDESS actors 1-20, TESS, EMO-DB): every clip is speech, the quietest included, and
so is each of them 30 dB quieter; noises, chords and note sequences are not
(tests/test_speech.py). About 4 ms for a 4 s clip at 16 kHz.

Known limit: a tone buried in loud noise (signal-to-noise ratio of a few dB) has a
jittery pitch that no longer looks steady and can pass as speech.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

F0_MIN_HZ, F0_MAX_HZ = 60.0, 1000.0  # voice pitch range searched (screams reach ~1 kHz)
FRAME_SECONDS, HOP_SECONDS = 0.020, 0.010
ANALYSIS_RATE = 8000  # Hz; audio is block-averaged down to about this rate first
SILENT_DB = -100.0  # frames quieter than this (dBFS) are digital silence
DC_POLE = 0.99  # the DC blocker's pole
MAX_PEAK = 1e15  # larger samples overflow float32 spectra: refused, not analysed
PICK_THRESHOLD = 0.2  # YIN's absolute threshold for picking the period
PITCH_JUMP_SEMITONES = 1.5  # a larger step between frames ends a voiced run
MIN_RUN_FRAMES = 3  # shorter voiced runs are ignored (clicks, chance periodicity)
FLAT_SECONDS = 0.2  # a stretch this long of steady pitch is a tone, not speech
FLAT_SEMITONES = 0.15
FLAT_FILL = 0.8  # share of a stretch's frames that must be voiced to judge it
FOREGROUND_SECONDS = 0.41  # a few syllables: the level a clip's foreground is judged on


@dataclass(frozen=True)
class SpeechThresholds:
    """The detector's decision thresholds, shared by every entry point and the stream.

    ``min_voiced``: least share of frames in voiced runs for speech; ``max_flat``: most
    share of voiced frames that are flat (tonal); ``max_aperiodicity``: YIN aperiodicity
    under which a frame is periodic; ``relative_floor_db``: frames this far below the
    clip's loud frames (95th percentile) never count as voiced.
    """

    min_voiced: float = 0.03
    max_flat: float = 0.6
    max_aperiodicity: float = 0.3
    relative_floor_db: float = 45.0


DEFAULT_THRESHOLDS = SpeechThresholds()


@dataclass(frozen=True)
class SpeechEvidence:
    """The detector's answer for one clip and the cues behind it.

    ``voiced``: share of frames in voiced runs; ``flat``: share of the voiced frames
    that are flat (tonal, steady pitch); ``rms_db``: the clip's RMS level in dBFS (shown, not decided on
    except for digital silence).
    """

    speech: bool
    voiced: float
    flat: float
    rms_db: float

    def as_dict(self) -> dict[str, float]:
        """The evidence as JSON-ready numbers (rounded), as every entry point reports it."""
        return {
            "voiced": round(self.voiced, 3),
            "flat": round(self.flat, 3),
            "rms_db": round(self.rms_db, 1),
        }


def level_db(wave: np.ndarray) -> float:
    """RMS level of ``wave`` in dBFS (-200 for an empty or all-zero wave)."""
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) if wave.size else 0.0
    return 20.0 * float(np.log10(max(rms, 1e-10)))


def detect_speech(
    wave: np.ndarray, sample_rate: int, thresholds: SpeechThresholds = DEFAULT_THRESHOLDS
) -> SpeechEvidence:
    """Whether float mono ``wave`` [samples] at ``sample_rate`` Hz holds speech, and why.

    Raises ``ValueError`` for samples beyond ``MAX_PEAK`` (its float32 spectra would
    overflow, as the feature extractors' do)."""
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    if peak > MAX_PEAK:
        raise ValueError(
            f"speech check: samples up to {peak:.3g} would make its float32 spectra not "
            "finite (audio is expected within about [-1, 1])"
        )
    rms_db = level_db(wave)
    in_runs, semitones = voiced_run_frames(wave, sample_rate, thresholds)
    if in_runs is None:
        return SpeechEvidence(False, 0.0, 0.0, rms_db)
    voiced_frames = int(in_runs.sum())
    voiced = voiced_frames / len(in_runs)
    flat = int(flat_frames(in_runs, semitones).sum()) / voiced_frames if voiced_frames else 0.0
    speech = voiced >= thresholds.min_voiced and flat <= thresholds.max_flat
    return SpeechEvidence(bool(speech), float(voiced), float(flat), rms_db)


def voiced_run_frames(
    wave: np.ndarray,
    sample_rate: int,
    thresholds: SpeechThresholds = DEFAULT_THRESHOLDS,
    foreground_db: float | None = None,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Which frames (``FRAME_SECONDS`` every ``HOP_SECONDS``) of ``wave`` lie in voiced
    runs (cues 1 and 2 of the module docstring), and each frame's pitch in semitones;
    ``(None, pitch)`` when no frame is above digital silence. With ``foreground_db``,
    only frames in the clip's foreground (``foreground_frames``) can be voiced."""
    low, rate = block_average(np.asarray(wave, np.float64), sample_rate)
    low = remove_dc(low)
    aperiodicity, semitones, levels = frame_periodicity(low, rate)
    audible = levels > SILENT_DB
    if not audible.any():
        return None, semitones
    loud = audible & (levels > np.percentile(levels, 95) - thresholds.relative_floor_db)
    if foreground_db is not None:
        loud &= foreground_frames(levels, audible, foreground_db)
    voiced_mask = loud & (aperiodicity < thresholds.max_aperiodicity)
    in_runs = np.zeros_like(voiced_mask)
    for start, end in voiced_runs(voiced_mask, semitones):
        in_runs[start:end] = True
    return in_runs, semitones


def foreground_frames(levels: np.ndarray, audible: np.ndarray, within_db: float) -> np.ndarray:
    """Which frames lie in the clip's foreground: where its level averaged over
    ``FOREGROUND_SECONDS`` (power, centred) is within ``within_db`` of the 95th
    percentile of that average over the audible frames.

    Other voices talking under the speaker (babble, a television) are periodic, so
    voicing alone takes them for speech; over a few syllables their level stays well
    below the speaker's, so the average separates them where a single frame's level,
    which dips between syllables, does not."""
    width = max(1, round(FOREGROUND_SECONDS / HOP_SECONDS))
    power = np.where(audible, np.power(10.0, levels / 10.0), 0.0)
    kernel = np.ones(width) / width
    average = np.convolve(np.pad(power, width // 2, mode="edge"), kernel, mode="valid")
    average_db = 10.0 * np.log10(np.maximum(average[: levels.shape[0]], 1e-30))
    return average_db > np.percentile(average_db[audible], 95) - within_db


def speech_span(
    wave: np.ndarray, sample_rate: int, margin: float, foreground_db: float | None = None
) -> tuple[int, int]:
    """(start, stop) in samples: from ``margin`` seconds before the first voiced run of
    ``wave`` to ``margin`` seconds after the end of its last, clamped to the wave.

    Voicing does not depend on the level and noise is aperiodic, so the span is the
    same for a clip recorded quietly or in noise: what is cut is the silence, or the
    noise alone, around the speech. Other voices are periodic: with ``foreground_db``
    only voiced runs in the clip's foreground count (``foreground_frames``), so voices
    that many dB under the speaker's do not stretch the span over the whole clip.
    ``(0, len(wave))`` when no voiced run is found.
    """
    n = int(wave.shape[0])
    in_runs, _ = voiced_run_frames(wave, sample_rate, foreground_db=foreground_db)
    voiced = np.flatnonzero(in_runs) if in_runs is not None else np.empty(0, np.int64)
    if voiced.size == 0:
        return 0, n
    start = (voiced[0] * HOP_SECONDS - margin) * sample_rate
    stop = (voiced[-1] * HOP_SECONDS + FRAME_SECONDS + margin) * sample_rate
    return max(0, int(start)), min(n, int(np.ceil(stop)))


def block_average(wave: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int]:
    """``wave`` averaged over blocks of ``sample_rate // ANALYSIS_RATE`` samples (a cheap
    low-pass and decimation; aliased noise stays noise), and the new rate."""
    factor = max(1, sample_rate // ANALYSIS_RATE)
    usable = wave.shape[0] - wave.shape[0] % factor
    if factor == 1 or usable == 0:
        return wave, sample_rate
    # The blocks' sums as strided slices added in order: a block mean, without NumPy's slow
    # reduction over a short inner axis.
    total = wave[0:usable:factor].copy()
    for offset in range(1, factor):
        total += wave[offset:usable:factor]
    return total / factor, sample_rate // factor


def remove_dc(wave: np.ndarray) -> np.ndarray:
    """``wave`` through a one-pole DC blocker (cut-off ~13 Hz at 8 kHz): a DC offset is
    neither a voice nor a level, and fades out within a few milliseconds."""
    from scipy.signal import lfilter

    if wave.size == 0:
        return wave
    return lfilter([1.0, -1.0], [1.0, -DC_POLE], wave - wave[0])


def frame_periodicity(wave: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: YIN aperiodicity (0 = periodic), pitch in semitones above 100 Hz, and
    level in dBFS; frames of ``FRAME_SECONDS`` every ``HOP_SECONDS``."""
    size = max(1, int(FRAME_SECONDS * rate))
    hop = max(1, int(HOP_SECONDS * rate))
    min_lag = max(2, int(rate / F0_MAX_HZ))
    max_lag = max(min_lag + 2, int(np.ceil(rate / F0_MIN_HZ)))
    difference, energy = yin_difference(wave, size, max_lag, hop)
    lags = np.arange(1, max_lag + 1)
    running = np.cumsum(difference[:, 1:], axis=1)
    normalised = np.ones_like(difference)
    periodic = running > 1e-12 * size
    normalised[:, 1:] = np.where(
        periodic, difference[:, 1:] * lags / np.where(periodic, running, 1.0), 1.0
    )
    searched = normalised[:, min_lag : max_lag + 1]
    best = first_dip(searched)
    rows = np.arange(searched.shape[0])
    aperiodicity = searched[rows, best]
    lag = min_lag + best + parabolic_offset(searched, best)
    semitones = 12.0 * np.log2(rate / lag / 100.0)
    levels = 10.0 * np.log10(np.maximum(energy / size, 1e-20))
    return aperiodicity, semitones, levels


def padded_to(wave: np.ndarray, size: int) -> np.ndarray:
    """``wave``, zero-padded to ``size`` samples if shorter (one whole frame)."""
    return np.pad(wave, (0, size - wave.shape[0])) if wave.shape[0] < size else wave


def yin_difference(
    wave: np.ndarray, size: int, max_lag: int, hop: int
) -> tuple[np.ndarray, np.ndarray]:
    """YIN's difference function d(lag) for lags 0..``max_lag`` [n, max_lag + 1] of frames
    of ``size`` samples every ``hop`` (each read with ``max_lag`` samples after it; a short
    wave is zero-padded to one), by FFT correlation; and the frames' energy [n]."""
    from scipy import fft  # float32 transforms: several times faster than NumPy's

    wave = padded_to(wave, size + max_lag)
    frames = np.lib.stride_tricks.sliding_window_view(wave, size + max_lag)[::hop]

    n_fft = 1 << int(np.ceil(np.log2(frames.shape[1] + size)))
    single = frames.astype(np.float32)
    head = fft.rfft(single[:, :size], n_fft)
    whole = fft.rfft(single, n_fft)
    correlation = fft.irfft(np.conj(head) * whole, n_fft)[:, : max_lag + 1]
    # Window energies, sums of x^2 over [start, start + size), from one running sum.
    running = np.concatenate([[0.0], np.cumsum(np.square(wave, dtype=np.float64))])
    starts = np.arange(frames.shape[0])[:, None] * hop + np.arange(max_lag + 1)
    windows = running[starts + size] - running[starts]
    energy = windows[:, 0]
    shifted_energy = windows
    difference = np.maximum(energy[:, None] + shifted_energy - 2.0 * correlation, 0.0)
    difference[:, 0] = 0.0
    return difference, energy


def first_dip(curve: np.ndarray) -> np.ndarray:
    """Per row, YIN's pick: the local minimum that follows the first value under
    ``PICK_THRESHOLD`` (the shortest period, not a multiple of it), else the global
    minimum."""
    below = curve < PICK_THRESHOLD
    best = np.where(below.any(axis=1), np.argmax(below, axis=1), np.argmin(curve, axis=1))
    rows, last = np.arange(curve.shape[0]), curve.shape[1] - 1
    for _ in range(last):  # walk down to the bottom of the dip (a few steps)
        step = np.minimum(best + 1, last)
        lower = curve[rows, step] < curve[rows, best]
        if not lower.any():
            break
        best = np.where(lower, step, best)
    return best


def parabolic_offset(curve: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Sub-sample position of each row's minimum at ``best`` (-1..1; 0 at the ends)."""
    inner = np.clip(best, 1, curve.shape[1] - 2)
    rows = np.arange(curve.shape[0])
    left, mid, right = curve[rows, inner - 1], curve[rows, inner], curve[rows, inner + 1]
    bend = left - 2.0 * mid + right
    offset = np.where(np.abs(bend) > 1e-12, 0.5 * (left - right) / np.where(bend, bend, 1.0), 0.0)
    at_end = (best == 0) | (best == curve.shape[1] - 1)
    return np.where(at_end, 0.0, np.clip(offset, -1.0, 1.0))


def voiced_runs(voiced: np.ndarray, semitones: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) frame spans of consecutive voiced frames, split where the pitch
    jumps by more than ``PITCH_JUMP_SEMITONES``; runs shorter than ``MIN_RUN_FRAMES``
    dropped."""
    jump = np.zeros(voiced.shape[0], bool)
    jump[1:] = np.abs(np.diff(semitones)) > PITCH_JUMP_SEMITONES
    edges = np.flatnonzero(np.diff(np.concatenate([[False], voiced, [False]]).astype(np.int8)))
    runs = []
    for start, end in zip(edges[::2], edges[1::2]):
        cuts = [start, *(start + 1 + np.flatnonzero(jump[start + 1 : end])), end]
        runs.extend((a, b) for a, b in pairwise(cuts) if b - a >= MIN_RUN_FRAMES)
    return runs


def flat_frames(voiced: np.ndarray, semitones: np.ndarray) -> np.ndarray:
    """Which frames lie in a stretch of ``FLAT_SECONDS`` that is almost all voiced and
    whose pitch stays within ``FLAT_SEMITONES``: a held tone or note, not speech (whose
    pitch moves within a syllable). Judged per stretch, not per run, so that a noisy
    tone broken into short runs, or notes gliding into each other, are still flat."""
    width = max(2, round(FLAT_SECONDS / HOP_SECONDS))
    if voiced.shape[0] < width:
        return np.zeros_like(voiced)
    windows = np.lib.stride_tricks.sliding_window_view
    highest = windows(np.where(voiced, semitones, -np.inf), width).max(axis=1)
    lowest = windows(np.where(voiced, semitones, np.inf), width).min(axis=1)
    filled = windows(voiced, width).mean(axis=1) >= FLAT_FILL
    steady = filled & (highest - lowest < FLAT_SEMITONES)
    covered = np.convolve(steady.astype(np.float64), np.ones(width))[: voiced.shape[0]] > 0
    return covered & voiced
