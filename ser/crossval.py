"""Speaker-grouped cross-validation of Keras configs and the baselines, per corpus.

For each config and each corpus (``evaluation.cv.per_corpus``; otherwise all its
corpora together) the speakers are split into folds by ``ser.data.splits``
(``kfold``, capped at the corpus's speaker count, or ``loso``). Each fold trains the
Keras model with ``ser.training.train`` into its own run directory, evaluates it
through the same path as ``evaluate.py`` (``Predictor.load`` + ``load_run_data``)
and fits every baseline on the same training rows and features. Scores are
summarised as mean ± sample std across folds. Baselines whose features, parameters
and fold are identical across configs (lstm and cnn share features) are fitted once.

Optionally (``evaluation.cv.speaker_dependent_reference``) the baselines are also
scored on as many random, SPEAKER-DEPENDENT splits, to show the gap.

Three steps, each usable alone:

1. ``plan_cross_validation``: configs and manifests -> the ordered ``FoldJob`` list
   (config x corpus x fold, with its split and journal keys). No training.
2. ``run_fold``: train and score one job -> its journal records.
3. ``summarise``: journal records -> mean ± std per (corpus, model, protocol);
   ``cross_validate`` then writes ``cv.json`` and ``cv.md``.

Everything a fold produced is appended to ``folds.jsonl`` as soon as it is done, so
an interrupted run continues with ``resume=True`` where it stopped: a job's keys
already in the journal are not computed again.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ser.config import Config, DataConfig, SplitConfig
from ser.data.corpora import Manifest, build_manifest
from ser.data.splits import Split, make_folds, make_split
from ser.evaluation import (
    Examples,
    ModelResult,
    evaluate_baselines,
    evaluate_keras,
    load_run_data,
)
from ser.metrics import mean_std
from ser.progress import Log, progress_bar

ManifestLoader = Callable[[DataConfig], Manifest]
Record = dict[str, Any]
CV_FORMAT = "ser-cv/1"
# The files of a cross-validation folder (fold runs sit in <config>/<corpus>/fold<k>/).
CV_JSON = "cv.json"
CV_MARKDOWN = "cv.md"
JOURNAL = "folds.jsonl"
DETAIL_LOG = "cv.log"


# --------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class FoldJob:
    """One fold of one config on one corpus: what to train and score on one split.

    ``keras_key`` is None when the Keras model does not run on this fold (a
    speaker-dependent reference split, or ``keras=False``). ``baseline_keys`` maps
    each baseline to score to its journal key, in ``evaluation.baselines`` order.
    ``cfg`` is the fold's own config (split, run name, output folders); ``manifest``
    holds the rows the baselines' data is prepared from when no Keras run provides it.
    """

    config: str
    keras_model: str
    corpus: str
    protocol: str
    fold: int
    split: Split
    cfg: Config
    manifest: Manifest
    keras_key: str | None
    baseline_keys: dict[str, str]

    @property
    def keys(self) -> list[str]:
        """Journal keys of the records this job produces: baselines first, then Keras
        (the order a resumed run lists the finished ones in)."""
        return [*self.baseline_keys.values(), *([self.keras_key] if self.keras_key else [])]

    def finished(self, journal: Mapping[str, Record]) -> list[Record]:
        """The records of this job already in ``journal``."""
        return [journal[key] for key in self.keys if key in journal]

    def unfinished(self, journal: Mapping[str, Record]) -> FoldJob | None:
        """This job without the parts ``journal`` already holds; None when all are there."""
        keras_key = self.keras_key if self.keras_key not in journal else None
        baseline_keys = {n: k for n, k in self.baseline_keys.items() if k not in journal}
        if keras_key is None and not baseline_keys:
            return None
        return replace(self, keras_key=keras_key, baseline_keys=baseline_keys)


@dataclass(frozen=True)
class CrossValidationPlan:
    """The fold jobs in the order they run, and one note per protocol used."""

    jobs: list[FoldJob]
    notes: list[str]


def plan_cross_validation(
    cfgs: Sequence[Config],
    out: Path,
    manifests: ManifestLoader,
    *,
    keras: bool = True,
    baselines: bool = True,
    speaker_dependent: bool | None = None,
) -> CrossValidationPlan:
    """Every fold job of ``cfgs``: config by config, corpus by corpus, speaker folds
    then (if asked) the speaker-dependent reference splits. ``manifests`` returns the
    manifest of a data section; fold runs go below ``out``. Nothing is trained.

    ``speaker_dependent`` None follows each config's
    ``evaluation.cv.speaker_dependent_reference``.
    """
    from ser.baselines import BASELINES

    jobs: list[FoldJob] = []
    notes: list[str] = []
    for cfg, label in zip(cfgs, config_labels(cfgs), strict=True):
        cv = cfg.evaluation.cv
        for name in cfg.evaluation.baselines:
            BASELINES.get(name)  # an unknown name fails before anything trains
        reference = (
            cv.speaker_dependent_reference if speaker_dependent is None else speaker_dependent
        )
        corpus_groups = [[c] for c in cfg.data.corpora] if cv.per_corpus else [cfg.data.corpora]
        for corpora in corpus_groups:
            corpus_notes, corpus_jobs = _plan_corpus(
                cfg,
                label,
                list(corpora),
                out,
                manifests,
                keras=keras,
                baselines=baselines,
                reference=reference and baselines,
            )
            notes += [note for note in corpus_notes if note not in notes]
            jobs += corpus_jobs
    return CrossValidationPlan(jobs, notes)


def config_labels(cfgs: Sequence[Config]) -> list[str]:
    """A unique label per config: its name, suffixed when two share one."""
    out: list[str] = []
    for cfg in cfgs:
        label = cfg.name if cfg.name not in out else f"{cfg.name}-{len(out)}"
        out.append(label)
    return out


def _plan_corpus(
    cfg: Config,
    label: str,
    corpora: list[str],
    out: Path,
    manifests: ManifestLoader,
    *,
    keras: bool,
    baselines: bool,
    reference: bool,
) -> tuple[list[str], list[FoldJob]]:
    """The protocol notes and fold jobs of one config on one corpus (or group)."""
    cv = cfg.evaluation.cv
    corpus = "+".join(corpora)
    data_cfg = cfg.data.model_copy(update={"corpora": corpora})
    tested = manifests(data_cfg)  # the tested corpus alone (speaker-dependent references)
    split_cfg, splits, protocol = _speaker_folds(cfg, tested.rows)
    manifest = tested
    extras = [c for c in cv.extra_training_corpora.get(corpus, []) if c != corpus]
    if extras and cv.per_corpus:
        data_cfg, manifest, splits, protocol = _with_extra_training(
            cfg, data_cfg, manifest, splits, protocol, extras, manifests
        )
    corpus_cfg = _corpus_config(cfg, label, corpus, data_cfg, split_cfg, out)
    notes = [f"{corpus}: {protocol}"]
    folds = [(protocol, i, split, manifest) for i, split in enumerate(splits)]
    if reference:
        ref_protocol = f"SPEAKER-DEPENDENT, random split x{cv.folds}"
        notes.append(
            f"{corpus}: {ref_protocol} (baselines only): stratified "
            f"{cfg.split.test_fraction:.0%} test utterances, seeds {cfg.seed}.."
            f"{cfg.seed + cv.folds - 1}; the same speakers are in train and test"
        )
        references = _reference_splits(cfg, tested.rows, cv.folds)
        folds += [(ref_protocol, i, split, tested) for i, split in enumerate(references)]
    jobs = [
        _fold_job(corpus_cfg, label, corpus, fold_protocol, i, split, rows, keras, baselines)
        for fold_protocol, i, split, rows in folds
    ]
    return notes, jobs


def _corpus_config(
    cfg: Config, label: str, corpus: str, data_cfg: DataConfig, split_cfg: SplitConfig, out: Path
) -> Config:
    """``cfg`` for one corpus: its data, fold split, and output folders below ``out``
    (runs) and ``<experiments_dir>/cv/<out name>`` (TensorBoard logs)."""
    fold_root = Path(cfg.train.experiments_dir) / "cv" / out.name / label / corpus
    train = cfg.train.model_copy(
        update={"checkpoints_dir": str(out / label / corpus), "experiments_dir": str(fold_root)}
    )
    return cfg.model_copy(update={"data": data_cfg, "split": split_cfg, "train": train})


def _fold_job(
    corpus_cfg: Config,
    label: str,
    corpus: str,
    protocol: str,
    fold: int,
    split: Split,
    manifest: Manifest,
    keras: bool,
    baselines: bool,
) -> FoldJob:
    independent = split.speaker_independent
    fold_split = (
        corpus_cfg.split.model_copy(update={"fold": fold})
        if independent
        else SplitConfig(method="random")
    )
    run_name = corpus_cfg.train.model_copy(update={"run_name": f"fold{fold}"})
    cfg = corpus_cfg.model_copy(update={"split": fold_split, "train": run_name})
    names = cfg.evaluation.baselines if baselines else []
    model = cfg.model.label
    return FoldJob(
        config=label,
        keras_model=label if label == model else f"{model} ({label})",
        corpus=corpus,
        protocol=protocol,
        fold=fold,
        split=split,
        cfg=cfg,
        manifest=manifest,
        keras_key=f"keras|{label}|{corpus}|{protocol}|{fold}" if keras and independent else None,
        baseline_keys={name: _baseline_key(cfg, name, corpus, protocol, split) for name in names},
    )


def _baseline_key(cfg: Config, name: str, corpus: str, protocol: str, split: Split) -> str:
    """A key equal for every config whose baseline ``name`` would be fitted on the same
    features, parameters and split, so it is fitted once."""
    from ser.baselines import PooledFeatures, features_for, params_of

    run_features = PooledFeatures(cfg.features, cfg.data.sample_rate)
    spec = {
        "features": features_for(name, cfg, run_features).key,
        "params": params_of(cfg.evaluation, name).model_dump(mode="json"),
        "grid": cfg.evaluation.grid,
        "seed": cfg.seed,
        "split": split.to_dict(),
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return f"baseline|{name}|{corpus}|{protocol}|{digest}"


def _speaker_folds(cfg: Config, rows: Sequence[Any]) -> tuple[SplitConfig, list[Split], str]:
    """The speaker-independent folds of ``rows``, their split config and protocol."""
    cv = cfg.evaluation.cv
    corpora = {r.corpus for r in rows}
    method = cv.method
    if len(corpora) == 1:
        method = cv.method_by_corpus.get(next(iter(corpora)), cv.method)
    speakers = len({r.speaker for r in rows})
    if speakers < 2:
        raise RuntimeError("cross-validation needs at least two speakers per corpus")
    if method == "loso" or cv.folds >= speakers:
        split_cfg = cfg.split.model_copy(update={"method": "loso", "folds": speakers, "fold": 0})
        protocol = f"speaker-independent, leave-one-speaker-out ({speakers} folds)"
    else:
        split_cfg = cfg.split.model_copy(update={"method": "kfold", "folds": cv.folds, "fold": 0})
        protocol = f"speaker-independent, {cv.folds}-fold by speaker"
    return split_cfg, make_folds(rows, split_cfg, cfg.seed), protocol


def _with_extra_training(
    cfg: Config,
    data_cfg: DataConfig,
    manifest: Manifest,
    splits: list[Split],
    protocol: str,
    extras: list[str],
    manifests: ManifestLoader,
) -> tuple[DataConfig, Manifest, list[Split], str]:
    """Add every clip of ``extras`` (with the tested corpus's emotions) to each fold's
    training speakers; validation and test speakers are unchanged."""
    emotions = [e for e in cfg.data.emotions if e in {r.emotion for r in manifest.rows}]
    extra = manifests(cfg.data.model_copy(update={"corpora": extras, "emotions": emotions}))
    speakers = tuple(sorted({r.speaker for r in extra.rows}))
    extra_dropped = {f"{'+'.join(extras)}: {k}": v for k, v in extra.dropped.items()}
    combined = Manifest(
        rows=manifest.rows + extra.rows,
        skipped=manifest.skipped + extra.skipped,
        dropped={**manifest.dropped, **extra_dropped},
    )
    splits = [replace(s, train_speakers=s.train_speakers + speakers) for s in splits]
    data_cfg = data_cfg.model_copy(
        update={"corpora": list(data_cfg.corpora) + extras, "emotions": emotions}
    )
    protocol += (
        f"; training also on all of {' + '.join(extras)} "
        f"({len(extra.rows)} clips, {len(speakers)} speakers, same emotions)"
    )
    return data_cfg, combined, splits, protocol


def _reference_splits(cfg: Config, rows: Sequence[Any], n: int) -> list[Split]:
    split_cfg = SplitConfig(
        method="random", test_fraction=cfg.split.test_fraction, val_fraction=cfg.split.val_fraction
    )
    return [make_split(rows, split_cfg, cfg.seed + i) for i in range(n)]


class _Manifests:
    """A ``ManifestLoader`` that reads each data section's corpora once."""

    def __init__(self, log: Log) -> None:
        self._log = log
        self._built: dict[str, Manifest] = {}

    def __call__(self, data: DataConfig) -> Manifest:
        key = data.model_dump_json()
        if key not in self._built:
            self._built[key] = build_manifest(data, log=self._log)
        return self._built[key]


# ------------------------------------------------------------------------ one fold
class _Journal:
    """``folds.jsonl``: one record per finished (model, fold), read back on resume."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.records: dict[str, Record] = {}
        if resume and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    record = json.loads(line)
                    self.records[record["key"]] = record

    def add(self, record: Record) -> None:
        self.records[record["key"]] = record
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def run_fold(job: FoldJob, journal: _Journal, say: Log, detail: Log) -> list[Record]:
    """Train and score what ``job`` names: its Keras model, then its baselines on the
    same data. Each record is added to ``journal`` as soon as it exists, so an
    interruption loses at most the model in progress; returns the records.

    ``say`` gets one line per model kind (terminal and detail log), ``detail`` the
    training and evaluation logs.
    """
    records: list[Record] = []
    data = None
    if job.keras_key:
        record, data = _run_keras(job, job.keras_key, detail)
        journal.add(record)
        records.append(record)
        say(
            f"{job.config} {job.corpus} fold {job.fold} ({', '.join(record['test_speakers'])}): "
            f"{job.keras_model} UA {record['ua']:.3f} WA {record['wa']:.3f} "
            f"(fit {record['fit_seconds']:.0f} s, best epoch {record['best_epoch']})"
        )
    if job.baseline_keys:
        results, baseline_records = _run_baselines(job, data, detail)
        for record in baseline_records:
            journal.add(record)
        records += baseline_records
        say(
            f"{job.config} {job.corpus} fold {job.fold} [{job.protocol}]: baselines "
            + ", ".join(f"{r.name} {r.metrics['ua']:.3f}" for r in results)
            + " (UA)"
        )
    del data
    gc.collect()
    return records


def _run_keras(job: FoldJob, key: str, log: Log) -> tuple[Record, Any]:
    """Train the fold's Keras model, score it as ``evaluate.py`` would; returns its
    record and the run's data (shared with the baselines)."""
    from ser.inference import Predictor
    from ser.training import train

    _discard_unfinished(job.cfg, log)
    summary = train(job.cfg, split=job.split, log=log)
    predictor = Predictor.load(summary["run_dir"])
    data = load_run_data(predictor, log=log)
    if data.split != job.split:
        raise RuntimeError(f"fold {job.fold}: the trained split differs from the plan")
    test = Examples(data.rows["test"], data.targets["test"])
    result = evaluate_keras(predictor, test, data.inputs["test"], data.labels)
    result.fit_seconds = summary["seconds"]["fit"]
    record = _record(
        job,
        key,
        result,
        job.keras_model,
        test,
        best_epoch=summary["best_epoch"],
        run_dir=summary["run_dir"],
        train_seconds=summary["seconds"]["total"],
        classes=data.labels,
    )
    del predictor
    _release_keras()
    return record, data


def _run_baselines(job: FoldJob, data: Any, log: Log) -> tuple[list[ModelResult], list[Record]]:
    """Fit and score the job's baselines on ``data`` (the Keras run's, else prepared
    here from the job's manifest); returns their results and records."""
    from ser.baselines import PooledFeatures
    from ser.data.prepare import prepare_data

    cfg = job.cfg
    if data is None:
        data = prepare_data(
            cfg, split=job.split, manifest=job.manifest, log=log, keep_features=True
        )
    test = Examples(data.rows["test"], data.targets["test"])
    features = PooledFeatures(cfg.features, cfg.data.sample_rate, known=data.features, log=log)
    results = evaluate_baselines(
        cfg,
        Examples(data.rows["train"], data.targets["train"]),
        test,
        data.labels,
        features,
        val=Examples(data.rows["val"], data.targets["val"]),
        names=list(job.baseline_keys),
        log=log,
    )
    records = [
        _record(
            job,
            job.baseline_keys[result.name],
            result,
            f"{result.name} ({_short_features(cfg, result.name)})",
            test,
            classes=data.labels,
        )
        for result in results
    ]
    return results, records


def _record(
    job: FoldJob, key: str, result: ModelResult, model: str, test: Examples, **extra: Any
) -> Record:
    """The journal record of one model on one fold (the fields ``folds.jsonl`` keeps)."""
    return {
        "key": key,
        "config": job.config,
        "model": model,
        "kind": result.kind,
        "corpus": job.corpus,
        "protocol": job.protocol,
        "fold": job.fold,
        "test_speakers": test.speakers,
        "n": len(test.rows),
        "ua": result.metrics["ua"],
        "wa": result.metrics["wa"],
        "macro_f1": result.metrics["macro_f1"],
        "fit_seconds": result.fit_seconds,
        "features": result.features,
        "params": result.params,
        "grid": result.grid,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        **extra,
    }


def _short_features(cfg: Config, name: str) -> str:
    if name == "seed_mlp":
        return "mfcc40+chroma12+mel128 means"
    f = cfg.features
    return f"{'+'.join(f.extractors)}; {'+'.join(f.pooling)}"


def _discard_unfinished(cfg: Config, log: Log) -> None:
    """Delete the run folder and logs of a fold interrupted before it was recorded:
    it is trained again from scratch, so every fold's numbers and timings are whole."""
    name = cfg.train.run_name or ""
    for folder in (Path(cfg.train.checkpoints_dir) / name, Path(cfg.train.experiments_dir) / name):
        if name and folder.exists():
            log(f"discarding unfinished fold {folder}")
            shutil.rmtree(folder)


def _release_keras() -> None:
    """Free the graphs and models of a finished fold before the next one trains."""
    import keras

    keras.backend.clear_session()
    gc.collect()


# ------------------------------------------------------------------------- summary
def summarise(records: Sequence[Record]) -> list[dict[str, Any]]:
    """One group per (corpus, model, protocol): fold count, tested speakers and
    mean ± sample std of UA, WA, macro-F1 and fit seconds across its folds."""
    groups: dict[tuple[str, str, str], list[Record]] = {}
    for r in records:
        groups.setdefault((r["corpus"], r["model"], r["protocol"]), []).append(r)
    out = []
    for (corpus, model, protocol), rows in groups.items():
        rows = sorted(rows, key=lambda r: r["fold"])
        fits = [r["fit_seconds"] for r in rows if r["fit_seconds"] is not None]
        out.append(
            {
                "corpus": corpus,
                "model": model,
                "kind": rows[0]["kind"],
                "protocol": protocol,
                "speaker_independent": not protocol.startswith("SPEAKER-DEPENDENT"),
                "folds": len(rows),
                "features": rows[0]["features"],
                "classes": rows[0].get("classes", []),
                "speakers": len({s for r in rows for s in r["test_speakers"]}),
                "ua": mean_std([r["ua"] for r in rows]),
                "wa": mean_std([r["wa"] for r in rows]),
                "macro_f1": mean_std([r["macro_f1"] for r in rows]),
                "fit_seconds": mean_std(fits),
            }
        )
    # Per corpus: speaker-independent first, best mean UA first (reporting order only).
    return sorted(
        out, key=lambda g: (g["corpus"], not g["speaker_independent"], -g["ua"]["mean"], g["model"])
    )


@dataclass(frozen=True)
class _Invocation:
    """What one call of ``cross_validate`` started from, for ``cv.json``'s header."""

    started: float
    versions: dict[str, Any]
    command: str
    previous: dict[str, Any] | None  # the cv.json of the run a resume continues


def _cv_result(
    invocation: _Invocation,
    cfgs: Sequence[Config],
    plan: CrossValidationPlan,
    out: Path,
    records: list[Record],
    reused: set[str],
) -> dict[str, Any]:
    """The content of ``cv.json``: header, protocol notes, groups and every fold."""
    # One record per key: a resumed run may list a reused record twice.
    unique = list({r["key"]: r for r in records}.values())
    seconds = time.time() - invocation.started
    computed = len(unique) - len(reused)
    commit = invocation.versions.get("git_commit", "unknown")
    resumed = []
    # A resume that computed nothing only re-rendered the reports: nothing to note.
    if reused and computed:
        when = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(invocation.started))
        resumed.append(
            f"{when}: resumed with {len(reused)} finished results reused and {computed} "
            f"computed, commit {commit}"
        )
    labels = config_labels(cfgs)
    result = {
        "format": CV_FORMAT,
        "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "commit": commit,
        "versions": invocation.versions,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "configs": {label: cfg.to_dict() for cfg, label in zip(cfgs, labels, strict=True)},
        "protocol_notes": plan.notes,
        "out_dir": str(out),
        "seconds": seconds,
        "resumed": resumed,
        "command": invocation.command,
        "groups": summarise(unique),
        "folds": sorted(unique, key=lambda r: (r["corpus"], r["model"], r["protocol"], r["fold"])),
    }
    previous = invocation.previous
    if previous is not None:
        # A resumed run keeps the date, commit and duration of the run it continues.
        # The command stays this invocation's: it names every config the results cover.
        for key in ("created", "commit", "versions", "machine"):
            result[key] = previous.get(key) or result[key]
        result["command"] = invocation.command or previous.get("command", "")
        result["seconds"] = previous["seconds"] + (seconds if computed else 0.0)
        result["resumed"] = [*previous.get("resumed", []), *result["resumed"]]
    elif reused:
        # The run this one continues was stopped before it wrote cv.json: its duration
        # is what its finished folds recorded (training, or a baseline's fit), at least.
        taken = [r for r in unique if r["key"] in reused]
        result["seconds"] = _recorded_seconds(taken) + (seconds if computed else 0.0)
    return result


