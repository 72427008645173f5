"""Speaker-independent splits and folds of a manifest (and the labelled exceptions).

A ``Split`` is data: speaker lists (plus, where unavoidable, utterance paths) that
are saved with a run and re-applied with ``Split.partition``. Every method except
``random`` keeps each speaker in exactly one of train / validation / test, and
``folders`` (the custom corpus's fixed train and test folders) does when its speakers
are known; otherwise it is speaker-dependent and says so.

Speakers are drawn per corpus so every corpus is represented in test; each
corpus gets its own generator derived from (seed, corpus), so adding a corpus
does not reshuffle the others. A corpus with fewer than three speakers (TESS has
two) cannot spare a validation speaker: its validation set is then a stratified
sample of its training speakers' utterances, and the split says so
(``val_speaker_independent=False``).
"""

from __future__ import annotations

import math
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, fields
from itertools import combinations
from typing import Any

import numpy as np

from ser.config import SplitConfig
from ser.data.corpora import Utterance

METHODS = ("speaker", "explicit", "kfold", "loso", "random", "folders")
# Methods whose split may be speaker-dependent: random always, folders unless the
# folders' speakers are known and disjoint.
SPEAKER_DEPENDENT_METHODS = ("random", "folders")
PARTS = ("train", "val", "test")


class SplitError(ValueError):
    """A split that cannot be made or applied; the message says why and what to change."""


