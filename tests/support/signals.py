"""Generated signals for the speech check: speech-like audio and the non-speech kinds
(silence, noises, music-like tones) every entry point must answer ``no_speech`` for.

``speech_like`` imitates what the detector listens for in speech, not a voice: syllables
of a glottal pulse train whose pitch glides (intonation), shaped by two or three formant
resonances, separated by short noise bursts (consonants) and pauses.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter


def resonate(wave: np.ndarray, centre_hz: float, bandwidth_hz: float, sr: int) -> np.ndarray:
    """``wave`` through a two-pole resonance (a formant) at ``centre_hz``."""
    r = np.exp(-np.pi * bandwidth_hz / sr)
    theta = 2 * np.pi * centre_hz / sr
    return lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], wave)


def syllable(seconds: float, hz: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One voiced syllable: pulses at a gliding pitch around ``hz`` through formants."""
    t = np.arange(int(seconds * sr)) / sr
    glide = rng.uniform(-2, 2) + rng.uniform(-3, 3) * t / t[-1]
    wobble = 0.7 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)
    pitch = hz * 2 ** ((glide + wobble) / 12)
    pulses = np.diff(np.floor(np.cumsum(pitch / sr)), prepend=0.0)
    voice = lfilter([1.0], [1, -0.95], pulses)
    for centre, bandwidth in [(rng.uniform(500, 800), 80), (rng.uniform(1000, 1800), 120)]:
        voice = resonate(voice, centre, bandwidth, sr)
    voice = resonate(voice, 2500, 200, sr) * np.sqrt(np.abs(np.sin(np.pi * t / t[-1])))
    return voice / (np.abs(voice).max() + 1e-9)


def consonant(seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """A short, quieter burst of high-passed noise (a fricative)."""
    n = int(seconds * sr)
    burst = lfilter([1, -0.9], [1], rng.standard_normal(n)) * np.hanning(n)
    return 0.15 * burst / (np.abs(burst).max() + 1e-9)


def speech_like(
    seconds: float, hz: float = 150.0, sr: int = 16000, seed: int = 0, amplitude: float = 0.3
) -> np.ndarray:
    """float32 [samples]: syllables around pitch ``hz``, consonants and short pauses."""
    rng = np.random.default_rng(seed)
    parts, total = [], int(seconds * sr)
    while sum(p.shape[0] for p in parts) < total:
        parts.append(syllable(rng.uniform(0.12, 0.28), hz, sr, rng))
        parts.append(consonant(rng.uniform(0.05, 0.12), sr, rng))
        parts.append(np.zeros(int(rng.uniform(0.0, 0.05) * sr)))
    return (amplitude * np.concatenate(parts)[:total]).astype(np.float32)


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise whose power falls as 1/f**``exponent`` (0 white, 1 pink, 2 brown), peak 1."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), n)
    return noise / np.abs(noise).max()


def chord(seconds: float, sr: int = 16000, roots=(261.6, 329.6, 392.0)) -> np.ndarray:
    """A sustained major chord of harmonic tones (five partials each), peak 1."""
    t = np.arange(int(seconds * sr)) / sr
    wave = sum(np.sin(2 * np.pi * k * f * t) / k for f in roots for k in range(1, 6))
    return wave / np.abs(wave).max()


def notes(seconds: float, sr: int = 16000, note_seconds: float = 0.25) -> np.ndarray:
    """A scale of pure-tone notes, one every ``note_seconds``, peak 1."""
    scale = [262, 294, 330, 349, 392, 440, 494, 523]
    n, step = int(seconds * sr), int(note_seconds * sr)
    t = np.arange(step) / sr
    parts = [np.sin(2 * np.pi * scale[i % len(scale)] * t) for i in range(-(-n // step))]
    return np.concatenate(parts)[:n]


def non_speech(seconds: float = 3.0, sr: int = 16000, seed: int = 0) -> dict[str, np.ndarray]:
    """Every kind of audio that is not speech, by name, float32 [samples]."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    signals = {
        "silence": np.zeros(n),
        "dc_offset": np.full(n, 0.5),
        "low_white_noise": 1e-3 * coloured_noise(n, 0, rng),
        "loud_white_noise": 0.9 * coloured_noise(n, 0, rng),
        "pink_noise": 0.5 * coloured_noise(n, 1, rng),
        "brown_noise": 0.5 * coloured_noise(n, 2, rng),
        "chord": 0.3 * chord(seconds, sr),
        "notes": 0.3 * notes(seconds, sr),
    }
    return {name: wave.astype(np.float32) for name, wave in signals.items()}


def gliding_tone(
    seconds: float, hz: float = 220.0, sr: int = 16000, seed: int = 0, amplitude: float = 0.3
) -> np.ndarray:
    """float32 [samples]: a sine around ``hz`` whose pitch glides a semitone up and down
    (4 Hz), cut into syllable-long bursts with a little noise. Speech to the detector,
    yet close to the tiny test runs' training tones, so their models answer it sensibly."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    pitch = hz * 2 ** (np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 2 * np.pi)) / 12)
    wave = np.sin(2 * np.pi * np.cumsum(pitch) / sr)
    bursts = (t % 0.28) < 0.2  # 200 ms syllables, 80 ms gaps
    wave = amplitude * wave * bursts + 0.02 * rng.standard_normal(t.shape)
    return wave.astype(np.float32)
