"""From a config (or a saved run) to model inputs: manifest -> split -> cached features.

``prepare_data`` is the one path from corpora to the arrays a model sees, shared by
training, evaluation, cross-validation and the benchmarks: it builds (or takes) the
manifest and the split, extracts features through the cache, applies the configured
normalisation scope, turns each clip into a model input (a frame sequence or a pooled
vector) and its label into an integer target. ``locate_corpus`` moves a saved run's
manifest and split to wherever the corpora are now, so a run trained on one machine
evaluates on another; ``save_run_data`` saves them with paths relative to the data root
so that only the new data root is needed there.
"""

from __future__ import annotations

import functools
import json
import os
import zlib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ser import runs
from ser.audio import load_audio
from ser.config import DATA_ROOT_ENV, EMOTIONS, Config, ConfigError, DataConfig
from ser.data.corpora import (
    CorpusNotFoundError,
    Manifest,
    Utterance,
    build_manifest,
    folder_names,
)
from ser.data.pipeline import (
    Normaliser,
    max_frames_for,
    scope_normalise,
    served_copies,
    speaker_normalise_vectors,
    speaker_prior,
    to_model_input,
)
from ser.data.splits import PARTS, Split, cap_speaker_clips, make_split
from ser.features.cache import ExtractionReport, extract_all
from ser.progress import Log

if TYPE_CHECKING:  # ser.perturb imports scipy's signal module: loaded when used
    from ser.perturb import Babble, Condition


@dataclass
class PreparedData:
    """Everything between the config and the tf.data datasets of one split."""

    manifest: Manifest
    split: Split
    labels: list[str]
    rows: dict[str, list[Utterance]]
    inputs: dict[str, list[np.ndarray]]
    targets: dict[str, np.ndarray]
    extraction: ExtractionReport
    failed: list[tuple[str, str]] = field(default_factory=list)
    # Frame-level features [frames, dims] by path (evaluation pools them for baselines).
    features: dict[str, np.ndarray] = field(default_factory=dict)
    # features.pooled_normalisation speaker: the average training speaker's statistics
    # of the raw pooled vectors, for clips whose speaker is unknown (inference).
    speaker_prior: Normaliser | None = None
    # augment.session_copies: training vectors normalised as served clips would be
    # (``served_copies``), and augment.served_frames: training frames normalised by the
    # frame prior, with their targets; training fits on them beside ``inputs``.
    served_train: tuple[list[np.ndarray], np.ndarray] | None = None
    # Sequence mode with features.normalisation speaker: the average training speaker's
    # frame statistics (``frame_speaker_prior``), which a served clip is normalised by.
    frame_prior: Normaliser | None = None
    # With keep_features: the frame features before any normalisation, by path.
    raw_features: dict[str, np.ndarray] = field(default_factory=dict)
    # Training clips before any copy (``rows["train"]`` holds their condition copies
    # after them; ``served_train`` its served copies): what ``train.epoch_size: clips`` counts.
    train_clips: int = 0

    @property
    def input_dim(self) -> int:
        return int(self.inputs["train"][0].shape[-1])


def label_list(rows: list[Utterance], emotions: list[str]) -> list[str]:
    """Labels in canonical order: configured emotions that occur in the data."""
    present = {r.emotion for r in rows}
    return [e for e in EMOTIONS if e in emotions and e in present]


def extract_manifest_features(
    cfg: Config, manifest: Manifest, log: Log
) -> tuple[dict, ExtractionReport]:
    """Frame features of every manifest row (through the cache), normalised in the
    configured scope (``features.normalisation``)."""
    features, report = raw_manifest_features(cfg, manifest, log)
    return scope_normalise(features, manifest.rows, cfg.features.normalisation), report


def raw_manifest_features(
    cfg: Config, manifest: Manifest, log: Log
) -> tuple[dict, ExtractionReport]:
    """Frame features of every manifest row through the cache, before normalisation."""
    features, report = extract_all(
        [r.path for r in manifest.rows],
        cfg.features,
        cfg.data.sample_rate,
        workers=cfg.features.workers,
        cache_dir=cfg.features.cache_dir,
        log=log,
    )
    log(report.summary())
    return features, report


