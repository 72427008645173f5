"""Corpus readers: a folder of recordings -> manifest rows (one ``Utterance`` each).

Labels, speakers and genders come from file names, parsed per corpus convention;
durations come from file headers (no decoding). A file that cannot be used becomes
a ``Skipped`` entry with the reason, never an exception, so one bad download does
not stop a run. Files are visited in sorted path order: the manifest never depends
on directory listing order.

Readers are registered in ``CORPORA`` and called as ``reader(folder, options)``
with the corpus' options from ``ser.config``. They yield ``Utterance``,
``Skipped`` (unusable file) or ``Excluded`` (deliberately left out by an option,
e.g. RAVDESS song files; counted, not warned about).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ser.audio import AudioError, audio_info
from ser.config import (
    DATA_ROOT_ENV,
    EMOTIONS,
    CustomOptions,
    DataConfig,
    EmodbOptions,
    RavdessOptions,
    TessOptions,
)
from ser.progress import Log
from ser.registry import Registry

AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .flac .ogg .oga .opus .mp3 .aiff .aif .aifc .au .snd .caf .w64 .rf64".split()
)

# Spellings seen in corpora and users' file names -> canonical ``EMOTIONS`` names.
EMOTION_SYNONYMS: dict[str, str] = {
    **{e: e for e in EMOTIONS},
    "neu": "neutral",
    "happiness": "happy",
    "hap": "happy",
    "sadness": "sad",
    "anger": "angry",
    "ang": "angry",
    "fearful": "fear",
    "afraid": "fear",
    "disgusted": "disgust",
    "surprise": "ps",
    "surprised": "ps",
    "pleasant_surprise": "ps",
    "pleasant_surprised": "ps",
    "pleasantsurprise": "ps",
    "bored": "boredom",
}

MANIFEST_FORMAT = "ser-manifest/1"


class CorpusNotFoundError(FileNotFoundError):
    """The data root or a corpus folder does not exist; the message says what to change."""


# ------------------------------------------------------------------------ records
@dataclass(frozen=True)
class Utterance:
    """One usable recording.

    ``speaker`` is globally unique (``"ravdess:01"``, ``"tess:OAF"``, ``"custom:unknown"``);
    ``duration`` is in seconds from the file header; ``info`` holds corpus-specific
    fields (RAVDESS vocal_channel, intensity, statement, repetition; TESS word;
    EMO-DB text, version).
    """

    path: str
    corpus: str
    speaker: str
    gender: str | None
    emotion: str
    duration: float
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Skipped:
    """A file that could not be used and why (unreadable, empty, unparseable name)."""

    path: str
    reason: str


@dataclass(frozen=True)
class Excluded:
    """A valid file left out on purpose by a corpus option; ``key`` is what is counted."""

    path: str
    key: str


@dataclass
class Manifest:
    """Rows kept, files skipped, and counts of rows dropped by label or option.

    ``data_root`` is set when the paths are relative to a data root (a run's saved
    manifest, see ``ser.data.prepare.save_run_data``): the absolute root they were
    relative to when saved, for information; ``None`` when the paths are absolute.
    """

    rows: list[Utterance]
    skipped: list[Skipped] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    data_root: str | None = None

    @property
    def hours(self) -> float:
        return sum(r.duration for r in self.rows) / 3600

    def counts(self, by: str | Sequence[str] = ("corpus", "emotion")) -> dict[Any, int]:
        """Row counts grouped by one field (plain keys) or several (tuple keys), sorted."""
        fields = (by,) if isinstance(by, str) else tuple(by)
        keyed = Counter(
            tuple(getattr(r, f) for f in fields) if len(fields) > 1 else getattr(r, fields[0])
            for r in self.rows
        )
        return dict(sorted(keyed.items(), key=lambda kv: str(kv[0])))

    def to_records(self) -> list[dict[str, Any]]:
        """One plain dict per row (JSON-serialisable)."""
        return [asdict(r) for r in self.rows]

    def save(self, path: str | os.PathLike[str]) -> None:
        """JSON lines: a header line (format, data root, dropped, skipped), then one row
        per line."""
        header = {
            "format": MANIFEST_FORMAT,
            "data_root": self.data_root,
            "dropped": self.dropped,
            "skipped": [asdict(s) for s in self.skipped],
        }
        lines = [json.dumps(header)] + [json.dumps(r) for r in self.to_records()]
        Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Manifest:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        header = json.loads(lines[0]) if lines else {}
        if header.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{path}: not a manifest written by Manifest.save ({MANIFEST_FORMAT})")
        return cls(
            rows=[Utterance(**json.loads(line)) for line in lines[1:] if line.strip()],
            skipped=[Skipped(**s) for s in header["skipped"]],
            dropped=dict(header["dropped"]),
            data_root=header.get("data_root"),
        )


# ------------------------------------------------------------------------ helpers
def canonical_emotion(text: str) -> str | None:
    """A label as written in a file name -> canonical emotion name, or None."""
    return EMOTION_SYNONYMS.get(text.strip().lower())


def _emotion_suffix(tokens: Sequence[str]) -> tuple[str, int] | None:
    """Emotion at the end of ``_``-split tokens -> (emotion, tokens it used).

    Two tokens are tried first because some copies spell ``pleasant_surprise`` out.
    """
    if len(tokens) >= 2 and (two := canonical_emotion("_".join(tokens[-2:]))):
        return two, 2
    if tokens and (one := canonical_emotion(tokens[-1])):
        return one, 1
    return None


def _hidden(name: str) -> bool:
    # macOS archives carry "__MACOSX/" and "._name.wav" resource forks that look
    # like audio by name but are not.
    return name.startswith(".") or name == "__MACOSX"


def walk_files(folder: Path) -> Iterator[Path]:
    """All visible files under ``folder`` (names sorted within each directory).

    Symlinked folders are followed (a corpus kept elsewhere and linked in, e.g.
    ``data/ravdess -> /mnt/corpora/ravdess`` or ``Actor_01 -> ...``); a folder whose
    real path was already visited (a link loop, or two links to one place) is walked
    once, so no file is listed twice.
    """
    visited: set[str] = set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        for name in sorted(files):
            if not _hidden(name):
                yield Path(top) / name


def audio_files(folder: Path) -> list[Path]:
    """Files under ``folder`` with an audio extension (any case), sorted by path."""
    return sorted(p for p in walk_files(folder) if p.suffix.lower() in AUDIO_EXTENSIONS)


def _utterance(
    path: Path, corpus: str, speaker: str, gender: str | None, emotion: str, **info: Any
) -> Utterance | Skipped:
    try:
        duration = audio_info(path).duration
    except AudioError as exc:
        # AudioError messages start with the path; Skipped keeps the path separately.
        return Skipped(str(path), str(exc).removeprefix(f"{path}: "))
    return Utterance(str(path), corpus, f"{corpus}:{speaker}", gender, emotion, duration, info)


# ------------------------------------------------------------------------ readers
CORPORA: Registry[Callable[[Path, Any], Iterator[Utterance | Skipped | Excluded]]] = Registry(
    "corpus"
)

_RAVDESS_NAME = re.compile(r"(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)")
_RAVDESS_EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fear",
    "07": "disgust",
    "08": "ps",
}
_RAVDESS_CHANNELS = {"01": "speech", "02": "song"}
_RAVDESS_INTENSITIES = {"01": "normal", "02": "strong"}


@CORPORA.register("ravdess")
def read_ravdess(folder: Path, options: RavdessOptions) -> Iterator[Utterance | Skipped | Excluded]:
    """``Actor_XX/03-CC-EE-II-SS-RR-AA.ext``; the actor is taken from the name, not the folder."""
    expected = "expected MM-CC-EE-II-SS-RR-AA (e.g. 03-01-05-02-01-01-12)"
    for path in audio_files(folder):
        match = _RAVDESS_NAME.fullmatch(path.stem)
        if not match:
            yield Skipped(str(path), f"not a RAVDESS file name: {expected}")
            continue
        modality, channel, emo, intensity, statement, repetition, actor = match.groups()
        if modality != "03":
            # 01/02 are the audio-video and video-only releases.
            yield Excluded(str(path), f"ravdess:modality {modality}")
            continue
        if (
            channel not in _RAVDESS_CHANNELS
            or emo not in _RAVDESS_EMOTIONS
            or intensity not in _RAVDESS_INTENSITIES
            or int(actor) == 0
        ):
            yield Skipped(str(path), f"unknown code in RAVDESS file name: {expected}")
            continue
        vocal_channel = _RAVDESS_CHANNELS[channel]
        strength = _RAVDESS_INTENSITIES[intensity]
        if vocal_channel not in options.vocal_channels:
            yield Excluded(str(path), f"ravdess:{vocal_channel}")
            continue
        if strength not in options.intensities:
            yield Excluded(str(path), f"ravdess:{strength} intensity")
            continue
        yield _utterance(
            path,
            "ravdess",
            actor,
            "male" if int(actor) % 2 else "female",
            _RAVDESS_EMOTIONS[emo],
            vocal_channel=vocal_channel,
            intensity=strength,
            statement=int(statement),
            repetition=int(repetition),
        )


# The original TESS release names one OAF file "OA_bite_neutral".
_TESS_SPEAKER_ALIASES = {"OA": "OAF"}


@CORPORA.register("tess")
def read_tess(folder: Path, options: TessOptions) -> Iterator[Utterance | Skipped | Excluded]:
    """``[OAF_angry/]OAF_back_angry.ext``: speaker, word, emotion (``ps`` may be spelled out)."""
    for path in audio_files(folder):
        tokens = path.stem.split("_")
        found = _emotion_suffix(tokens)
        if len(tokens) < 3 or found is None or len(tokens) - found[1] < 2:
            yield Skipped(
                str(path),
                "not a TESS file name: expected SPEAKER_WORD_EMOTION (e.g. OAF_back_angry) "
                f"with EMOTION one of {', '.join(sorted(EMOTION_SYNONYMS))}",
            )
            continue
        emotion, used = found
        speaker = tokens[0].upper()
        speaker = _TESS_SPEAKER_ALIASES.get(speaker, speaker)
        word = "_".join(tokens[1:-used]).lower()
        yield _utterance(path, "tess", speaker, "female", emotion, word=word)


_EMODB_NAME = re.compile(r"(\d\d)([a-z]\d\d)([a-z])([a-z])", re.IGNORECASE)
_EMODB_EMOTIONS = {
    "W": "angry",
    "L": "boredom",
    "E": "disgust",
    "A": "fear",
    "F": "happy",
    "T": "sad",
    "N": "neutral",
}
_EMODB_GENDERS = {
    **dict.fromkeys(("03", "10", "11", "12", "15"), "male"),
    **dict.fromkeys(("08", "09", "13", "14", "16"), "female"),
}


@CORPORA.register("emodb")
def read_emodb(folder: Path, options: EmodbOptions) -> Iterator[Utterance | Skipped | Excluded]:
    """``03a01Fa.ext``: speaker (2 digits), text code, emotion letter, version letter."""
    for path in audio_files(folder):
        match = _EMODB_NAME.fullmatch(path.stem)
        letter = match.group(3).upper() if match else ""
        if letter not in _EMODB_EMOTIONS:
            yield Skipped(
                str(path),
                "not an EMO-DB file name: expected SSTTTEV (e.g. 03a01Fa) with emotion letter "
                f"E one of {''.join(_EMODB_EMOTIONS)}",
            )
            continue
        speaker, text, _, version = match.groups()  # type: ignore[union-attr]
        yield _utterance(
            path,
            "emodb",
            speaker,
            _EMODB_GENDERS.get(speaker),
            _EMODB_EMOTIONS[letter],
            text=text.lower(),
            version=version.lower(),
        )


@CORPORA.register("custom")
def read_custom(folder: Path, options: CustomOptions) -> Iterator[Utterance | Skipped | Excluded]:
    """Any audio file whose stem ends in ``_<emotion>`` (synonyms accepted).

    The speaker is the ``speaker`` group of ``options.speaker_pattern`` searched in
    the stem, or ``unknown``.
    """
    pattern = None
    if options.speaker_pattern:
        try:
            pattern = re.compile(options.speaker_pattern)
        except re.error as exc:
            raise ValueError(
                f"data.custom.speaker_pattern {options.speaker_pattern!r}: invalid regex ({exc})"
            ) from None
        if "speaker" not in pattern.groupindex:
            raise ValueError(
                f"data.custom.speaker_pattern {options.speaker_pattern!r} "
                "has no (?P<speaker>...) group"
            )
    for path in audio_files(folder):
        found = _emotion_suffix(path.stem.split("_"))
        if found is None:
            yield Skipped(
                str(path),
                f"file name does not end in _<emotion> (last token {path.stem.split('_')[-1]!r}, "
                "expected e.g. recording3_angry.wav); valid labels: "
                + ", ".join(sorted(EMOTION_SYNONYMS)),
            )
            continue
        match = pattern.search(path.stem) if pattern else None
        speaker = (match.group("speaker") if match else None) or "unknown"
        yield _utterance(path, "custom", speaker, None, found[0])


# ----------------------------------------------------------------------- manifest
def folder_names(data: DataConfig, corpus: str) -> dict[str | None, str]:
    """Where ``corpus`` is read from, relative to ``data.root``: ``{None: folder}``, or for
    the custom corpus in the folders layout ``{"train": train_folder, "test": test_folder}``
    (the key is the split part the folder's rows belong to)."""
    if corpus == "custom" and (parts := data.custom.split_folders):
        return dict(parts)
    return {None: getattr(data, corpus).folder}


def corpus_folders(data: DataConfig, corpus: str) -> dict[str | None, Path]:
    """``folder_names`` under ``data.root``, absolute; raises CorpusNotFoundError if missing."""
    root = Path(data.root).absolute()
    if not root.is_dir():
        raise CorpusNotFoundError(
            f"data root {root} does not exist; set data.root in the config "
            f"or the {DATA_ROOT_ENV} environment variable"
        )
    folders = {}
    for part, name in folder_names(data, corpus).items():
        folder = root / name
        key = f"data.{corpus}.{part}_folder" if part else f"data.{corpus}.folder"
        if not folder.is_dir():
            raise CorpusNotFoundError(
                f"{corpus} folder {folder} does not exist; set {key} (relative to "
                f"data.root) or data.root / {DATA_ROOT_ENV}, or remove {corpus!r} from data.corpora"
            )
        folders[part] = folder
    return folders


def _ignored(folder: Path) -> Counter[str]:
    return Counter(
        p.suffix.lower() or "(no extension)"
        for p in walk_files(folder)
        if p.suffix.lower() not in AUDIO_EXTENSIONS
    )


def _counts(counter: Iterable[tuple[str, int]]) -> str:
    return ", ".join(f"{key} {n}" for key, n in sorted(counter)) or "none"


@dataclass
class _CorpusRead:
    """What reading one corpus folder gave: rows kept, files skipped, counts dropped."""

    kept: list[Utterance] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)


