"""``ser data add-custom``: convert a recording and name it so the custom reader labels it.

Names are ``<YYYYMMDD>_<HHMMSS>_<speaker>_<emotion>.wav``: the custom reader
(``ser.data.corpora.read_custom``) takes the label from the last ``_`` token and,
with ``data.custom.speaker_pattern`` set to ``SPEAKER_PATTERN``, the speaker from
the third. The time is the recording's modification time (when it was recorded,
for a file straight from a phone). Two different recordings from the same second
get ``-2``, ``-3`` ... after the time; adding the same recording again is a no-op.
"""

from __future__ import annotations

import filecmp
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ser.audio import AudioError, load_any_audio
from ser.config import EMOTIONS
from ser.data.corpora import EMOTION_SYNONYMS, canonical_emotion
from ser.datatools import DataToolError
from ser.datatools.convert import write_wav
from ser.progress import Log

# The value for data.custom.speaker_pattern that reads the speaker back from the names
# written here.
SPEAKER_PATTERN = r"^\d{8}_\d{6}(?:-\d+)?_(?P<speaker>[^_]+)_"
DEFAULT_SPEAKER = "unknown"


def emotion_label(text: str) -> str:
    """A user's emotion word -> canonical label; ``DataToolError`` listing the valid ones."""
    label = canonical_emotion(text)
    if label is None:
        synonyms = sorted(set(EMOTION_SYNONYMS) - set(EMOTIONS))
        raise DataToolError(
            f"unknown emotion {text!r}; valid: {', '.join(EMOTIONS)} "
            f"(also accepted: {', '.join(synonyms)})"
        )
    return label


def speaker_token(name: str) -> str:
    """A speaker name as one file-name token: letters, digits and ``-`` only."""
    token = re.sub(r"[^A-Za-z0-9-]+", "-", name.strip()).strip("-")
    if not token:
        raise DataToolError(
            f"--speaker {name!r}: needs at least one letter or digit (it becomes part of "
            "the file name, e.g. --speaker alice)"
        )
    return token


def custom_name(when: datetime, speaker: str, emotion: str, copy: int = 1) -> str:
    """``20190616_125714_alice_happy.wav``; ``copy`` > 1 adds ``-<copy>`` to the time."""
    stamp = when.strftime("%Y%m%d_%H%M%S") + (f"-{copy}" if copy > 1 else "")
    return f"{stamp}_{speaker}_{emotion}.wav"


@dataclass
class AddReport:
    """(source, output) for files added now or found already added; (source, reason) failed."""

    added: list[tuple[str, str]] = field(default_factory=list)
    present: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def usable(self) -> int:
        return len(self.added) + len(self.present)


def _place(
    tmp: Path, folder: Path, when: datetime, speaker: str, emotion: str
) -> tuple[Path, bool]:
    """Move ``tmp`` to the first free name; (path, True) if an identical file was there."""
    copy = 1
    while True:
        target = folder / custom_name(when, speaker, emotion, copy)
        if not target.exists():
            try:  # link-then-unlink: never replaces a file that appeared meanwhile
                os.link(tmp, target)
            except FileExistsError:
                continue
            except OSError:  # filesystems without hard links
                os.replace(tmp, target)
                return target, False
            tmp.unlink()
            return target, False
        if filecmp.cmp(tmp, target, shallow=False):
            tmp.unlink()
            return target, True
        copy += 1


def add_custom(
    files: Sequence[str | os.PathLike[str]],
    emotion: str,
    speaker: str | None = None,
    to: str | os.PathLike[str] = "data/custom",
    rate: int = 16000,
    *,
    log: Log = print,
) -> AddReport:
    """Convert each of ``files`` to a mono 16-bit WAV at ``rate`` named for the custom reader.

    Raises ``DataToolError`` for an unknown emotion or an unusable speaker name
    before touching any file; a bad recording is a warning and a ``failed`` entry.
    """
    label = emotion_label(emotion)
    who = speaker_token(speaker) if speaker is not None else DEFAULT_SPEAKER
    if speaker is not None and who != speaker.strip():
        log(f"note: speaker {speaker!r} is written as {who!r} in file names")
    folder = Path(to)
    folder.mkdir(parents=True, exist_ok=True)
    report = AddReport()
    for given in files:
        src = Path(given)
        try:
            wave = load_any_audio(src, rate)
            when = datetime.fromtimestamp(src.stat().st_mtime)
        except (AudioError, OSError) as exc:
            reason = str(exc).removeprefix(f"{src}: ")
            report.failed.append((str(src), reason))
            log(f"warning: skipped {src}: {reason}")
            continue
        fd, name = tempfile.mkstemp(dir=folder, prefix=".adding.", suffix=".wav")
        os.close(fd)
        tmp = Path(name)
        try:
            write_wav(tmp, wave, rate)
            target, present = _place(tmp, folder, when, who, label)
        except OSError as exc:
            report.failed.append((str(src), f"cannot write into {folder} ({exc.strerror or exc})"))
            log(f"warning: skipped {src}: cannot write into {folder} ({exc.strerror or exc})")
            continue
        finally:
            tmp.unlink(missing_ok=True)
        seconds = len(wave) / rate
        if present:
            report.present.append((str(src), str(target)))
            log(f"{src}: already added as {target}")
        else:
            report.added.append((str(src), str(target)))
            log(f"added {target} ({label}, speaker {who}, {seconds:.1f} s) from {src}")
    return report
