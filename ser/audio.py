"""Audio loading and the small pure functions around it.

``load_audio`` reads any format soundfile reads (WAV, FLAC, OGG, MP3, ...), mixes
to mono, resamples to the asked rate and validates the result. Every failure is an
``AudioError`` whose message names the file and the reason, so callers can skip a
bad file with a useful warning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import IO

import numpy as np
import soundfile as sf


class AudioError(ValueError):
    """An unreadable or unusable audio file; the message names the file and why."""


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _name(source: str | os.PathLike[str] | IO[bytes]) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "<upload>")


def audio_info(path: str | os.PathLike[str]) -> AudioInfo:
    """Header facts of an audio file without decoding it."""
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types for non-audio
        raise AudioError(f"{path}: not readable as audio ({_reason(exc, path)})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    return AudioInfo(info.samplerate, info.channels, info.frames, info.format, info.subtype)


def _reason(exc: Exception, source: object = None) -> str:
    if isinstance(source, (str, os.PathLike)):
        try:  # libsndfile says only "System error" when the OS refused the file
            with open(source, "rb"):
                pass
        except OSError as refused:
            return refused.strerror or str(refused)
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return text.replace("Error opening", "cannot open")[:200]


def to_mono(wave: np.ndarray) -> np.ndarray:
    """[samples] or [samples, channels] -> float32 [samples] (channel mean)."""
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    return np.ascontiguousarray(wave, dtype=np.float32)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling (soxr through librosa); a no-op when the rates match."""
    if orig_sr == target_sr:
        return wave
    import librosa  # deferred: importing librosa costs ~1 s

    return librosa.resample(wave, orig_sr=orig_sr, target_sr=target_sr).astype(np.float32)


def pad_or_crop(wave: np.ndarray, length: int) -> np.ndarray:
    """Centre-crop or symmetrically zero-pad ``wave`` [samples] to ``length`` samples."""
    n = wave.shape[0]
    if n == length:
        return wave
    if n > length:
        start = (n - length) // 2
        return wave[start : start + length]
    before = (length - n) // 2
    return np.pad(wave, (before, length - n - before))


def decode(
    source: str | os.PathLike[str] | IO[bytes], sample_rate: int, min_samples: int = 1
) -> np.ndarray:
    """Read ``source`` (a path or a binary file object) to float32 mono at ``sample_rate``."""
    name = _name(source)
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        raise AudioError(f"{name}: is a directory, not an audio file")
    try:
        wave, sr = sf.read(source, dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(f"{name}: not readable as audio ({_reason(exc, source)})") from None
    if wave.shape[0] == 0:
        raise AudioError(f"{name}: empty audio (0 samples)")
    if not np.isfinite(wave).all():
        raise AudioError(f"{name}: contains NaN or infinite samples")
    mono = to_mono(wave)
    if np.isfinite(mono).all():
        mono = resample(mono, int(sr), sample_rate)
    if not np.isfinite(mono).all():  # float samples near the float32 limit overflow
        raise AudioError(
            f"{name}: samples up to {float(np.abs(wave).max()):.3g} overflow when mixed to "
            "mono or resampled (audio is expected within about [-1, 1])"
        )
    if mono.shape[0] < min_samples:
        raise AudioError(
            f"{name}: too short ({mono.shape[0]} samples at {sample_rate} Hz, need {min_samples})"
        )
    return mono


def load_audio(path: str | os.PathLike[str], sample_rate: int, min_samples: int = 1) -> np.ndarray:
    """float32 mono waveform of ``path`` at ``sample_rate`` Hz, in [-1, 1] for PCM input."""
    return decode(path, sample_rate, min_samples)