@dataclass(frozen=True)
class ExtractedManifest:
    """A config's manifest with every row's raw frame features and the extraction
    report (``fill_feature_cache``), which ``prepare_data`` takes instead of extracting.
    ``prepare_data`` takes the features over (``features`` is left empty), so the raw
    frames are not held through training by whoever made this."""

    manifest: Manifest
    features: dict[str, np.ndarray]
    report: ExtractionReport


def fill_feature_cache(cfg: Config, log: Log = print) -> ExtractedManifest:
    """``cfg``'s manifest, with every clip's frame features extracted into the cache.

    ``ser train`` calls this before it imports TensorFlow, so the extraction workers
    are forked from a process that has librosa loaded instead of spawned (each spawned
    worker spends about 2.5 s importing it); training then uses the features returned.
    """
    manifest = build_manifest(cfg.data, log=log)
    if not manifest.rows:  # prepare_data says so
        return ExtractedManifest(manifest, {}, ExtractionReport(0, 0, 0))
    return ExtractedManifest(manifest, *raw_manifest_features(cfg, manifest, log))


def frame_speaker_prior(
    cfg: Config, features: dict[str, np.ndarray], train: list[Utterance]
) -> Normaliser | None:
    """With ``features.normalisation: speaker`` in sequence mode, the average training
    speaker's frame statistics (``speaker_prior`` over each speaker's raw frames): what
    a served clip, whose speaker is unknown, is normalised by. None otherwise."""
    if not cfg.features.speaker_normalised_frames:
        return None
    named = [r for r in train if r.path in features and not r.speaker.endswith(":unknown")]
    if not named:
        return None
    return speaker_prior([features[r.path] for r in named], [r.speaker for r in named])


def _served_training_frames(
    cfg: Config,
    raw: dict[str, np.ndarray],
    rows: list[Utterance],
    targets: np.ndarray,
    prior: Normaliser,
    max_frames: int,
) -> tuple[list[np.ndarray], np.ndarray]:
    """``augment.served_frames``: each training clip's raw frames (its copies in recording
    conditions included) normalised as a served clip's are, by the average clean training
    speaker, as model inputs, with their targets."""
    f = cfg.features
    # Cropped, then normalised (frame by frame, so the same numbers): only the window is copied.
    inputs = [prior.apply(to_model_input(raw[r.path], f.mode, f.pooling, max_frames)) for r in rows]
    return inputs, targets.copy()


def _check_no_part_empty(
    rows: dict[str, list[Utterance]], features: dict, report: ExtractionReport
) -> None:
    """Raise naming the first empty part, or that every clip failed extraction."""
    for part in PARTS:
        if rows[part]:
            continue
        if report.failed and not features:
            raise RuntimeError(
                f"no usable clips: all {len(report.failed)} failed feature extraction "
                f"(first: {report.failed[0][0]}: {report.failed[0][1]})"
            )
        failed = f" ({len(report.failed)} clips failed feature extraction)" if report.failed else ""
        raise RuntimeError(
            f"the {part} split is empty{failed}; check data.corpora and split settings"
        )


def _normalise_by_speaker(
    inputs: dict[str, list[np.ndarray]], rows: dict[str, list[Utterance]]
) -> tuple[dict[str, list[np.ndarray]], Normaliser]:
    """Each speaker's pooled vectors z-normalised by that speaker's statistics (every
    part alike, label-free), and the average training speaker's statistics."""
    prior = speaker_prior(inputs["train"], [r.speaker for r in rows["train"]])
    every = [r for part in PARTS for r in rows[part]]
    normalised = iter(
        speaker_normalise_vectors([x for p in PARTS for x in inputs[p]], [r.speaker for r in every])
    )
    return {p: [next(normalised) for _ in rows[p]] for p in PARTS}, prior


# Joins a clip's path or speaker to the recording condition of its augmented copy.
CONDITION_MARK = "@"