def _recorded_seconds(records: Sequence[Record]) -> float:
    """Seconds the journal records say their folds took: a Keras fold's whole training
    run (``train_seconds``), else the model's fit."""
    return float(sum(r.get("train_seconds") or r.get("fit_seconds") or 0.0 for r in records))


def _read_previous(path: Path) -> dict[str, Any] | None:
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return previous if previous.get("format") == CV_FORMAT else None


# ---------------------------------------------------------------------- the whole
def cross_validate(
    cfgs: Sequence[Config],
    *,
    keras: bool = True,
    baselines: bool = True,
    speaker_dependent: bool | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    command: str = "",
    log: Log = print,
) -> dict[str, Any]:
    """Cross-validate each config's Keras model and the baselines; returns the result
    dict also written to ``<out_dir>/cv.json`` and ``cv.md``.

    ``out_dir`` defaults to ``<train.checkpoints_dir>/cv/<name>-<time>``; fold runs go
    below it, their TensorBoard logs below ``<train.experiments_dir>/cv/``. Training
    and evaluation details go to ``<out_dir>/cv.log``; the terminal gets a progress
    bar and a line per fold.
    """
    from ser import reports
    from ser.runs import versions

    if not cfgs:
        raise ValueError("no config to cross-validate")
    started = time.time()
    out = Path(out_dir) if out_dir else _default_out_dir(cfgs[0])
    out.mkdir(parents=True, exist_ok=True)
    journal = _Journal(out / JOURNAL, resume)
    invocation = _Invocation(
        started=started,
        versions=versions(),  # the code that produced the numbers
        command=command,
        previous=_read_previous(out / CV_JSON) if resume else None,
    )
    log(
        f"cross-validation: {', '.join(config_labels(cfgs))} -> {out} "
        f"(details in {out / DETAIL_LOG})"
    )
    with _detail_log(out / DETAIL_LOG) as detail:
        plan = plan_cross_validation(
            cfgs,
            out,
            _Manifests(detail),
            keras=keras,
            baselines=baselines,
            speaker_dependent=speaker_dependent,
        )
        records: list[Record] = []
        reused: set[str] = set()  # keys of records taken from the journal, not computed
        progress = _Progress(plan.jobs, log, detail)
        for job in progress:
            # Looked up as each job starts, not when planning: a baseline an earlier
            # config of this run fitted on the same data and split is reused.
            done = job.finished(journal.records)
            records += done
            reused.update(r["key"] for r in done)
            todo = job.unfinished(journal.records)
            if todo is not None:
                records += run_fold(todo, journal, progress.say, detail)
    result = _cv_result(invocation, cfgs, plan, out, records, reused)
    (out / CV_JSON).write_text(json.dumps(result, indent=2), encoding="utf-8")
    (out / CV_MARKDOWN).write_text(reports.render_cv_markdown(result), encoding="utf-8")
    log(reports.format_cv_table(result["groups"]))
    log(f"cross-validation report: {out / CV_MARKDOWN} (and {CV_JSON}, {JOURNAL})")
    return result


def _default_out_dir(cfg: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(cfg.train.checkpoints_dir) / "cv" / f"{cfg.name}-{stamp}"


class _Progress:
    """A terminal progress bar over the fold jobs, named after the current config and
    corpus; ``say`` prints a line above the bar and to the detail log."""

    def __init__(self, jobs: Sequence[FoldJob], log: Log, detail: Log) -> None:
        self._jobs = jobs
        self._log = log
        self._detail = detail
        self._bar = progress_bar(len(jobs), "folds", "fold")

    def __iter__(self) -> Iterator[FoldJob]:
        with contextlib.closing(self._bar):
            for job in self._jobs:
                self._bar.set_description(f"{job.config} {job.corpus}")
                yield job
                self._bar.update()

    def say(self, line: str) -> None:
        self._detail(line)
        with self._bar.external_write_mode():
            self._log(line)


@contextlib.contextmanager
def _detail_log(path: Path) -> Iterator[Log]:
    """A ``Log`` appending flushed lines to ``path`` (``cv.log``)."""
    with path.open("a", encoding="utf-8") as f:

        def write(line: str) -> None:
            f.write(line + "\n")
            f.flush()

        yield write
