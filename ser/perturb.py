"""Recording conditions a clip may reach the model in, applied to clean audio.

Users record on laptops, phones and headsets, at whatever level the device gives,
in rooms and in noise. ``parse_conditions("gain:-20,telephone,noise:white:10")``
turns a comma-separated list into ``Condition`` objects; ``Condition.apply(wave,
sample_rate, key)`` gives the clip as it would have been recorded that way. Every
condition is deterministic: its randomness (noise, a room's reflections) is seeded
from the condition's name, a seed and the clip's ``key`` (e.g. its path), so a
condition gives the same audio for a clip on every run and in every process.

Conditions (``NAME[:ARG...]``):

- ``gain:DB``            the level changed by DB decibels, no clipping (float audio)
- ``clip:DB``            DB decibels louder, then clipped to [-1, 1] as a 16-bit
                         recorder would
- ``telephone``          a telephone channel: 300-3,400 Hz band-pass at 8 kHz, and back
- ``noise:COLOUR:SNR``   white, pink or brown Gaussian noise at SNR dB below the clip's
                         active level (``active_level_db``)
- ``babble:SNR``         the sum of four other speakers' clips (``Babble``) at SNR dB
- ``mp3:KBPS``, ``opus:KBPS``  a lossy codec round trip at that bit rate: MP3 through
                         LAME in-process (soundfile's libsndfile; ffmpeg where that
                         lacks MP3), Opus through ffmpeg
- ``reverb:RT60``        a small room: the clip convolved with a synthetic impulse
                         response (a direct path, then exponentially decaying noise
                         that falls 60 dB in RT60 seconds)
- ``speed:FACTOR``       not a recording condition but another voice: the clip played
                         FACTOR times as fast (tempo, pitch and formants together, as
                         a tape runs faster; ``speed:0.9..1.1`` for training copies in
                         more voices). The one condition that changes a clip's length.

A condition's number may be a range ``LO..HI`` (``noise:white:5..25``): each clip then
gets its own value, drawn uniformly from the range and seeded like the rest, so
training copies cover a spread of SNRs, bit rates or rooms rather than one setting.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import signal

from ser.audio import (
    FFMPEG_INSTALL,
    AudioError,
    decode,
    decode_bytes_with_ffmpeg,
    encode_mp3,
    encode_with_ffmpeg,
    ffmpeg_path,
    mp3_in_process,
    resample,
)
from ser.config import FrameParams
from ser.features.extractors import active_level_db

# The analysis frames of every level measurement here (``active_level_db``).
LEVEL_FRAME = FrameParams()
TELEPHONE_RATE = 8000
TELEPHONE_BAND_HZ = (300.0, 3400.0)
NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power falls as 1 / f**exponent
BABBLE_VOICES = 4
CODEC_ARGS = {"mp3": ["-c:a", "libmp3lame", "-f", "mp3"], "opus": ["-c:a", "libopus", "-f", "ogg"]}


class ConditionError(RuntimeError):
    """A condition that cannot be parsed or applied; the message names it (the CLI
    prints it as an error, without a traceback)."""


@dataclass(frozen=True)
class Babble:
    """Clips of other speakers to make babble noise from: ``load(key)`` gives one
    clip's wave at the sample rate in use. Evaluation passes training speakers' clips,
    so no test speaker's voice is in the noise."""

    keys: Sequence[str]
    load: Callable[[str], np.ndarray]


@dataclass(frozen=True)
class Condition:
    """One recording condition, e.g. ``noise:pink:10``; see the module docstring."""

    name: str
    kind: str
    args: tuple[str, ...] = ()
    value: float | None = None
    seed: int = 0
    babble: Babble | None = field(default=None, compare=False, repr=False)
    span: tuple[float, float] | None = None  # ``LO..HI``: a value per clip in this range

    def rng(self, key: str, *stream: int) -> np.random.Generator:
        """The random stream of this condition for the clip named ``key`` (``stream``
        picks a separate one, e.g. for the value drawn from a range)."""
        return np.random.default_rng(
            [self.seed, zlib.crc32(self.name.encode()), zlib.crc32(key.encode()), *stream]
        )

    def amount(self, key: str) -> float:
        """This condition's number for the clip named ``key``: ``value``, or for a range
        a uniform draw from it (its own stream, so the noise itself does not shift)."""
        if self.span is None:
            return float(self.value)
        return float(self.rng(key, 1).uniform(*self.span))

    def apply(self, wave: np.ndarray, sample_rate: int, key: str = "") -> np.ndarray:
        """float32 mono ``wave`` at ``sample_rate`` -> the same clip in this condition
        (float32, same rate; same length, but for ``speed``)."""
        wave = np.asarray(wave, np.float32)
        out = _APPLY[self.kind](self, wave, sample_rate, key)
        if self.kind != "speed":
            out = out[: wave.shape[0]]
        return np.asarray(out, np.float32)