def augment_conditions(cfg: Config, babble: Babble | None = None) -> list[Condition]:
    """``augment.conditions`` parsed (none: ``[]``); ``ConfigError`` naming the field when
    one is unknown or needs a tool that is missing (Opus, or MP3 where soundfile cannot
    write it, without ffmpeg). ``ser train`` calls it before any work, so such a config
    fails in its first second."""
    from ser.perturb import ConditionError, parse_conditions

    if not cfg.augment.conditions:
        return []
    try:
        return parse_conditions(cfg.augment.conditions, seed=cfg.seed, babble=babble)
    except ConditionError as exc:
        raise ConfigError(f"augment.conditions: {exc}") from None


def _condition_copies(
    cfg: Config, train: list[Utterance], max_frames: int, log: Log
) -> tuple[list[Utterance], list[np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``augment.condition_copies`` copies of each training clip, each in a recording
    condition drawn (seeded by ``cfg.seed`` and the clip's file name) from
    ``augment.conditions``: their rows
    (path and speaker marked ``<...>@<condition>``, so each condition of a speaker is
    normalised as a speaker of its own), model inputs, and frame features by path as
    normalised and raw. Babble mixes training clips."""
    from ser.perturb import Babble

    rate = cfg.data.sample_rate
    babble = Babble(tuple(r.path for r in train), functools.partial(load_audio, sample_rate=rate))
    conditions = augment_conditions(cfg, babble)
    k = cfg.augment.condition_copies
    rows, sources = [], {}
    for r in train:
        # Drawn per clip, so a clip gets the same copies in every fold (one cache entry).
        rng = np.random.default_rng([cfg.seed, zlib.crc32(Path(r.path).name.encode())])
        for pick in rng.choice(len(conditions), size=k, replace=k > len(conditions)):
            c = conditions[int(pick)]
            path = f"{r.path}{CONDITION_MARK}{c.name}"
            sources[path] = (r.path, c)
            rows.append(replace(r, path=path, speaker=f"{r.speaker}{CONDITION_MARK}{c.name}"))
    f = cfg.features
    log(
        f"augmentation: {len(rows)} copies of {len(train)} training clips in {len(conditions)} "
        "recording conditions"
    )
    features, report = extract_all(
        list(sources),
        f,
        rate,
        workers=f.workers,
        cache_dir=f.cache_dir,
        log=log,
        conditions=sources,
    )
    log(report.summary())
    normalised = scope_normalise(features, rows, f.normalisation)
    kept = [r for r in rows if r.path in normalised]
    inputs = [to_model_input(normalised[r.path], f.mode, f.pooling, max_frames) for r in kept]
    return kept, inputs, normalised, features


def _served_training_copies(
    cfg: Config,
    raw: list[np.ndarray],
    rows: list[Utterance],
    targets: np.ndarray,
    prior: Normaliser,
) -> tuple[list[np.ndarray], np.ndarray]:
    """``augment.session_copies`` copies of each raw training vector, normalised as a
    served clip would be (``served_copies``, seeded by ``cfg.seed``), with targets."""
    rng = np.random.default_rng([cfg.seed, 1117])
    copies = served_copies(raw, [r.speaker for r in rows], prior, cfg.augment.session_copies, rng)
    vectors = [v for per_clip in copies for v in per_clip]
    return vectors, np.repeat(targets, cfg.augment.session_copies).astype(np.int32)


def _capped_training(
    cfg: Config, parts: dict[str, list[Utterance]], log: Log
) -> dict[str, list[Utterance]]:
    """``parts`` with ``train.max_clips_per_speaker`` applied to the training part."""
    cap = cfg.train.max_clips_per_speaker
    if cap is None:
        return parts
    train = cap_speaker_clips(parts["train"], cap, cfg.seed)
    if len(train) < len(parts["train"]):
        counts = Counter(row.speaker for row in parts["train"])
        over = sorted(s for s, n in counts.items() if n > cap)
        log(
            f"train.max_clips_per_speaker {cap}: {len(train)} of {len(parts['train'])} "
            f"training clips kept ({', '.join(over)} capped)"
        )
    return {**parts, "train": train}


def _model_inputs_by_part(
    cfg: Config,
    parts: Mapping[str, list[Utterance]],
    features: dict[str, np.ndarray],
    index: Mapping[str, int],
    max_frames: int,
) -> tuple[dict[str, list[Utterance]], dict[str, list[np.ndarray]], dict[str, np.ndarray]]:
    """Per part: the rows with features and a known label, their model inputs and their
    integer targets."""
    rows, inputs, targets = {}, {}, {}
    f = cfg.features
    for part in PARTS:
        kept = [r for r in parts[part] if r.path in features and r.emotion in index]
        rows[part] = kept
        inputs[part] = [
            to_model_input(features[r.path], f.mode, f.pooling, max_frames) for r in kept
        ]
        targets[part] = np.array([index[r.emotion] for r in kept], np.int32)
    return rows, inputs, targets


def _add_condition_copies(
    cfg: Config,
    parts: tuple[dict, dict, dict],
    features: dict[str, np.ndarray],
    raw: dict[str, np.ndarray],
    index: dict[str, int],
    max_frames: int,
    log: Log,
) -> dict[str, np.ndarray]:
    """Append ``_condition_copies`` to the training part of ``parts`` (rows, inputs,
    targets, in place) and their normalised frames to ``features``; returns the raw
    frames with the copies' added (a new dict: the caller's stays as extracted)."""
    rows, inputs, targets = parts
    copies, copy_inputs, copy_features, copy_raw = _condition_copies(
        cfg, rows["train"], max_frames, log
    )
    features.update(copy_features)
    rows["train"] = rows["train"] + copies
    inputs["train"] = inputs["train"] + copy_inputs
    copy_targets = np.array([index[r.emotion] for r in copies], np.int32)
    targets["train"] = np.concatenate([targets["train"], copy_targets])
    return {**raw, **copy_raw}


def _add_copies(
    cfg: Config,
    parts: tuple[dict, dict, dict],
    features: dict[str, np.ndarray],
    raw: dict[str, np.ndarray],
    index: dict[str, int],
    max_frames: int,
    frame_prior: Normaliser | None,
    log: Log,
) -> tuple[dict[str, np.ndarray], tuple[list[np.ndarray], np.ndarray] | None]:
    """``augment.condition_copies`` appended to the training part of ``parts`` (in place),
    and ``augment.served_frames``' copies of every training clip and condition copy;
    returns the raw frames with the condition copies' and the served copies (or None)."""
    rows, _inputs, targets = parts
    if cfg.augment.condition_copies:
        raw = _add_condition_copies(cfg, parts, features, raw, index, max_frames, log)
    if not (cfg.augment.served_frames and frame_prior is not None):
        return raw, None
    # Condition copies too: a lone clip from a phone is normalised by the clean prior.
    served = _served_training_frames(
        cfg, raw, rows["train"], targets["train"], frame_prior, max_frames
    )
    return raw, served


def _validation_into_training(rows: dict, inputs: dict, targets: dict) -> None:
    """Append the validation part's rows, inputs and targets to the training part's (in
    place); the validation part stays as it is."""
    rows["train"] = rows["train"] + rows["val"]
    inputs["train"] = inputs["train"] + inputs["val"]
    targets["train"] = np.concatenate([targets["train"], targets["val"]])


def prepare_data(
    cfg: Config,
    split: Split | None = None,
    labels: list[str] | None = None,
    manifest: Manifest | ExtractedManifest | None = None,
    log: Log = print,
    keep_features: bool = False,
    validation_in_training: bool = False,
) -> PreparedData:
    """Manifest -> split -> cached features -> model inputs and integer targets per part.

    ``split``, ``labels`` and ``manifest`` default to what the config makes; a saved
    run passes its own. An ``ExtractedManifest`` brings its features, which are then
    not read again (and taken from it). With ``keep_features`` the frame-level features stay in
    ``PreparedData.features``. With ``validation_in_training`` the validation clips
    also train (after the training clips, with copies made as theirs are, and in the
    frame prior): ``train.refit_with_validation``; the validation part stays as it is.
    """
    extracted = manifest if isinstance(manifest, ExtractedManifest) else None
    manifest = extracted.manifest if extracted else manifest or build_manifest(cfg.data, log=log)
    if not manifest.rows:
        raise RuntimeError(
            f"no usable utterances under {cfg.data.root} for corpora {cfg.data.corpora} "
            f"and emotions {cfg.data.emotions}"
        )
    split = split or make_split(manifest.rows, cfg.split, cfg.seed)
    log(f"split: {split.protocol()}")
    if extracted:
        raw, report = dict(extracted.features), extracted.report
        extracted.features.clear()  # taken over: released once prepared (unless kept)
    else:
        raw, report = raw_manifest_features(cfg, manifest, log)
    features = scope_normalise(raw, manifest.rows, cfg.features.normalisation)
    labels = labels or label_list(manifest.rows, list(cfg.data.emotions))
    index = {label: i for i, label in enumerate(labels)}
    max_frames = max_frames_for(
        cfg.data.max_seconds, cfg.data.sample_rate, cfg.features.frame.hop_length
    )
    rows, inputs, targets = _model_inputs_by_part(
        cfg, _capped_training(cfg, split.partition(manifest.rows), log), features, index, max_frames
    )
    _check_no_part_empty(rows, features, report)
    if validation_in_training:
        _validation_into_training(rows, inputs, targets)
    frame_prior = frame_speaker_prior(cfg, raw, rows["train"])
    train_clips = len(rows["train"])
    raw, served = _add_copies(
        cfg, (rows, inputs, targets), features, raw, index, max_frames, frame_prior, log
    )
    prior = None
    if cfg.features.pooled_normalisation == "speaker":
        raw_train = inputs["train"]
        inputs, prior = _normalise_by_speaker(inputs, rows)
        if cfg.augment.session_copies:
            served = _served_training_copies(cfg, raw_train, rows["train"], targets["train"], prior)
    log(
        "examples: "
        + ", ".join(
            f"{p} {len(rows[p])} ({len({r.speaker for r in rows[p]})} speakers)" for p in PARTS
        )
        + f"; classes: {', '.join(labels)}"
    )
    kept_features = features if keep_features else {}
    return PreparedData(
        manifest,
        split,
        labels,
        rows,
        inputs,
        targets,
        report,
        report.failed,
        kept_features,
        prior,
        served,
        frame_prior,
        raw if keep_features else {},
        train_clips,
    )


def _old_corpus_folder(path: str, root: str, folder: str) -> str | None:
    """The corpus folder a saved (absolute) manifest path was found under.

    Paths are saved as ``<absolute data.root>/<folder>/...``; ``data.root`` itself
    may have been relative to the training directory, so it is searched for.
    """
    marker = str(Path(root) / folder)
    i = path.find(marker + os.sep)
    if i >= 0:
        return path[: i + len(marker)]
    j = path.rfind(os.sep + str(Path(folder)) + os.sep)
    return path[: j + 1 + len(str(Path(folder)))] if j >= 0 else None


def _with_paths(
    manifest: Manifest, split: Split, path_of: Callable[[str], str], data_root: str | None
) -> tuple[Manifest, Split]:
    """The manifest and split with every path (rows, skipped files, the split's
    validation and test paths) replaced by ``path_of(path)``, and ``data_root`` set."""
    rows = [replace(r, path=path_of(r.path)) for r in manifest.rows]
    skipped = [replace(s, path=path_of(s.path)) for s in manifest.skipped]
    return Manifest(rows, skipped, manifest.dropped, data_root), replace(
        split,
        val_paths=tuple(sorted(path_of(p) for p in split.val_paths)),
        test_paths=tuple(sorted(path_of(p) for p in split.test_paths)),
        data_root=data_root,
    )


def _relative_to(root: Path) -> Callable[[str], str]:
    """A path under ``root`` -> relative to it, with ``/`` separators; others as they are."""

    def relative(path: str) -> str:
        p = Path(path)
        return p.relative_to(root).as_posix() if p.is_relative_to(root) else path

    return relative


def _resolved_under(root: Path) -> Callable[[str], str]:
    """A saved path -> absolute under ``root`` (a path saved absolute stays as it is)."""
    return lambda path: str(root / path)


def save_run_data(run_dir: Path, manifest: Manifest, split: Split, data: DataConfig) -> None:
    """Write a run's ``split.json`` and ``manifest.jsonl`` with paths relative to the data
    root (``data.root``, recorded in both files for information), so the run can be
    evaluated wherever the corpora are, given the data root there (``locate_corpus``).
    """
    root = Path(data.root).absolute()
    saved_manifest, saved_split = _with_paths(manifest, split, _relative_to(root), str(root))
    runs.write_json(run_dir / runs.SPLIT, saved_split.to_dict())
    saved_manifest.save(run_dir / runs.MANIFEST)


def read_saved_split(run_dir: Path, data: DataConfig) -> Split:
    """A run's ``split.json`` with its paths resolved against ``data.root`` (to resume
    training on the manifest that ``data`` builds)."""
    split = Split.from_dict(json.loads((run_dir / runs.SPLIT).read_text(encoding="utf-8")))
    if split.data_root is None:
        return split
    root = Path(data.root).absolute()
    return _with_paths(Manifest([]), split, _resolved_under(root), None)[1]


def _folders_held(data: DataConfig) -> str:
    """The corpus folders a data root holds for ``data``, for messages: ``emodb/, tess/``."""
    return ", ".join(f"{name}/" for c in data.corpora for name in folder_names(data, c).values())


def read_run_data(
    run_dir: Path,
    data: DataConfig,
    *,
    data_root: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[Manifest, Split, str]:
    """A run's saved manifest and split, with absolute paths to where the corpora are
    now (``locate_corpus``): ``(manifest, split, where)``. Raises ``ValueError`` (or
    ``TypeError`` / ``KeyError``) for unreadable files, ``CorpusNotFoundError`` when no
    data root holds the run's files."""
    manifest = Manifest.load(run_dir / runs.MANIFEST)
    split = Split.from_dict(json.loads((run_dir / runs.SPLIT).read_text(encoding="utf-8")))
    return locate_corpus(manifest, split, data, data_root=data_root, env=env)


def _root_candidates(
    manifest: Manifest,
    data: DataConfig,
    data_root: str | os.PathLike[str] | None,
    env: Mapping[str, str],
) -> list[tuple[Path, str]]:
    """Where a run's relative paths may be resolved, in order of preference, each with
    how it was given: ``--data-root`` alone when given; else ``$SER_DATA_ROOT``, the
    run's ``data.root`` and the data root recorded at training."""
    if data_root is not None:
        return [(Path(data_root).absolute(), "--data-root")]
    given = [
        (env.get(DATA_ROOT_ENV), DATA_ROOT_ENV),
        (data.root, "data.root in run.yaml"),
        (manifest.data_root, "the data root at training"),
    ]
    found: dict[Path, str] = {}
    for root, how in given:
        if root:
            found.setdefault(Path(root).absolute(), how)
    return list(found.items())


def _locate_relative(
    manifest: Manifest,
    split: Split,
    data: DataConfig,
    data_root: str | os.PathLike[str] | None,
    env: Mapping[str, str],
) -> tuple[Manifest, Split, str]:
    """``locate_corpus`` for a run saved with paths relative to its data root: the first
    candidate root (``_root_candidates``) that holds every file of the run."""
    problems = []
    for root, how in _root_candidates(manifest, data, data_root, env):
        if not root.is_dir():
            problems.append(f"data root {root} ({how}) does not exist")
            continue
        located, located_split = _with_paths(manifest, split, _resolved_under(root), None)
        missing = [r.path for r in located.rows if not os.path.isfile(r.path)]
        if not missing:
            return located, located_split, f"corpus files under {root} ({how})"
        problems.append(
            f"data root {root} ({how}) lacks {len(missing)} of {len(located.rows)} files, "
            f"e.g. {missing[0]}"
        )
    raise CorpusNotFoundError(
        "the corpus files this run was trained on are not found: "
        + "; ".join(problems)
        + f". Pass --data-root ROOT (the folder holding {_folders_held(data)}) "
        f"or set {DATA_ROOT_ENV}"
    )


def locate_corpus(
    manifest: Manifest,
    split: Split,
    data: DataConfig,
    *,
    data_root: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[Manifest, Split, str]:
    """A run's saved manifest and split with absolute paths pointing at files that exist.

    Paths saved relative to the data root (``save_run_data``) are resolved against
    ``data_root`` (``--data-root``) if given, else the first of ``$SER_DATA_ROOT``, the
    run's ``data.root`` and the data root recorded at training that holds every file.
    Older runs saved absolute paths: see ``_locate_absolute``. Raises
    ``CorpusNotFoundError`` naming the roots tried and what to pass.
    Returns ``(manifest, split, where)`` with ``where`` a line for the log.
    """
    env = os.environ if env is None else env
    if manifest.data_root is None:
        return _locate_absolute(manifest, split, data, data_root, env)
    return _locate_relative(manifest, split, data, data_root, env)


def _locate_absolute(
    manifest: Manifest,
    split: Split,
    data: DataConfig,
    data_root: str | os.PathLike[str] | None,
    env: Mapping[str, str],
) -> tuple[Manifest, Split, str]:
    """``locate_corpus`` for a run saved with absolute paths (before paths were saved
    relative to the data root).

    As saved, if every file is still there and no ``data_root`` is given. Otherwise
    every path is moved from its saved corpus folder to the same place under
    ``data_root`` (or ``$SER_DATA_ROOT`` when no root is given).
    """
    rows = manifest.rows
    how = "--data-root"
    if data_root is None:
        missing = [r.path for r in rows if not os.path.isfile(r.path)]
        if not missing:
            return manifest, split, f"corpus files where training read them (data.root {data.root})"
        if env.get(DATA_ROOT_ENV) and Path(env[DATA_ROOT_ENV]).is_dir():
            data_root, how = env[DATA_ROOT_ENV], DATA_ROOT_ENV
        else:
            first = missing[0]
            corpus = next(r.corpus for r in rows if r.path == first)
            folder = _old_corpus_folder(first, data.root, getattr(data, corpus).folder)
            old_root = os.path.normpath(os.path.dirname(folder)) if folder else data.root
            state = (
                "does not exist"
                if not Path(old_root).is_dir()
                else f"exists but {len(missing)} of {len(rows)} files are missing, e.g. {first}"
            )
            raise CorpusNotFoundError(
                f"the corpus files this run was trained on are missing: data root {old_root} "
                f"(data.root {data.root!r} in run.yaml) {state}. If the corpora moved, pass "
                f"--data-root NEW_ROOT (the folder holding "
                f"{', '.join(getattr(data, c).folder + '/' for c in data.corpora)}) "
                f"or set {DATA_ROOT_ENV}"
            )
    root = Path(data_root).absolute()
    if not root.is_dir():
        raise CorpusNotFoundError(f"data root {root} ({how}) does not exist")
    moved: dict[str, str] = {}
    for r in rows:
        folder_name = getattr(data, r.corpus).folder
        old = _old_corpus_folder(r.path, data.root, folder_name)
        if old is None:
            raise CorpusNotFoundError(
                f"cannot tell where {r.path} sits under its corpus folder {folder_name!r}"
            )
        moved[r.path] = str(root / folder_name / r.path[len(old) + 1 :])
    missing = [p for p in moved.values() if not os.path.isfile(p)]
    if missing:
        raise CorpusNotFoundError(
            f"{len(missing)} of {len(rows)} files of this run are not under the data root "
            f"{root} ({how}), e.g. {missing[0]}; it must hold "
            f"{', '.join(getattr(data, c).folder + '/' for c in data.corpora)} as in training"
        )
    new_manifest, new_split = _with_paths(manifest, split, lambda p: moved.get(p, p), None)
    return new_manifest, new_split, f"corpus files under {root} ({how}), moved since training"