@dataclass(frozen=True)
class Split:
    """Which speakers (or, for ``random``, which utterances) go to train / val / test.

    ``val_paths`` are validation utterances taken from training speakers (only for
    corpora too small to hold out a validation speaker), or the validation
    utterances of a ``random`` split; ``test_paths`` is used by ``random`` only.
    ``fold`` is 0-based. ``data_root`` is set when the paths are relative to a data
    root (a run's saved ``split.json``): the absolute root they were relative to when
    saved, for information; ``None`` when the paths are absolute.
    """

    method: str
    speaker_independent: bool
    train_speakers: tuple[str, ...]
    val_speakers: tuple[str, ...]
    test_speakers: tuple[str, ...]
    val_paths: tuple[str, ...] = ()
    test_paths: tuple[str, ...] = ()
    fold: int | None = None
    folds: int | None = None
    seed: int = 0
    val_speaker_independent: bool = True
    data_root: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SplitError(f"unknown split method {self.method!r}; valid: {', '.join(METHODS)}")
        if (
            self.method == "random"
            and self.speaker_independent
            or not (self.speaker_independent or self.method in SPEAKER_DEPENDENT_METHODS)
        ):
            raise SplitError(
                f"method {self.method!r} with speaker_independent={self.speaker_independent}"
            )
        if self.speaker_independent:
            lists = {
                "train": self.train_speakers,
                "val": self.val_speakers,
                "test": self.test_speakers,
            }
            for (a, sa), (b, sb) in combinations(lists.items(), 2):
                if shared := sorted(set(sa) & set(sb)):
                    raise SplitError(f"speakers in both {a} and {b}: {', '.join(shared)}")
        if shared := sorted(set(self.val_paths) & set(self.test_paths)):
            raise SplitError(f"{len(shared)} paths in both val and test, e.g. {shared[0]}")
        if self.fold is not None and not (self.folds and 0 <= self.fold < self.folds):
            raise SplitError(f"fold {self.fold} is not in 0..{(self.folds or 0) - 1}")

    def partition(self, rows: Sequence[Utterance]) -> dict[str, list[Utterance]]:
        """``{"train", "val", "test"} -> rows``, input order kept; each row lands in one part.

        Raises ``SplitError`` if a row's speaker is in none of the split's lists (the
        data changed since the split was made).
        """
        parts: dict[str, list[Utterance]] = {part: [] for part in PARTS}
        test, val, train = set(self.test_speakers), set(self.val_speakers), set(self.train_speakers)
        test_paths, val_paths = set(self.test_paths), set(self.val_paths)
        unknown: set[str] = set()
        for row in rows:
            if not (row.speaker in train or row.speaker in val or row.speaker in test):
                unknown.add(row.speaker)
            elif not self.speaker_independent:
                if row.path in test_paths:
                    parts["test"].append(row)
                elif row.path in val_paths:
                    parts["val"].append(row)
                else:
                    parts["train"].append(row)
            elif row.speaker in test:
                parts["test"].append(row)
            elif row.speaker in val or row.path in val_paths:
                parts["val"].append(row)
            else:
                parts["train"].append(row)
        if unknown:
            names = sorted(unknown)
            raise SplitError(
                f"{len(names)} speaker(s) not in this split: {', '.join(names[:10])}"
                f"{' ...' if len(names) > 10 else ''}; the manifest differs from the one the split "
                "was made from (check data.corpora / data.root) or make a new split"
            )
        return parts

    def protocol(self) -> str:
        """One human-readable line describing how test and validation were chosen."""
        if not self.speaker_independent and self.method == "folders":
            return (
                f"SPEAKER-DEPENDENT split by folders (seed {self.seed}): test = the "
                f"{len(self.test_paths)} clips of the test folder; validation = "
                f"{len(self.val_paths)} clips of the training folder; speakers are unknown or "
                "shared, so test speakers may have been heard in training"
            )
        if not self.speaker_independent:
            return (
                f"SPEAKER-DEPENDENT random stratified split (seed {self.seed}): "
                "the same speakers appear in train and test"
            )
        how = f"{self.method} split"
        if self.fold is not None:
            how += f", fold {self.fold} of 0..{self.folds - 1}"  # type: ignore[operator]
        line = (
            f"speaker-independent ({how}, seed {self.seed}): "
            f"test speakers {', '.join(self.test_speakers)}; "
            f"validation speakers {', '.join(self.val_speakers) or 'none'}"
        )
        if self.val_paths:
            line += f"; validation utterances from training speakers: {len(self.val_paths)}"
        return line

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable; ``Split.from_dict`` inverts it."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in fields(self)
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Split:
        names = {f.name for f in fields(cls)}
        if unknown := sorted(set(d) - names):
            raise SplitError(f"unknown split keys {unknown}; valid: {', '.join(sorted(names))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# ------------------------------------------------------------------------ helpers
def _rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator for one draw, derived from the seed and stable names (crc32, not hash())."""
    return np.random.default_rng([seed % 2**32, *(zlib.crc32(k.encode()) for k in keys)])


def _round(x: float) -> int:
    # Half up, not Python's half-to-even: 2.5 speakers -> 3.
    return math.floor(x + 0.5)


def _speakers(rows: Sequence[Utterance]) -> dict[str, list[str]]:
    """corpus -> sorted speakers, corpora sorted."""
    by_corpus: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        by_corpus[r.corpus].add(r.speaker)
    return {c: sorted(by_corpus[c]) for c in sorted(by_corpus)}


def _gender_groups(
    speakers: list[str], genders: dict[str, str | None], rng: np.random.Generator
) -> list[list[str]]:
    """Speakers shuffled, grouped by gender (groups in order of first appearance)."""
    groups: dict[str | None, list[str]] = {}
    for i in rng.permutation(len(speakers)):
        groups.setdefault(genders.get(speakers[i]), []).append(speakers[i])
    return list(groups.values())


def _interleave(groups: list[list[str]]) -> list[str]:
    """Round-robin over groups: m, f, m, f, ... so any prefix is gender-balanced."""
    return [g[i] for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]


def _genders(rows: Sequence[Utterance]) -> dict[str, str | None]:
    seen: dict[str, Counter[str | None]] = defaultdict(Counter)
    for r in rows:
        seen[r.speaker][r.gender] += 1
    return {s: c.most_common(1)[0][0] for s, c in seen.items()}


def _balanced_order(rows: Sequence[Utterance], seed: int, tag: str) -> dict[str, list[str]]:
    """corpus -> its speakers shuffled and gender-interleaved (a prefix is a fair draw)."""
    genders = _genders(rows)
    return {
        corpus: _interleave(_gender_groups(speakers, genders, _rng(seed, tag, corpus)))
        for corpus, speakers in _speakers(rows).items()
    }


def _stratified_sample(
    rows: Sequence[Utterance],
    fraction: float,
    rng: np.random.Generator,
    key: Callable[[Utterance], Hashable],
) -> list[Utterance]:
    """``round(len(rows) * fraction)`` rows (at least 1, never all), proportional per stratum.

    Quotas use largest remainders (ties broken at random) so small strata are not
    rounded away wholesale.
    """
    n = len(rows)
    if n < 2:
        return []
    total = min(n - 1, max(1, _round(n * fraction)))
    groups: dict[Hashable, list[Utterance]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r.path):
        groups[key(r)].append(r)
    keys = sorted(groups, key=str)
    exact = [len(groups[k]) * total / n for k in keys]
    quota = [math.floor(e) for e in exact]
    tiebreak = rng.random(len(keys))
    by_remainder = sorted(range(len(keys)), key=lambda i: (quota[i] - exact[i], tiebreak[i]))
    for i in by_remainder[: total - sum(quota)]:
        quota[i] += 1
    picked: list[Utterance] = []
    for k, q in zip(keys, quota, strict=True):
        group = groups[k]
        picked += [group[i] for i in sorted(rng.permutation(len(group))[:q])]
    return picked


def _with_validation(
    rows: Sequence[Utterance],
    method: str,
    test: list[str],
    remaining: dict[str, list[str]],
    cfg: SplitConfig,
    seed: int,
    fold: int | None = None,
    folds: int | None = None,
) -> Split:
    """Complete a split whose test speakers are chosen: draw validation per corpus.

    ``remaining`` maps corpus -> its non-test speakers in draw order. A corpus of n
    speakers gives ``round(n * val_fraction)`` validation speakers, at least one
    when n >= 3, always leaving one for training; if that is zero, its training
    speakers' utterances are sampled instead.
    """
    sizes = {c: len(s) for c, s in _speakers(rows).items()}
    val: list[str] = []
    train: list[str] = []
    val_paths: list[str] = []
    for corpus, order in remaining.items():
        if not order:
            continue
        n = sizes[corpus]
        n_val = _round(n * cfg.val_fraction)
        if n >= 3:
            n_val = max(1, n_val)
        n_val = min(n_val, len(order) - 1)
        val += order[:n_val]
        train += order[n_val:]
        if n_val == 0:
            kept = set(order)
            pool = [r for r in rows if r.speaker in kept]
            rng = _rng(seed, "val", corpus, str(fold))
            sample = _stratified_sample(
                pool, cfg.val_fraction, rng, lambda r: (r.speaker, r.emotion)
            )
            val_paths += [r.path for r in sample]
    if not train:
        raise SplitError(f"{method} split leaves no training speakers; lower split.test_fraction")
    return Split(
        method=method,
        speaker_independent=True,
        train_speakers=tuple(sorted(train)),
        val_speakers=tuple(sorted(val)),
        test_speakers=tuple(sorted(test)),
        val_paths=tuple(sorted(val_paths)),
        fold=fold,
        folds=folds,
        seed=seed,
        val_speaker_independent=not val_paths,
    )


# ------------------------------------------------------------------------ methods
def _speaker_split(rows: Sequence[Utterance], cfg: SplitConfig, seed: int) -> Split:
    test: list[str] = []
    remaining: dict[str, list[str]] = {}
    for corpus, order in _balanced_order(rows, seed, "speaker").items():
        n = len(order)
        if n < 2:
            hint = " or set data.custom.speaker_pattern" if corpus == "custom" else ""
            raise SplitError(
                f"corpus {corpus!r} has a single speaker ({order[0]}) and cannot be split "
                f"speaker-independently; use split.method=random (speaker-dependent){hint}"
            )
        n_test = min(max(1, _round(n * cfg.test_fraction)), n - 1)
        test += order[:n_test]
        remaining[corpus] = order[n_test:]
    return _with_validation(rows, "speaker", test, remaining, cfg, seed)


def _check_names(what: str, names: Sequence[str], known: list[str]) -> None:
    if unknown := [s for s in names if s not in set(known)]:
        raise SplitError(
            f"{what}: unknown speaker(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )


def _explicit_split(rows: Sequence[Utterance], cfg: SplitConfig, seed: int) -> Split:
    known = sorted({r.speaker for r in rows})
    test = list(dict.fromkeys(cfg.test_speakers))
    val = list(dict.fromkeys(cfg.val_speakers))
    if not test:
        raise SplitError("split.method=explicit needs split.test_speakers (e.g. ['ravdess:01'])")
    _check_names("split.test_speakers", test, known)
    _check_names("split.val_speakers", val, known)
    if both := sorted(set(test) & set(val)):
        raise SplitError(f"split.test_speakers and split.val_speakers share {', '.join(both)}")
    if val:
        train = [s for s in known if s not in set(test) | set(val)]
        if not train:
            raise SplitError("split.test_speakers and split.val_speakers leave no training speaker")
        return Split(
            "explicit", True, tuple(train), tuple(sorted(val)), tuple(sorted(test)), seed=seed
        )
    remaining = {
        corpus: [s for s in order if s not in test]
        for corpus, order in _balanced_order(rows, seed, "explicit").items()
    }
    return _with_validation(rows, "explicit", test, remaining, cfg, seed)


def _fold_of(rows: Sequence[Utterance], folds: int, seed: int) -> dict[str, int]:
    """Speaker -> fold: round-robin within each corpus' gender groups, continuing the
    count across corpora so folds stay equal in size and small corpora spread out."""
    genders = _genders(rows)
    assignment: dict[str, int] = {}
    for corpus, speakers in _speakers(rows).items():
        for group in _gender_groups(speakers, genders, _rng(seed, "kfold", corpus)):
            for speaker in group:
                assignment[speaker] = len(assignment) % folds
    return assignment


def _kfold_split(rows: Sequence[Utterance], cfg: SplitConfig, seed: int, fold: int) -> Split:
    n = len({r.speaker for r in rows})
    if n < cfg.folds:
        raise SplitError(
            f"split.folds={cfg.folds} needs at least {cfg.folds} speakers; the data has {n}"
        )
    if not 0 <= fold < cfg.folds:
        raise SplitError(
            f"split.fold={fold} must be in 0..{cfg.folds - 1} (split.folds={cfg.folds})"
        )
    fold_of = _fold_of(rows, cfg.folds, seed)
    test = sorted(s for s, f in fold_of.items() if f == fold)
    remaining = {
        corpus: [s for s in order if fold_of[s] != fold]
        for corpus, order in _balanced_order(rows, seed, "kfold-val").items()
    }
    return _with_validation(rows, "kfold", test, remaining, cfg, seed, fold, cfg.folds)


def _loso_split(rows: Sequence[Utterance], cfg: SplitConfig, seed: int, fold: int) -> Split:
    speakers = sorted({r.speaker for r in rows})
    if not 0 <= fold < len(speakers):
        raise SplitError(
            f"split.fold={fold}: leave-one-speaker-out has one fold per speaker, "
            f"0..{len(speakers) - 1}"
        )
    test = speakers[fold]
    remaining = {
        corpus: [s for s in order if s != test]
        for corpus, order in _balanced_order(rows, seed, "loso-val").items()
    }
    return _with_validation(rows, "loso", [test], remaining, cfg, seed, fold, len(speakers))


def _random_split(rows: Sequence[Utterance], cfg: SplitConfig, seed: int) -> Split:
    def stratum(r: Utterance) -> tuple[str, str]:
        return r.corpus, r.emotion

    test = _stratified_sample(rows, cfg.test_fraction, _rng(seed, "random-test"), stratum)
    test_paths = {r.path for r in test}
    rest = [r for r in rows if r.path not in test_paths]
    val = _stratified_sample(rest, cfg.val_fraction, _rng(seed, "random-val"), stratum)
    val_paths = {r.path for r in val}
    train = [r for r in rest if r.path not in val_paths]
    return Split(
        method="random",
        speaker_independent=False,
        train_speakers=tuple(sorted({r.speaker for r in train})),
        val_speakers=tuple(sorted({r.speaker for r in val})),
        test_speakers=tuple(sorted({r.speaker for r in test})),
        val_paths=tuple(sorted(val_paths)),
        test_paths=tuple(sorted(test_paths)),
        seed=seed,
        val_speaker_independent=False,
    )


def _folder_parts(rows: Sequence[Utterance]) -> tuple[list[Utterance], list[Utterance]]:
    """The rows of the training folder and of the test folder (``info["part"]``)."""
    parts: dict[str, list[Utterance]] = {"train": [], "test": []}
    for r in rows:
        part = r.info.get("part")
        if part not in parts:
            raise SplitError(
                f"split.method=folders: {r.path} comes from no train/test folder; set "
                "data.custom.train_folder and data.custom.test_folder and data.corpora: [custom]"
            )
        parts[part].append(r)
    for part, found in parts.items():
        if not found:
            raise SplitError(
                f"split.method=folders: the {part} folder (data.custom.{part}_folder) "
                "has no usable clips"
            )
    return parts["train"], parts["test"]


def _folders_split(rows: Sequence[Utterance], cfg: SplitConfig, seed: int) -> Split:
    """Test = the test folder; validation from the training folder. Speaker-independent
    only when every speaker is known (``data.custom.speaker_pattern``) and no speaker is
    in both folders; otherwise validation clips are a stratified sample of the training
    folder and the split is speaker-dependent."""
    train_rows, test_rows = _folder_parts(rows)
    test = sorted({r.speaker for r in test_rows})
    train_side = {r.speaker for r in train_rows}
    known = not any(s.endswith(":unknown") for s in train_side.union(test))
    if known and not train_side.intersection(test):
        remaining = {
            corpus: [s for s in order if s in train_side]
            for corpus, order in _balanced_order(rows, seed, "folders").items()
        }
        return _with_validation(rows, "folders", test, remaining, cfg, seed)
    val = _stratified_sample(
        train_rows, cfg.val_fraction, _rng(seed, "folders-val"), lambda r: r.emotion
    )
    val_paths = {r.path for r in val}
    return Split(
        method="folders",
        speaker_independent=False,
        train_speakers=tuple(sorted({r.speaker for r in train_rows if r.path not in val_paths})),
        val_speakers=tuple(sorted({r.speaker for r in val})),
        test_speakers=tuple(test),
        val_paths=tuple(sorted(val_paths)),
        test_paths=tuple(sorted(r.path for r in test_rows)),
        seed=seed,
        val_speaker_independent=False,
    )


# ------------------------------------------------------------------------- public
def make_split(rows: Sequence[Utterance], cfg: SplitConfig, seed: int) -> Split:
    """The split ``cfg.method`` describes (for kfold / loso: fold ``cfg.fold``)."""
    if not rows:
        raise SplitError("cannot split an empty manifest")
    if cfg.method == "speaker":
        return _speaker_split(rows, cfg, seed)
    if cfg.method == "explicit":
        return _explicit_split(rows, cfg, seed)
    if cfg.method == "kfold":
        return _kfold_split(rows, cfg, seed, cfg.fold)
    if cfg.method == "loso":
        return _loso_split(rows, cfg, seed, cfg.fold)
    if cfg.method == "random":
        return _random_split(rows, cfg, seed)
    if cfg.method == "folders":
        return _folders_split(rows, cfg, seed)
    raise SplitError(f"unknown split method {cfg.method!r}; valid: {', '.join(METHODS)}")


def cap_speaker_clips(rows: Sequence[Utterance], cap: int, seed: int) -> list[Utterance]:
    """``rows`` with at most ``cap`` clips of each speaker, input order kept.

    A speaker over the cap keeps clips taken from each of their emotions in turn (the
    order within an emotion shuffled by a generator of (seed, speaker)), so the kept
    clips are as evenly spread over emotions as the speaker's clips allow; the same
    rows, cap and seed always keep the same clips.
    """
    by_speaker: dict[str, list[Utterance]] = defaultdict(list)
    for row in rows:
        by_speaker[row.speaker].append(row)
    kept: set[str] = set()
    for speaker, clips in by_speaker.items():
        if len(clips) <= cap:
            kept.update(r.path for r in clips)
            continue
        rng = _rng(seed, "cap", speaker)
        by_emotion: dict[str, list[str]] = defaultdict(list)
        for row in clips:
            by_emotion[row.emotion].append(row.path)
        queues = [[str(p) for p in rng.permutation(by_emotion[e])] for e in sorted(by_emotion)]
        taken: list[str] = []
        while len(taken) < cap:
            taken += [q.pop() for q in queues if q][: cap - len(taken)]
        kept.update(taken)
    return [r for r in rows if r.path in kept]


def make_folds(rows: Sequence[Utterance], cfg: SplitConfig, seed: int) -> list[Split]:
    """All folds: ``cfg.folds`` for kfold, one per speaker (sorted) for loso.

    Other methods have a single split, returned as a one-element list so callers
    can loop over folds regardless of method.
    """
    if cfg.method == "kfold":
        return [_kfold_split(rows, cfg, seed, k) for k in range(cfg.folds)]
    if cfg.method == "loso":
        n = len({r.speaker for r in rows})
        return [_loso_split(rows, cfg, seed, k) for k in range(n)]
    return [make_split(rows, cfg, seed)]