def _gain(c: Condition, wave: np.ndarray, sr: int, key: str) -> np.ndarray:
    return wave * np.float32(10.0 ** (c.amount(key) / 20.0))


def _clip(c: Condition, wave: np.ndarray, sr: int, key: str) -> np.ndarray:
    return np.clip(_gain(c, wave, sr, key), -1.0, 1.0)


def _telephone(c: Condition, wave: np.ndarray, sr: int, key: str) -> np.ndarray:
    narrow = resample(wave, sr, TELEPHONE_RATE)
    sos = signal.butter(4, TELEPHONE_BAND_HZ, btype="bandpass", fs=TELEPHONE_RATE, output="sos")
    narrow = signal.sosfilt(sos, narrow).astype(np.float32)
    back = resample(narrow, TELEPHONE_RATE, sr)
    return np.pad(back, (0, max(0, wave.shape[0] - back.shape[0])))


def coloured_noise(samples: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise [samples] whose power falls as 1 / f**exponent, at unit RMS."""
    white = rng.standard_normal(samples)
    if exponent:
        spectrum = np.fft.rfft(white)
        f = np.arange(spectrum.shape[0], dtype=np.float64)
        f[0] = f[1] if f.shape[0] > 1 else 1.0
        white = np.fft.irfft(spectrum / f ** (exponent / 2.0), n=samples)
    white -= white.mean()
    rms = float(np.sqrt(np.mean(white**2)))
    return (white / rms if rms > 0 else white).astype(np.float32)


def _at_snr(wave: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``wave`` plus ``noise`` scaled to ``snr_db`` below the clip's active level."""
    level = active_level_db(wave, LEVEL_FRAME)
    if not np.isfinite(level):
        return wave
    noise_rms = float(np.sqrt(np.mean(np.square(noise, dtype=np.float64))))
    if noise_rms == 0:
        return wave
    target = 10.0 ** ((level - snr_db) / 20.0)
    return wave + noise * np.float32(target / noise_rms)


def _noise(c: Condition, wave: np.ndarray, sr: int, key: str) -> np.ndarray:
    noise = coloured_noise(wave.shape[0], NOISE_COLOURS[c.args[0]], c.rng(key))
    return _at_snr(wave, noise, c.amount(key))


def _babble(c: Condition, wave: np.ndarray, sr: int, key: str) -> np.ndarray:
    if c.babble is None or not c.babble.keys:
        raise ConditionError(f"{c.name}: no clips of other speakers to make babble from")
    rng = c.rng(key)
    picks = rng.choice(
        len(c.babble.keys), size=min(BABBLE_VOICES, len(c.babble.keys)), replace=False
    )
    mix = np.zeros(wave.shape[0], np.float32)
    for i in picks:
        voice = np.asarray(c.babble.load(c.babble.keys[int(i)]), np.float32)
        if voice.shape[0] == 0:
            continue
        level = active_level_db(voice, LEVEL_FRAME)
        if np.isfinite(level):
            voice = voice / np.float32(10.0 ** (level / 20.0))  # each voice at 0 dBFS active
        start = int(rng.integers(0, voice.shape[0]))
        mix += np.resize(np.roll(voice, -start), wave.shape[0])  # looped to the clip's length
    return _at_snr(wave, mix, c.amount(key))


def _codec(c: Condition, wave: np.ndarray, sr: int, key: str) -> np.ndarray:
    kbps = c.amount(key)
    try:
        if c.kind == "mp3" and mp3_in_process():  # in-process: ~7x faster than ffmpeg
            decoded = decode(io.BytesIO(encode_mp3(wave, sr, kbps)), sr)
        else:
            rate = ["-b:a", f"{round(kbps)}k"] + (["-ar", "48000"] if c.kind == "opus" else [])
            encoded = encode_with_ffmpeg(np.clip(wave, -1.0, 1.0), sr, [*CODEC_ARGS[c.kind], *rate])
            decoded = decode_bytes_with_ffmpeg(encoded, sr, max_seconds=3600.0)
    except AudioError as exc:
        raise ConditionError(f"{c.name}: {exc}") from None
    decoded = decoded[_lag(wave, decoded) :]  # encoders add a little silence at the start
    return np.pad(decoded, (0, max(0, wave.shape[0] - decoded.shape[0])))


def _lag(reference: np.ndarray, delayed: np.ndarray, most: int = 4096) -> int:
    """Samples by which ``delayed`` lags ``reference`` (0..``most``)."""
    n = min(reference.shape[0], delayed.shape[0] - most)
    if n <= 0:
        return 0
    scores = signal.correlate(delayed[: n + most], reference[:n], mode="valid", method="fft")
    return int(np.argmax(scores))


def room_response(rt60: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A synthetic small room's impulse response: 1 at the direct path, then Gaussian
    reflections from 1 ms on whose envelope falls 60 dB in ``rt60`` seconds."""
    n = max(2, int(rt60 * sample_rate))
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)  # ln(1000): -60 dB at rt60
    tail[: max(1, sample_rate // 1000)] = 0.0
    tail *= 0.5 / max(float(np.sqrt(np.sum(tail**2))), 1e-12)  # direct-to-reverberant ~ 6 dB
    tail[0] = 1.0
    return tail.astype(np.float32)


def _reverb(c: Condition, wave: np.ndarray, sr: int, key: str) -> np.ndarray:
    wet = signal.fftconvolve(wave, room_response(c.amount(key), sr, c.rng(key)))[: wave.shape[0]]
    return wet.astype(np.float32)


def _speed(c: Condition, wave: np.ndarray, sr: int, key: str) -> np.ndarray:
    """Resampled to ``sr / factor`` and read at ``sr``: ``factor`` times as fast."""
    return resample(wave, sr, max(1, round(sr / c.amount(key))))


_APPLY = {
    "gain": _gain,
    "clip": _clip,
    "telephone": _telephone,
    "noise": _noise,
    "babble": _babble,
    "mp3": _codec,
    "opus": _codec,
    "reverb": _reverb,
    "speed": _speed,
}
# Per kind: (names of the arguments before the number, the number's name and range).
_SYNTAX = {
    "gain": ((), ("DB", -60.0, 20.0)),
    "clip": ((), ("DB", 0.0, 40.0)),
    "telephone": ((), None),
    "noise": (("COLOUR",), ("SNR", -10.0, 60.0)),
    "babble": ((), ("SNR", -10.0, 60.0)),
    "mp3": ((), ("KBPS", 8.0, 320.0)),
    "opus": ((), ("KBPS", 6.0, 256.0)),
    "reverb": ((), ("RT60", 0.05, 2.0)),
    "speed": ((), ("FACTOR", 0.5, 2.0)),
}


def _usage(kind: str) -> str:
    words, number = _SYNTAX[kind]
    return ":".join([kind, *words, *([f"{number[0]}[..HI]"] if number else [])])


def needs_ffmpeg(kind: str) -> bool:
    """Whether a condition of ``kind`` runs through ffmpeg here: Opus always, MP3 only
    where soundfile's libsndfile cannot write it."""
    return kind == "opus" or (kind == "mp3" and not mp3_in_process())


def parse_condition(text: str, seed: int = 0, babble: Babble | None = None) -> Condition:
    """``noise:pink:10`` -> its ``Condition``; ``ConditionError`` naming the problem."""
    parts = [p.strip() for p in text.strip().split(":")]
    kind = parts[0].lower()
    if kind not in _SYNTAX:
        raise ConditionError(
            f"{text!r}: unknown condition (known: {', '.join(_usage(k) for k in _SYNTAX)})"
        )
    words, number = _SYNTAX[kind]
    expected = len(words) + (1 if number else 0)
    if len(parts) - 1 != expected:
        raise ConditionError(f"{text!r}: expected {_usage(kind)}")
    args = tuple(p.lower() for p in parts[1 : 1 + len(words)])
    if kind == "noise" and args[0] not in NOISE_COLOURS:
        raise ConditionError(f"{text!r}: COLOUR must be one of {', '.join(NOISE_COLOURS)}")
    value, span = None, None
    if number:
        low, ranged, high = parts[-1].partition("..")
        span = (_number(text, number, low), _number(text, number, high)) if ranged else None
        value = span[0] if span else _number(text, number, low)
        if span and span[0] >= span[1]:
            raise ConditionError(f"{text!r}: a range LO..HI needs LO below HI")
    if needs_ffmpeg(kind) and ffmpeg_path() is None:
        raise ConditionError(f"{text!r}: the codec round trip needs ffmpeg: {FFMPEG_INSTALL}")
    amount = [f"{span[0]:g}..{span[1]:g}" if span else f"{value:g}"] if number else []
    name = ":".join([kind, *args, *amount])
    return Condition(name, kind, args, value, seed, babble if kind == "babble" else None, span)


def _number(text: str, number: tuple[str, float, float], part: str) -> float:
    """One number of condition ``text`` (``part``), checked against its range."""
    label, lo, hi = number
    try:
        value = float(part)
    except ValueError:
        raise ConditionError(f"{text!r}: {label} must be a number or a range LO..HI") from None
    if not (lo <= value <= hi):
        raise ConditionError(f"{text!r}: {label} must be within {lo:g} to {hi:g}")
    return value


def parse_conditions(
    text: str | Sequence[str], seed: int = 0, babble: Babble | None = None
) -> list[Condition]:
    """``"gain:-20,telephone"`` (or a list of such strings) -> ``Condition``s, in order,
    each once."""
    items = [text] if isinstance(text, str) else list(text)
    out: dict[str, Condition] = {}
    for item in items:
        for part in item.split(","):
            if part.strip():
                condition = parse_condition(part, seed, babble)
                out.setdefault(condition.name, condition)
    if not out:
        raise ConditionError("no conditions given (e.g. gain:-20,telephone,noise:white:10)")
    return list(out.values())