def _read_folder(
    data: DataConfig, corpus: str, folder: Path, part: str | None, log: Log
) -> _CorpusRead:
    """Read one folder of ``corpus``, keeping rows whose emotion is wanted, and log it.

    ``part`` (the custom corpus's folders layout) is recorded in each row's ``info``.
    """
    wanted = set(data.emotions)
    read = _CorpusRead()
    for item in CORPORA.get(corpus)(folder, getattr(data, corpus)):
        if isinstance(item, Skipped):
            read.skipped.append(item)
        elif isinstance(item, Excluded):
            read.dropped[item.key] += 1
        elif item.emotion not in wanted:
            read.dropped[item.emotion] += 1
        else:
            read.kept.append(replace(item, info={**item.info, "part": part}) if part else item)
    hours = sum(r.duration for r in read.kept) / 3600
    name = f"{corpus} ({part} folder)" if part else corpus
    log(
        f"{name}: {len(read.kept)} rows, {len({r.speaker for r in read.kept})} speakers, "
        f"{hours:.2f} h from {folder}; dropped: {_counts(read.dropped.items())}; "
        f"skipped {len(read.skipped)}"
    )
    for s in read.skipped:
        log(f"warning: {corpus}: skipped {s.path}: {s.reason}")
    if ignored := _ignored(folder):
        log(f"{name}: ignored non-audio files: {_counts(ignored.items())}")
    return read


def build_manifest(data: DataConfig, log: Log = print) -> Manifest:
    """Read every configured corpus; keep rows whose emotion is in ``data.emotions``."""
    manifest = Manifest(rows=[], skipped=[], dropped={})
    dropped: Counter[str] = Counter()
    for corpus in data.corpora:
        for part, folder in corpus_folders(data, corpus).items():
            read = _read_folder(data, corpus, folder, part, log)
            manifest.rows.extend(read.kept)
            manifest.skipped.extend(read.skipped)
            dropped.update(read.dropped)
    manifest.dropped = dict(sorted(dropped.items()))
    log(
        f"manifest: {len(manifest.rows)} rows, {manifest.hours:.2f} h, "
        f"{len(manifest.skipped)} files skipped"
    )
    return manifest
