"""A catalogue of awkward and broken inputs, written on demand, shared by robustness tests.

``CATALOGUE`` maps a case name to (writer, usable): ``writer(path)`` creates the
case at ``path`` (a file name ending in ``_happy.wav`` or similar, so the custom
corpus reader labels it), and ``usable`` says whether a well-behaved system should
accept it as audio (True) or reject it with a clear message (False).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.support.robustlog import record

SR = 16000


def _tone(seconds: float, sr: int = SR, channels: int = 1) -> np.ndarray:
    """A voice-like tone: its pitch glides around 220 Hz (so the speech check takes it
    for speech) and its loudness swells at 3 Hz."""
    t = np.arange(int(seconds * sr)) / sr
    pitch = 220 * 2 ** (np.sin(2 * np.pi * 4 * t) / 12)
    wave = 0.3 * np.sin(2 * np.pi * np.cumsum(pitch) / sr) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return np.repeat(wave[:, None], channels, axis=1).astype(np.float32)


def _write(path: Path, wave: np.ndarray, sr: int = SR, subtype: str | None = None) -> None:
    sf.write(path, wave, sr, subtype=subtype, format="WAV")


def _valid_wav_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, _tone(0.5), SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _nan(path: Path) -> None:
    wave = _tone(0.5)
    wave[100:200] = np.nan
    wave[300] = np.inf
    _write(path, wave, subtype="FLOAT")


def _symlink(path: Path) -> None:
    target = path.parent / ".link-target.flac"  # hidden: readers ignore it, only the link counts
    sf.write(target, _tone(0.5), SR)
    os.symlink(target, path)


def _unreadable(path: Path) -> None:
    _write(path, _tone(0.5))
    path.chmod(0)


Writer = Callable[[Path], None]
CATALOGUE: dict[str, tuple[Writer, bool]] = {
    "empty file": (lambda p: p.write_bytes(b""), False),
    "zero-length audio": (
        lambda p: _write(p, np.zeros((0, 1), np.float32), subtype="PCM_16"),
        False,
    ),
    "truncated header": (lambda p: p.write_bytes(_valid_wav_bytes()[:30]), False),
    "random bytes": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4000)), False),
    "text file": (lambda p: p.write_text("this is a text file, not audio\n" * 20), False),
    "8-bit PCM": (lambda p: _write(p, _tone(0.5), subtype="PCM_U8"), True),
    "24-bit PCM": (lambda p: _write(p, _tone(0.5), subtype="PCM_24"), True),
    "float32": (lambda p: _write(p, _tone(0.5), subtype="FLOAT"), True),
    "float64": (lambda p: _write(p, _tone(0.5), subtype="DOUBLE"), True),
    "stereo": (lambda p: _write(p, _tone(0.5, channels=2)), True),
    "6 channels": (lambda p: _write(p, _tone(0.5, channels=6)), True),
    "8 kHz": (lambda p: _write(p, _tone(0.5, 8000), 8000), True),
    "96 kHz": (lambda p: _write(p, _tone(0.5, 96000), 96000), True),
    "shorter than one frame": (lambda p: _write(p, _tone(0.005)), True),
    "10 minutes": (lambda p: _write(p, _tone(600.0), subtype="PCM_16"), True),
    "silence": (lambda p: _write(p, np.zeros((SR, 1), np.float32)), True),
    "NaN and Inf samples": (_nan, False),
    "full-scale clipping": (lambda p: _write(p, np.clip(_tone(0.5) * 20, -1, 1)), True),
    "DC offset only": (lambda p: _write(p, np.full((SR, 1), 0.5, np.float32)), True),
    "non-ASCII name with spaces": (lambda p: _write(p, _tone(0.5)), True),
    "symlink": (_symlink, True),
    "no read permission": (_unreadable, False),
    "directory named like a file": (lambda p: p.mkdir(), False),
}

# Usable cases that hold no speech: every entry point answers them ``no_speech``.
NO_SPEECH = {"silence", "DC offset only", "shorter than one frame"}
NAMES = {"non-ASCII name with spaces": "émotion ça va 01_happy.wav"}
# Readable audio whose file name carries no usable label: only the corpus reader cares.
NAME_CASES = {
    "no emotion token": "20190616_125714.wav",
    "unknown emotion token": "20190616_125714_elated.wav",
}
# Every input case, in catalogue order, then whole-run scenarios of the inputs table.
ROWS = [*CATALOGUE, *NAME_CASES]
MIXED = "good and broken together"
NOTHING_USABLE = "only broken files"
ONLY_NAN = "only NaN-sample files"
SCENARIOS = [MIXED, NOTHING_USABLE, ONLY_NAN]
BROKEN_ONLY = {"header": NOTHING_USABLE, "samples": ONLY_NAN}  # write_broken_only's kinds


def file_name(case: str, emotion: str = "happy") -> str:
    """A custom-corpus file name for ``case`` ending in ``_<emotion>.wav``."""
    if case in NAMES:
        return NAMES[case].replace("happy", emotion)
    return case.replace(" ", "-").replace("/", "-") + f"_{emotion}.wav"


def write_case(folder: Path, case: str, emotion: str = "happy") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name(case, emotion)
    CATALOGUE[case][0](path)
    return path


def write_corpus(folder: Path, good_per_class: int = 6) -> dict[str, Path]:
    """A custom-corpus folder holding every catalogue case (labelled happy), the two
    name cases, and ``good_per_class`` good clips per emotion (happy, sad) under
    ``folder/good``. Returns the path of each case."""
    paths = {case: write_case(folder, case) for case in CATALOGUE}
    for case, name in NAME_CASES.items():
        paths[case] = folder / name
        CATALOGUE["stereo"][0](paths[case])
    for i in range(good_per_class):
        for emotion in ("happy", "sad"):
            write_case(folder / "good", "float32", emotion).rename(
                folder / "good" / f"good{i}_{emotion}.wav"
            )
    return paths


def write_broken_only(folder: Path, paths: dict[str, Path], broken: str) -> None:
    """A custom-corpus ``folder`` with nothing usable, from the cases at ``paths``:
    ``broken="header"`` copies every file the reader rejects; ``"samples"`` writes two
    classes of NaN-sample files, which pass the reader and fail feature extraction."""
    folder.mkdir(parents=True, exist_ok=True)
    nan = paths["NaN and Inf samples"]
    if broken == "header":
        for case, path in paths.items():
            if path.is_file() and path != nan and (case in NAME_CASES or not expected_usable(case)):
                (folder / path.name).write_bytes(path.read_bytes())
    else:
        for emotion in ("happy", "sad"):
            (folder / f"nan_{emotion}.wav").write_bytes(nan.read_bytes())


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def expected_usable(case: str) -> bool:
    """Whether ``case`` holds usable audio here (the name cases do). Permission bits do
    not stop root, for whom the unreadable file is simply readable audio."""
    if case == "no read permission" and running_as_root():
        return True
    return case in NAME_CASES or CATALOGUE[case][1]


def observed(case: str, entry_point: str, outcome: str) -> None:
    """Record one verified cell of the ``inputs`` table (after asserting it). As root an
    unreadable file is readable, and its cells say so."""
    if case == "no read permission" and running_as_root():
        outcome = f"as root: {outcome}"
    record("inputs", case, entry_point, outcome)


def short(text: str, *names: object, limit: int = 70) -> str:
    """``text`` for a table cell: one line of at most ``limit`` characters, with the
    given file names or paths cut out (``<name>: `` prefixes dropped, others ``…``)."""
    for name in sorted({str(n) for n in names if n}, key=len, reverse=True):
        prefixes = (f"file {name!r}: ", f"files {name!r}: ", f"cannot open {name!r}: ", f"{name}: ")
        for form in prefixes:
            text = text.replace(form, "")
        text = text.replace(repr(name), "…").replace(name, "…")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
