"""Tiny synthetic corpora on disk, named exactly like the real ones.

Each file is a short tone whose pitch depends on its emotion (plus a little noise
seeded by the file name), so a small model can learn the labels and no two files
have the same bytes. Layout under ``root``::

    ravdess/Actor_01/03-01-05-02-01-01-01.flac
    tess/OAF_angry/OAF_back_angry.wav
    emodb/wav/03a01Wa.wav
    custom/<names as given>

Every ``make_*`` returns the written paths, sorted.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import soundfile as sf

# Distinct pitch (Hz) per canonical emotion.
EMOTION_HZ = {
    "neutral": 200.0,
    "calm": 260.0,
    "happy": 330.0,
    "sad": 150.0,
    "angry": 420.0,
    "fear": 520.0,
    "disgust": 240.0,
    "ps": 600.0,
    "boredom": 120.0,
}

RAVDESS_CODES = {
    "neutral": "01",
    "calm": "02",
    "happy": "03",
    "sad": "04",
    "angry": "05",
    "fear": "06",
    "disgust": "07",
    "ps": "08",
}
# Song was recorded for these emotions only.
RAVDESS_SONG = ("neutral", "calm", "happy", "sad", "angry", "fear")
TESS_EMOTIONS = ("angry", "disgust", "fear", "happy", "neutral", "ps", "sad")
EMODB_LETTERS = {
    "angry": "W",
    "boredom": "L",
    "disgust": "E",
    "fear": "A",
    "happy": "F",
    "sad": "T",
    "neutral": "N",
}


def write_tone(
    path: str | Path,
    seconds: float = 0.3,
    sr: int = 16000,
    channels: int = 1,
    subtype: str | None = None,
    hz: float = 220.0,
    noise: float = 0.05,
    format: str | None = None,
) -> Path:
    """Write ``seconds`` of a sine at ``hz`` plus noise, ``channels`` identical channels.

    The container comes from the extension (.wav .flac .ogg .mp3 .aiff ...) unless
    ``format`` names it (soundfile names, e.g. "AIFF" for .aif).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    t = np.arange(int(seconds * sr)) / sr
    tone = 0.3 * np.sin(2 * np.pi * hz * t) + noise * rng.standard_normal(t.shape)
    wave = np.repeat(tone[:, None], channels, axis=1).astype(np.float32)
    sf.write(path, wave, sr, subtype=subtype, format=format)
    return path


def write_empty_wav(path: str | Path) -> Path:
    """A valid WAV header with zero frames."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros((0, 1), np.float32), 16000, subtype="PCM_16")
    return path


def write_bytes(path: str | Path, data: bytes = b"this is not audio\n") -> Path:
    """Any bytes under any name: a text file renamed .wav, a truncated download, ..."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_ravdess(
    root: str | Path,
    actors: Iterable[int] = (1, 2, 3, 4),
    emotions: Iterable[str] = tuple(RAVDESS_CODES),
    song: bool = False,
    ext: str = ".flac",
    **tone: object,
) -> list[Path]:
    """Speech files (neutral: normal intensity only, like the real corpus), statement 1,
    repetition 1; with ``song``, also song files for the emotions that have them."""
    paths = []
    emotions = tuple(emotions)
    for actor in actors:
        for channel, names in (("01", emotions), ("02", RAVDESS_SONG if song else ())):
            for emotion in names:
                if emotion not in emotions:
                    continue
                for intensity in ("01",) if emotion == "neutral" else ("01", "02"):
                    code = RAVDESS_CODES[emotion]
                    name = f"03-{channel}-{code}-{intensity}-01-01-{actor:02d}{ext}"
                    folder = Path(root) / "ravdess" / f"Actor_{actor:02d}"
                    paths.append(write_tone(folder / name, hz=EMOTION_HZ[emotion], **tone))
    return sorted(paths)


def make_tess(
    root: str | Path,
    speakers: Iterable[str] = ("OAF", "YAF"),
    words: Iterable[str] = ("back", "bar"),
    emotions: Iterable[str] = TESS_EMOTIONS,
    ps_spelling: str = "ps",
    ext: str = ".wav",
    **tone: object,
) -> list[Path]:
    """``tess/OAF_angry/OAF_back_angry.wav``; ``ps_spelling`` sets how pleasant surprise is
    written in file names ("ps", "pleasant_surprise", "pleasant_surprised", ...)."""
    paths = []
    for speaker in speakers:
        for emotion in emotions:
            # Folders spell it out, file names use ps_spelling (as in the real release).
            in_folder, in_name = (
                ("pleasant_surprise", ps_spelling) if emotion == "ps" else (emotion,) * 2
            )
            folder = Path(root) / "tess" / f"{speaker}_{in_folder}"
            for word in words:
                name = f"{speaker}_{word}_{in_name}{ext}"
                paths.append(write_tone(folder / name, hz=EMOTION_HZ[emotion], **tone))
    return sorted(paths)


def make_emodb(
    root: str | Path,
    speakers: Iterable[str] = ("03", "08", "09", "10", "11"),
    texts: Iterable[str] = ("a01",),
    emotions: Iterable[str] = tuple(EMODB_LETTERS),
    ext: str = ".wav",
    **tone: object,
) -> list[Path]:
    """``emodb/wav/03a01Wa.wav``: one version ("a") per speaker, text and emotion."""
    folder = Path(root) / "emodb" / "wav"
    return sorted(
        write_tone(folder / f"{s}{t}{EMODB_LETTERS[e]}a{ext}", hz=EMOTION_HZ[e], **tone)
        for s in speakers
        for t in texts
        for e in emotions
    )


def make_custom(
    root: str | Path, names: Iterable[str], folder: str = "custom", **tone: object
) -> list[Path]:
    """One tone per relative name under ``root/folder``; pitch follows a trailing emotion."""
    paths = []
    for name in names:
        label = Path(name).stem.rsplit("_", 1)[-1].lower()
        hz = EMOTION_HZ.get(label, 300.0)
        paths.append(write_tone(Path(root) / folder / name, hz=hz, **tone))
    return sorted(paths)


def make_corpora(root: str | Path, **tone: object) -> Path:
    """RAVDESS (4 actors), TESS (2 speakers) and EMO-DB (5 speakers) with defaults; returns root."""
    make_ravdess(root, **tone)
    make_tess(root, **tone)
    make_emodb(root, **tone)
    return Path(root)
