"""Pure frame-level feature extractors: a mono waveform -> float32 [frames, dims].

Every extractor reads a shared ``Spectra`` so that one waveform gets one STFT, and
a mel spectrogram is computed once per (n_mels, fmin, fmax) however many extractors
use it. With ``features.trim_db`` the clip's leading and trailing silence is cut
first (``silence_bounds``), with ``features.speech_span`` everything around its
speech (``speech_bounds``). Frames are ``1 + samples // hop_length`` of what is
left (centred STFT); waves shorter than ``n_fft`` are zero-padded to ``n_fft``
first. Nothing here does I/O or mutates global state; the filterbank caches below
are memoised pure functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property, lru_cache

import librosa
import numpy as np

from ser.config import (
    ChromaParams,
    ComParEParams,
    ContrastParams,
    EGeMAPSParams,
    FeaturesConfig,
    FrameParams,
    MelParams,
    MFCCParams,
    ProsodyParams,
    TonnetzParams,
)
from ser.registry import Registry
from ser.speech import speech_span

# Part of every cache key: bump it whenever every extractor's output changes.
EXTRACTOR_VERSION = "1"
# An extractor whose output changed on its own since then: its revision joins its part
# of the key, so only entries holding it are recomputed. prosody 2: ``yin_f0`` replaced
# librosa.yin (equal up to float32 rounding, which flips about one frame in a thousand).
EXTRACTOR_REVISIONS: dict[str, int] = {"prosody": 2}

FEATURES: Registry[Callable[..., np.ndarray]] = Registry("feature extractor")

DELTA_WIDTH = 9  # librosa's default delta window (frames)
TONNETZ_DIMS = 6
PROSODY_COLUMNS = ("log_f0", "log_rms", "zcr")
OPENSMILE_DIMS = {"eGeMAPSv02": 88, "ComParE_2016": 6373}


@lru_cache(maxsize=32)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """float32 [n_mels, 1 + n_fft // 2] Slaney mel filterbank (read-only: it is shared)."""
    basis = librosa.filters.mel(
        sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, dtype=np.float32
    )
    basis.flags.writeable = False
    return basis


@lru_cache(maxsize=32)
def _chroma_basis(sample_rate: int, n_fft: int, n_chroma: int) -> np.ndarray:
    """float32 [n_chroma, 1 + n_fft // 2] chroma filterbank (read-only: it is shared)."""
    basis = librosa.filters.chroma(
        sr=sample_rate, n_fft=n_fft, n_chroma=n_chroma, tuning=0.0, dtype=np.float32
    )
    basis.flags.writeable = False
    return basis


@lru_cache(maxsize=32)
def _hann(win_length: int) -> np.ndarray:
    """float32 [win_length] periodic Hann window (read-only: it is shared)."""
    window = librosa.filters.get_window("hann", win_length, fftbins=True).astype(np.float32)
    window.flags.writeable = False
    return window


class Spectra:
    """The shared analysis of one waveform; each part is computed lazily and at most once.

    ``wave`` is mono float32 [samples] at ``sample_rate`` Hz. Spectrogram properties
    are [freq, frames] with ``freq = 1 + n_fft // 2``.
    """

    def __init__(self, wave: np.ndarray, sample_rate: int, frame: FrameParams) -> None:
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1:
            raise ValueError(f"expected a mono wave [samples], got shape {wave.shape}")
        if not np.isfinite(wave).all():
            raise ValueError("the wave holds NaN or infinite samples (or values beyond float32)")
        if wave.shape[0] < frame.n_fft:
            # Shorter than one window: pad so every extractor sees at least one full frame.
            wave = np.pad(wave, (0, frame.n_fft - wave.shape[0]))
        self.wave = wave
        self.sample_rate = int(sample_rate)
        self.frame = frame
        self._mel: dict[tuple[int, float, float], np.ndarray] = {}
        self._log_mel: dict[tuple[int, float, float], np.ndarray] = {}

    @cached_property
    def stft_magnitude(self) -> np.ndarray:
        """float32 [freq, frames] |STFT| (Hann window, centred, zero-padded edges)."""
        spectrum = librosa.stft(
            self.wave,
            n_fft=self.frame.n_fft,
            hop_length=self.frame.hop_length,
            win_length=self.frame.win_length,
            window=_hann(self.frame.win_length),
            center=True,
        )
        return np.abs(spectrum)

    @cached_property
    def power(self) -> np.ndarray:
        """float32 [freq, frames] |STFT|^2."""
        return np.square(self.stft_magnitude)

    def _mel_key(self, n_mels: int, fmin: float, fmax: float | None) -> tuple[int, float, float]:
        # fmax=None means Nyquist; normalise so both spellings share one entry.
        return n_mels, float(fmin), float(self.sample_rate / 2 if fmax is None else fmax)

    def mel_power(self, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
        """float32 [n_mels, frames] mel-band power, memoised per (n_mels, fmin, fmax)."""
        key = self._mel_key(n_mels, fmin, fmax)
        if key not in self._mel:
            basis = _mel_basis(self.sample_rate, self.frame.n_fft, *key)
            self._mel[key] = basis @ self.power
        return self._mel[key]

    def log_mel(self, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
        """float32 [n_mels, frames] mel power in dB re 1.0, memoised like ``mel_power``.

        Floored at -100 dB (so silence stays finite) and at 80 dB below the clip's peak:
        librosa's ``power_to_db`` defaults, so MFCCs equal ``librosa.feature.mfcc``'s.
        """
        key = self._mel_key(n_mels, fmin, fmax)
        if key not in self._log_mel:
            self._log_mel[key] = librosa.power_to_db(self.mel_power(*key))
        return self._log_mel[key]


# Trimming never leaves less than this (nor less than one n_fft window).
MIN_TRIMMED_SECONDS = 0.1


def silence_bounds(wave: np.ndarray, sample_rate: int, cfg: FeaturesConfig) -> tuple[int, int]:
    """(start, stop) in samples of ``wave`` [samples] without its leading and trailing silence.

    Silence is the edge frames whose RMS (``win_length`` samples, centred, every
    ``hop_length``) is more than ``cfg.trim_db`` dB below the loudest frame's, as in
    ``librosa.effects.trim``. The span runs from the first loud frame's centre to a hop
    after the last one's; as a centred window reaches half a window either side, an
    abrupt onset or end keeps a little of the silence next to it (up to half a window,
    plus a hop at the end). ``(0, len(wave))`` when ``trim_db`` is None, when the span
    would be shorter than ``MIN_TRIMMED_SECONDS`` or ``n_fft``, and for a wave with no
    signal (all zeros) or with non-finite samples (``Spectra`` rejects those).
    """
    n, frame = wave.shape[0], cfg.frame
    shortest = shortest_cut(sample_rate, cfg)
    if cfg.trim_db is None or n <= shortest:
        return 0, n
    rms = librosa.feature.rms(y=wave, frame_length=frame.win_length, hop_length=frame.hop_length)[0]
    peak = float(rms.max())
    if not (np.isfinite(peak) and peak > 0):
        return 0, n
    loud = np.flatnonzero(rms >= peak * 10.0 ** (-cfg.trim_db / 20.0))
    start = int(loud[0]) * frame.hop_length
    stop = min(n, (int(loud[-1]) + 1) * frame.hop_length)
    return (start, stop) if stop - start >= shortest else (0, n)


def shortest_cut(sample_rate: int, cfg: FeaturesConfig) -> int:
    """Samples that a cut clip must keep (``MIN_TRIMMED_SECONDS`` or one ``n_fft``
    window, the longer): a shorter cut leaves the clip whole."""
    return max(int(np.ceil(MIN_TRIMMED_SECONDS * sample_rate)), cfg.frame.n_fft)


def speech_bounds(wave: np.ndarray, sample_rate: int, cfg: FeaturesConfig) -> tuple[int, int]:
    """(start, stop) in samples of ``wave``'s speech with ``cfg.speech_span`` seconds
    either side (``ser.speech.speech_span``); ``(0, len(wave))`` when that is None, when
    no voiced run is found, or when the span would be shorter than
    ``MIN_TRIMMED_SECONDS`` or ``n_fft``."""
    n = wave.shape[0]
    shortest = shortest_cut(sample_rate, cfg)
    if cfg.speech_span is None or n <= shortest or not np.isfinite(wave).all():
        return 0, n
    start, stop = speech_span(wave, sample_rate, cfg.speech_span, cfg.speech_span_foreground_db)
    return (start, stop) if stop - start >= shortest else (0, n)


def analysed_span(wave: np.ndarray, sample_rate: int, cfg: FeaturesConfig) -> tuple[int, int]:
    """(start, stop) in samples of the part of mono ``wave`` that the extractors see:
    without its leading and trailing silence (``silence_bounds``), then cut to its
    speech (``speech_bounds``). Frame 0 of ``extract_features`` starts at ``start``."""
    start, stop = silence_bounds(wave, sample_rate, cfg)
    inner_start, inner_stop = speech_bounds(wave[start:stop], sample_rate, cfg)
    return start + inner_start, start + inner_stop


# Frames within this many dB of a clip's loudest frame are its active frames: the
# ones its level is measured on (``active_level_db``).
ACTIVE_RANGE_DB = 40.0
# Active frames quieter than this (dBFS) are digital silence: such a clip is left as is.
SILENT_LEVEL_DB = -120.0


def active_level_db(wave: np.ndarray, frame: FrameParams) -> float:
    """The clip's level in dBFS: the RMS over its active frames, those (``win_length``
    samples every ``hop_length``) within ``ACTIVE_RANGE_DB`` of its loudest frame.

    A gain of g dB moves it by exactly g dB, whatever the clip's pauses, since the
    active frames are chosen relative to the loudest. ``-inf`` for an all-zero wave.
    """
    if wave.shape[0] == 0:
        return float("-inf")
    power = (
        librosa.feature.rms(
            y=np.asarray(wave, np.float32),
            frame_length=frame.win_length,
            hop_length=frame.hop_length,
            center=True,
        )[0].astype(np.float64)
        ** 2
    )
    peak = float(power.max())
    if not (np.isfinite(peak) and peak > 0):
        return float("-inf")
    active = power[power >= peak * 10.0 ** (-ACTIVE_RANGE_DB / 10.0)]
    return float(10.0 * np.log10(active.mean()))


def normalise_loudness(wave: np.ndarray, target_db: float | None, frame: FrameParams) -> np.ndarray:
    """``wave`` scaled so that ``active_level_db`` is ``target_db`` (None: unchanged).

    Digital silence (level below ``SILENT_LEVEL_DB``) is returned unchanged: there is
    no level to bring up.
    """
    if target_db is None:
        return wave
    level = active_level_db(wave, frame)
    if not np.isfinite(level) or level < SILENT_LEVEL_DB:
        return wave
    return (wave * np.float32(10.0 ** ((target_db - level) / 20.0))).astype(np.float32)


def _frames_last_to_first(x: np.ndarray) -> np.ndarray:
    """[dims, frames] (librosa's layout) -> C-contiguous float32 [frames, dims]."""
    return np.ascontiguousarray(x.T, dtype=np.float32)


@lru_cache(maxsize=4)
def _delta_operators(order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The linear maps of ``librosa.feature.delta(width=9, order=order, mode="interp")``:
    Savitzky-Golay convolution coefficients for the inner frames, and the matrices giving
    the first and last ``DELTA_WIDTH // 2`` frames from a polynomial fitted to the first
    and last ``DELTA_WIDTH`` frames (read-only: they are shared)."""
    from scipy.signal import savgol_coeffs, savgol_filter

    half = DELTA_WIDTH // 2
    coeffs = savgol_coeffs(DELTA_WIDTH, order, deriv=order).astype(np.float32)
    # Column i of each edge map is the edge's response to a unit impulse at frame i.
    unit = savgol_filter(np.eye(DELTA_WIDTH), DELTA_WIDTH, order, deriv=order, mode="interp")
    first = np.ascontiguousarray(unit[:, :half].T, np.float32)
    last = np.ascontiguousarray(unit[:, -half:].T, np.float32)
    for array in (coeffs, first, last):
        array.flags.writeable = False
    return coeffs, first, last


def _delta(x: np.ndarray, order: int) -> np.ndarray:
    """``order``-th time derivative of [dims, frames] (Savitzky-Golay, 9 frames).

    ``librosa.feature.delta``'s answer (its 'interp' edges), with the edge polynomials
    precomputed as matrices instead of fitted by least squares on every call.
    """
    if x.shape[-1] < DELTA_WIDTH:
        # librosa's 'interp' edge mode needs at least DELTA_WIDTH frames; shorter clips
        # fall back to repeating the edge frame rather than failing.
        return librosa.feature.delta(x, width=DELTA_WIDTH, order=order, mode="nearest")
    from scipy.ndimage import convolve1d

    coeffs, first, last = _delta_operators(order)
    half = DELTA_WIDTH // 2
    out = convolve1d(x, coeffs, axis=-1, mode="constant")
    out[:, :half] = x[:, :DELTA_WIDTH] @ first.T
    out[:, -half:] = x[:, -DELTA_WIDTH:] @ last.T
    return out


@FEATURES.register("mfcc")
def extract_mfcc(spectra: Spectra, params: MFCCParams) -> np.ndarray:
    """float32 [frames, n_mfcc * (1 + deltas)]: DCT-II of log-mel, then its deltas."""
    coeffs = librosa.feature.mfcc(S=spectra.log_mel(params.n_mels), n_mfcc=params.n_mfcc)
    blocks = [coeffs] + [_delta(coeffs, order) for order in range(1, params.deltas + 1)]
    return _frames_last_to_first(np.concatenate(blocks, axis=0))


@FEATURES.register("chroma")
def extract_chroma(spectra: Spectra, params: ChromaParams) -> np.ndarray:
    """float32 [frames, n_chroma] in [0, 1], each frame's peak pitch class scaled to 1.

    Equals ``librosa.feature.chroma_stft(S=power, tuning=0)``. The tuning is fixed
    because a per-clip tuning estimate means nothing for speech and costs more than
    the chroma itself.
    """
    basis = _chroma_basis(spectra.sample_rate, spectra.frame.n_fft, params.n_chroma)
    chroma = librosa.util.normalize(basis @ spectra.power, norm=np.inf, axis=0)
    return _frames_last_to_first(chroma)


@FEATURES.register("mel")
def extract_mel(spectra: Spectra, params: MelParams) -> np.ndarray:
    """float32 [frames, n_mels] log-mel power in dB (see ``Spectra.log_mel``)."""
    return _frames_last_to_first(spectra.log_mel(params.n_mels, params.fmin, params.fmax))


@FEATURES.register("contrast")
def extract_contrast(spectra: Spectra, params: ContrastParams) -> np.ndarray:
    """float32 [frames, n_bands + 1] spectral peak-to-valley ratio per octave band, in dB."""
    contrast = librosa.feature.spectral_contrast(
        S=spectra.stft_magnitude,
        sr=spectra.sample_rate,
        n_fft=spectra.frame.n_fft,
        fmin=params.fmin,
        n_bands=params.n_bands,
    )
    return _frames_last_to_first(contrast)


# librosa.effects.harmonic frames with hop 512, and its median filter (scipy 1.17)
# returns wrong values, even NaN, on a spectrogram of two or three frames; so
# shorter waves are zero-padded to four frames for the separation, then cut back.
_HARMONIC_MIN_SAMPLES = 3 * 512


def _harmonic(wave: np.ndarray) -> np.ndarray:
    """float32 [samples]: the harmonic part of ``wave`` (median-filter HPSS)."""
    padded = np.pad(wave, (0, max(0, _HARMONIC_MIN_SAMPLES - wave.shape[0])))
    return librosa.effects.harmonic(padded)[: wave.shape[0]]


@FEATURES.register("tonnetz")
def extract_tonnetz(spectra: Spectra, params: TonnetzParams) -> np.ndarray:
    """float32 [frames', 6] tonal centroids (fifths, minor and major thirds) from CQT chroma.

    Not STFT-based: frames' may differ from the STFT frame count by one or two.
    """
    wave = _harmonic(spectra.wave) if params.harmonic else spectra.wave
    tonnetz = librosa.feature.tonnetz(
        y=wave, sr=spectra.sample_rate, hop_length=spectra.frame.hop_length
    )
    return _frames_last_to_first(tonnetz)


# YIN's absolute threshold: the first dip of the normalised difference under it is the
# period (librosa.yin's ``trough_threshold``).
YIN_THRESHOLD = 0.1


def yin_f0(
    wave: np.ndarray, sr: int, fmin: float, fmax: float, frame_length: int, hop_length: int
) -> np.ndarray:
    """float64 [frames] F0 in Hz of every frame by YIN (de Cheveigne & Kawahara 2002).

    The estimate of ``librosa.yin`` (0.11: centred frames of ``frame_length`` zero-padded
    at the edges, autocorrelation over the whole frame, first trough under
    ``YIN_THRESHOLD`` else the global minimum, parabolic refinement), computed about four
    times faster: frames stay rows, the autocorrelation uses one real FFT of a fast
    length that covers only the lags searched (librosa's is of the awkward length
    ``2 * frame_length - 1`` and covers all of them), and the parabola is fitted at the
    chosen lag only. Results equal librosa's up to float32 rounding, which moves a
    borderline trough across the threshold in about one frame in a thousand
    (tests/test_features.py compares the two).
    """
    from scipy import fft  # float32 transforms: several times faster than NumPy's

    padded = np.pad(np.asarray(wave, np.float32), frame_length // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame_length)[::hop_length]
    min_period = int(np.floor(sr / fmax))
    max_period = min(int(np.ceil(sr / fmin)), frame_length - 1)
    size = fft.next_fast_len(frame_length + max_period, real=True)
    spectrum = fft.rfft(frames, size, axis=1, workers=1)
    power = np.square(spectrum.real) + np.square(spectrum.imag)
    acf = fft.irfft(power, size, axis=1, workers=1)[:, : max_period + 1]
    # d(k) = 2 (r(0) - r(k)) - sum of the frame's first k squared samples (librosa's form).
    difference = 2 * (acf[:, :1] - acf[:, 1:]) - np.cumsum(
        np.square(frames[:, :max_period]), axis=1
    )
    lags = np.arange(1, max_period + 1, dtype=np.float32)
    mean_before = (np.cumsum(difference, axis=1) / lags)[:, min_period - 1 :]
    curve = difference[:, min_period - 1 :] / (mean_before + np.finfo(np.float32).tiny)
    # Troughs: below the previous lag and not above the next (the first lag: below the next).
    trough = np.empty(curve.shape, bool)
    trough[:, 0] = curve[:, 0] < curve[:, 1]
    trough[:, 1:-1] = (curve[:, 1:-1] < curve[:, :-2]) & (curve[:, 1:-1] <= curve[:, 2:])
    trough[:, -1] = curve[:, -1] < curve[:, -2]
    deep = trough & (curve < YIN_THRESHOLD)
    best = np.where(deep.any(axis=1), deep.argmax(axis=1), curve.argmin(axis=1))
    return sr / (min_period + best + _parabolic_shift(curve, best))


def _parabolic_shift(curve: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Per row, the offset (-1..1) of the parabola through ``best`` and its neighbours'
    optimum; 0 at the ends and where the optimum falls outside the neighbours."""
    rows = np.arange(curve.shape[0])
    inner = np.clip(best, 1, curve.shape[1] - 2)
    left, mid, right = curve[rows, inner - 1], curve[rows, inner], curve[rows, inner + 1]
    bend = right + left - 2 * mid
    half_slope = (right - left) / 2
    ok = (best == inner) & (np.abs(half_slope) < np.abs(bend))
    return np.where(ok, -half_slope / np.where(ok, bend, 1), 0).astype(np.float64)


# Samples within this of zero count as zero (non-negative) for zero crossings, as in
# ``librosa.zero_crossings``.
ZERO_CROSSING_THRESHOLD = 1e-10


def _frame_rms_zcr(wave: np.ndarray, frame: FrameParams) -> tuple[np.ndarray, np.ndarray]:
    """float32 [frames] RMS and zero-crossing rate over centred ``win_length`` windows every
    ``hop_length``: ``librosa.feature.rms`` (zero-padded edges) and
    ``librosa.feature.zero_crossing_rate`` (edges padded by repetition; a sign change
    between a window's consecutive samples counts), without their per-frame loops."""
    half, width, hop = frame.win_length // 2, frame.win_length, frame.hop_length
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(wave, half), width)[::hop]
    rms = np.sqrt(np.mean(np.square(windows), axis=1))
    negative = np.pad(wave, half, mode="edge") < -ZERO_CROSSING_THRESHOLD
    changes = np.concatenate([[0], np.cumsum(negative[1:] != negative[:-1], dtype=np.int64)])
    starts = np.arange(windows.shape[0]) * hop
    counts = changes[starts + width - 1] - changes[starts]
    return rms.astype(np.float32), (counts / width).astype(np.float32)


@FEATURES.register("prosody")
def extract_prosody(spectra: Spectra, params: ProsodyParams) -> np.ndarray:
    """float32 [frames, 3]: log F0 (YIN, Hz), log RMS energy and zero-crossing rate.

    Same framing as the STFT (centred, ``hop_length``): RMS and ZCR over
    ``win_length`` samples, pitch over ``pitch_frame`` samples (``yin_f0``). YIN reports
    a pitch for every frame, voiced or not; the energy column tells them apart downstream.
    """
    frame, wave, sr = spectra.frame, spectra.wave, spectra.sample_rate
    pitch_frame = max(params.pitch_frame, int(np.ceil(2 * sr / params.fmin)) + 2)
    padded = np.pad(wave, (0, max(0, pitch_frame - wave.shape[0])))
    f0 = yin_f0(
        padded, sr, params.fmin, min(params.fmax, sr / 2 - 1), pitch_frame, frame.hop_length
    )
    rms, zcr = _frame_rms_zcr(wave, frame)
    n = min(f0.shape[0], rms.shape[0], zcr.shape[0])
    log_f0 = np.log(np.clip(f0[:n], params.fmin, None))
    return np.ascontiguousarray(
        np.stack([log_f0, np.log(rms[:n] + 1e-5), zcr[:n]], axis=1), np.float32
    )


class OpenSMILEMissing(RuntimeError):
    """The optional ``opensmile`` package is needed and not installed."""


def opensmile_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("opensmile")
    except Exception:  # not installed: no extractor of it can run either
        return None


def _functionals(spectra: Spectra, feature_set: str) -> np.ndarray:
    """[1, D] openSMILE functionals, computed in a child process (see opensmile_worker)."""
    from ser.features.opensmile_worker import MISSING, PROCESS, OpenSMILEError

    try:
        values = PROCESS.functionals(spectra.wave, spectra.sample_rate, feature_set)
    except OpenSMILEError as exc:
        if str(exc) == MISSING:
            raise OpenSMILEMissing(
                f"feature set {feature_set} needs the optional opensmile package: "
                "pip install 'ser[opensmile]'"
            ) from None
        raise
    # openSMILE yields NaN for a few functionals of degenerate input (silence).
    return np.nan_to_num(values.reshape(1, -1), nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


@FEATURES.register("egemaps")
def extract_egemaps(spectra: Spectra, params: EGeMAPSParams) -> np.ndarray:
    """float32 [1, 88]: openSMILE eGeMAPS functionals of the whole clip (Eyben et al. 2016)."""
    return _functionals(spectra, params.feature_set)


@FEATURES.register("compare")
def extract_compare(spectra: Spectra, params: ComParEParams) -> np.ndarray:
    """float32 [1, 6373]: openSMILE ComParE 2016 functionals of the whole clip."""
    return _functionals(spectra, params.feature_set)


def _column_names(name: str, cfg: FeaturesConfig) -> list[str]:
    if name == "mfcc":
        n = cfg.mfcc.n_mfcc
        static = [f"mfcc_{i}" for i in range(n)]
        return static + [f"mfcc_d{d}_{i}" for d in range(1, cfg.mfcc.deltas + 1) for i in range(n)]
    sizes = {
        "chroma": cfg.chroma.n_chroma,
        "mel": cfg.mel.n_mels,
        "contrast": cfg.contrast.n_bands + 1,
        "tonnetz": TONNETZ_DIMS,
        "egemaps": OPENSMILE_DIMS[cfg.egemaps.feature_set],
        "compare": OPENSMILE_DIMS[cfg.compare.feature_set],
    }
    if name == "prosody":
        return list(PROSODY_COLUMNS)
    return [f"{name}_{i}" for i in range(sizes[name])]


def feature_names(cfg: FeaturesConfig) -> list[str]:
    """One name per frame-level feature column, in ``extract_features`` order."""
    return [column for name in cfg.extractors for column in _column_names(name, cfg)]


def feature_dims(cfg: FeaturesConfig) -> int:
    """Width of ``extract_features`` output (before pooling)."""
    return len(feature_names(cfg))


def extract_features(wave: np.ndarray, sample_rate: int, cfg: FeaturesConfig) -> np.ndarray:
    """float32 [frames, feature_dims(cfg)]: ``cfg.extractors`` side by side, in that order.

    ``wave`` is mono float32 [samples]; with ``cfg.trim_db`` its leading and trailing
    silence is cut first (``silence_bounds``), with ``cfg.speech_span`` it is cut to its
    speech (``speech_bounds``), and with ``cfg.loudness_db`` it is brought to that level
    (``normalise_loudness``), so training and inference, which both extract through
    here, trim and level alike. All extractors share one ``Spectra``; if their
    frame counts differ (tonnetz), every block is cut to the shortest. Raises
    ``ValueError`` for a wave with NaN or infinite samples, input an extractor cannot
    use (librosa's ``ParameterError``) and features that come out non-finite (samples
    so large that float32 spectra overflow): the output is always finite.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 1:  # anything else is for Spectra to reject
        start, stop = analysed_span(wave, sample_rate, cfg)
        wave = normalise_loudness(wave[start:stop], cfg.loudness_db, cfg.frame)
    spectra = Spectra(wave, sample_rate, cfg.frame)
    blocks = []
    for name in cfg.extractors:
        try:
            block = FEATURES.get(name)(spectra, getattr(cfg, name))
        except librosa.ParameterError as exc:
            raise ValueError(f"{name}: {exc}") from None
        if not np.isfinite(block).all():
            peak = float(np.max(np.abs(spectra.wave)))
            raise ValueError(
                f"{name} features are not finite (samples up to {peak:.3g}; audio is expected "
                "within about [-1, 1])"
            )
        blocks.append(block)
    frames = min(block.shape[0] for block in blocks)
    return np.concatenate([block[:frames] for block in blocks], axis=1)


class _FrameStatistics:
    """Statistics over the frames of one clip's features [frames, D], each computed at
    most once and shared: one sort serves every percentile, one centring every moment.

    Everything is float64, as float32 sums over long clips lose digits in mean and std.
    """

    def __init__(self, features: np.ndarray) -> None:
        self.features = features
        self.wide = features.astype(np.float64)
        self.n = features.shape[0]

    @cached_property
    def mean(self) -> np.ndarray:
        return self.wide.mean(axis=0)

    @cached_property
    def centred(self) -> np.ndarray:
        return self.wide - self.mean

    @cached_property
    def squares(self) -> np.ndarray:
        return np.square(self.centred)

    @cached_property
    def variance(self) -> np.ndarray:
        return self.squares.mean(axis=0)

    @cached_property
    def sorted(self) -> np.ndarray:
        # Sorting the float32 input gives the same order as sorting its float64 copy.
        return np.sort(self.features, axis=0).astype(np.float64)

    def percentile(self, q: float) -> np.ndarray:
        """``np.percentile(x, q, axis=0)`` (linear method) from the one sorted copy."""
        fraction = q / 100
        # NumPy's virtual index for the linear method, spelled as NumPy computes it.
        index = self.n * fraction + (1 + fraction * -1) - 1
        below = int(np.clip(np.floor(index), 0, self.n - 1))
        above = min(below + 1, self.n - 1)
        weight = index - np.floor(index)
        low, high = self.sorted[below], self.sorted[above]
        step = high - low
        # NumPy's lerp: from the nearer end, so a weight of 1 gives exactly ``high``.
        return high - step * (1 - weight) if weight >= 0.5 else low + step * weight

    def moment(self, order: int) -> np.ndarray:
        """Standardised central moment (3: skewness, 4: excess kurtosis); 0 for constant
        columns."""
        powered = self.squares * (self.centred if order == 3 else self.squares)
        safe = np.where(self.variance > 1e-12, self.variance, 1.0)
        value = powered.mean(axis=0) / safe ** (order / 2)
        return np.where(self.variance > 1e-12, value - (3.0 if order == 4 else 0.0), 0.0)

    def slope(self) -> np.ndarray:
        """Least-squares slope over the clip, time scaled to [-1, 1] (so length-free)."""
        if self.n < 2:
            return np.zeros(self.wide.shape[1])
        t = np.linspace(-1.0, 1.0, self.n)
        return (t @ self.centred) / np.square(t).sum()

    def delta(self) -> np.ndarray:
        """Mean absolute frame-to-frame change: how fast each feature moves."""
        if self.n < 2:
            return np.zeros(self.wide.shape[1])
        return np.abs(np.diff(self.wide, axis=0)).mean(axis=0)


_STATISTICS: dict[str, Callable[[_FrameStatistics], np.ndarray]] = {
    "mean": lambda s: s.mean,
    "std": lambda s: np.sqrt(s.variance),
    "min": lambda s: s.sorted[0],
    "max": lambda s: s.sorted[-1],
    "median": lambda s: s.percentile(50),
    "p1": lambda s: s.percentile(1),
    "p25": lambda s: s.percentile(25),
    "p75": lambda s: s.percentile(75),
    "p99": lambda s: s.percentile(99),
    "range": lambda s: s.percentile(99) - s.percentile(1),
    "iqr": lambda s: s.percentile(75) - s.percentile(25),
    "skew": lambda s: s.moment(3),
    "kurtosis": lambda s: s.moment(4),
    "slope": lambda s: s.slope(),
    "delta": lambda s: s.delta(),
}
# Statistics over frames, in utterance-level functionals as openSMILE's ComParE set
# computes them (percentiles, ranges, moments, regression slope). "range" is the
# 1-99 percentile range, robust to a single clipped frame.


def pool(features: np.ndarray, pooling: Sequence[str]) -> np.ndarray:
    """[frames, D] -> float32 [D * len(pooling)]: each statistic over frames, in order."""
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"expected features [frames >= 1, dims], got shape {features.shape}")
    unknown = [name for name in pooling if name not in _STATISTICS]
    if unknown or not pooling:
        raise ValueError(f"pooling must name some of {list(_STATISTICS)}, got {list(pooling)}")
    stats = _FrameStatistics(features)
    return np.concatenate([_STATISTICS[name](stats) for name in pooling]).astype(np.float32)
