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

Everything a fold produced is appended to ``folds.jsonl`` as soon as it is done, so
an interrupted run continues with ``resume=True`` where it stopped.
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
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from ser.config import Config, SplitConfig
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
from ser.progress import Log

CV_FORMAT = "ser-cv/1"


def _short_features(cfg: Config, name: str) -> str:
    if name == "seed_mlp":
        return "mfcc40+chroma12+mel128 means"
    f = cfg.features
    return f"{'+'.join(f.extractors)}; {'+'.join(f.pooling)}"


def _baseline_key(cfg: Config, name: str, corpus: str, protocol: str, split: Split) -> str:
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


def _labels(cfgs: Sequence[Config]) -> list[str]:
    """A unique label per config: its name, suffixed when two share one."""
    out: list[str] = []
    for cfg in cfgs:
        label = cfg.name if cfg.name not in out else f"{cfg.name}-{len(out)}"
        out.append(label)
    return out


def _fold_plan(cfg: Config, rows: Sequence[Any]) -> tuple[SplitConfig, list[Split], str]:
    cv = cfg.evaluation.cv
    corpora = {r.corpus for r in rows}
    method = cv.method_by_corpus.get(next(iter(corpora)), cv.method) if len(corpora) == 1 else cv.method
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
    data_cfg: Any,
    manifest: Manifest,
    splits: list[Split],
    protocol: str,
    extras: list[str],
    manifests: dict[str, Manifest],
    log: Log,
) -> tuple[Any, Manifest, list[Split], str]:
    """Add every clip of ``extras`` (with the tested corpus's emotions) to each fold's
    training speakers; validation and test speakers are unchanged."""
    emotions = [e for e in cfg.data.emotions if e in {r.emotion for r in manifest.rows}]
    extra_cfg = cfg.data.model_copy(update={"corpora": extras, "emotions": emotions})
    key = extra_cfg.model_dump_json()
    if key not in manifests:
        manifests[key] = build_manifest(extra_cfg, log=log)
    extra = manifests[key]
    speakers = tuple(sorted({r.speaker for r in extra.rows}))
    combined = Manifest(
        rows=manifest.rows + extra.rows,
        skipped=manifest.skipped + extra.skipped,
        dropped={**manifest.dropped, **{f"{'+'.join(extras)}: {k}": v for k, v in extra.dropped.items()}},
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


class _Journal:
    """``folds.jsonl``: one record per finished (model, fold), read back on resume."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        if resume and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    record = json.loads(line)
                    self.records[record["key"]] = record

    def add(self, record: dict[str, Any]) -> None:
        self.records[record["key"]] = record
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _record(
    key: str, result: ModelResult, *, config: str, model: str, corpus: str, protocol: str,
    fold: int, test: Examples, **extra: Any,
) -> dict[str, Any]:  # fmt: skip
    return {
        "key": key,
        "config": config,
        "model": model,
        "kind": result.kind,
        "corpus": corpus,
        "protocol": protocol,
        "fold": fold,
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


@contextlib.contextmanager
def _detail_log(path: Path) -> Iterator[tuple[TextIO, Log]]:
    with path.open("a", encoding="utf-8") as f:

        def write(line: str) -> None:
            f.write(line + "\n")
            f.flush()

        yield f, write


def _summarise(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
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
    from ser.baselines import BASELINES, PooledFeatures
    from ser.data.prepare import prepare_data
    from ser.inference import Predictor
    from ser.runs import versions
    from ser.training import train

    if not cfgs:
        raise ValueError("no config to cross-validate")
    started = time.time()
    at_start = versions()  # the code that produced the numbers
    first = cfgs[0]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = (
        Path(out_dir)
        if out_dir
        else Path(first.train.checkpoints_dir) / "cv" / f"{first.name}-{stamp}"
    )
    out.mkdir(parents=True, exist_ok=True)
    journal = _Journal(out / "folds.jsonl", resume)
    reused: set[str] = set()  # keys of results taken from the journal, not computed
    # A resumed run keeps the date, commit and duration of the run it continues.
    previous = _read_previous(out / "cv.json") if resume else None
    records: list[dict[str, Any]] = []
    manifests: dict[str, Manifest] = {}
    labels = _labels(cfgs)
    notes: list[str] = []
    log(f"cross-validation: {', '.join(labels)} -> {out} (details in {out / 'cv.log'})")

    with _detail_log(out / "cv.log") as (_, detail):
        for cfg, label in zip(cfgs, labels, strict=True):
            cv = cfg.evaluation.cv
            for name in cfg.evaluation.baselines:
                BASELINES.get(name)
            keras_label = label if label == cfg.model.type else f"{cfg.model.type} ({label})"
            corpus_groups = (
                [[c] for c in cfg.data.corpora] if cv.per_corpus else [list(cfg.data.corpora)]
            )
            for corpora in corpus_groups:
                corpus = "+".join(corpora)
                data_cfg = cfg.data.model_copy(update={"corpora": corpora})
                manifest_key = data_cfg.model_dump_json()
                if manifest_key not in manifests:
                    manifests[manifest_key] = build_manifest(data_cfg, log=detail)
                manifest = manifests[manifest_key]
                split_cfg, splits, protocol = _fold_plan(cfg, manifest.rows)
                target = manifest  # the tested corpus alone (speaker-dependent references)
                extras = [c for c in cv.extra_training_corpora.get(corpus, []) if c != corpus]
                if extras and cv.per_corpus:
                    data_cfg, manifest, splits, protocol = _with_extra_training(
                        cfg, data_cfg, manifest, splits, protocol, extras, manifests, detail
                    )
                note = f"{corpus}: {protocol}"
                if note not in notes:
                    notes.append(note)
                fold_root = Path(cfg.train.experiments_dir) / "cv" / out.name / label / corpus
                cfg_c = cfg.model_copy(
                    update={
                        "data": data_cfg,
                        "split": split_cfg,
                        "train": cfg.train.model_copy(
                            update={
                                "checkpoints_dir": str(out / label / corpus),
                                "experiments_dir": str(fold_root),
                            }
                        ),
                    }
                )
                plan = [(protocol, i, s) for i, s in enumerate(splits)]
                reference = (
                    cv.speaker_dependent_reference
                    if speaker_dependent is None
                    else speaker_dependent
                )
                if reference and baselines:
                    ref_protocol = f"SPEAKER-DEPENDENT, random split x{cv.folds}"
                    note = (
                        f"{corpus}: {ref_protocol} (baselines only): stratified "
                        f"{cfg.split.test_fraction:.0%} test utterances, seeds {cfg.seed}.."
                        f"{cfg.seed + cv.folds - 1}; the same speakers are in train and test"
                    )
                    if note not in notes:
                        notes.append(note)
                    plan += [
                        (ref_protocol, i, s)
                        for i, s in enumerate(_reference_splits(cfg, target.rows, cv.folds))
                    ]
                bar = tqdm(plan, desc=f"{label} {corpus}", unit="fold", leave=False, disable=None)
                for fold_protocol, fold, split in bar:

                    def say(line: str, _bar: Any = bar) -> None:
                        detail(line)
                        with _bar.external_write_mode():
                            log(line)

                    dependent = not split.speaker_independent
                    fold_cfg = cfg_c.model_copy(
                        update={
                            "split": (
                                split_cfg.model_copy(update={"fold": fold})
                                if not dependent
                                else SplitConfig(method="random")
                            ),
                            "train": cfg_c.train.model_copy(update={"run_name": f"fold{fold}"}),
                        }
                    )
                    keras_key = f"keras|{label}|{corpus}|{fold_protocol}|{fold}"
                    base_keys = {
                        name: _baseline_key(fold_cfg, name, corpus, fold_protocol, split)
                        for name in (cfg.evaluation.baselines if baselines else [])
                    }
                    want_keras = keras and not dependent
                    todo_keras = want_keras and keras_key not in journal.records
                    todo_base = [n for n, k in base_keys.items() if k not in journal.records]
                    done = [journal.records[k] for n, k in base_keys.items() if n not in todo_base]
                    if want_keras and not todo_keras:
                        done.append(journal.records[keras_key])
                    records += done
                    reused.update(r["key"] for r in done)
                    if not todo_keras and not todo_base:
                        continue
                    data = None
                    test = None
                    if todo_keras:
                        _discard_unfinished(fold_cfg, detail)
                        summary = train(fold_cfg, split=split, log=detail)
                        predictor = Predictor.load(summary["run_dir"])
                        data = load_run_data(predictor, log=detail)
                        if data.split != split:
                            raise RuntimeError(
                                f"fold {fold}: the trained split differs from the plan"
                            )
                        test = Examples(data.rows["test"], data.targets["test"])
                        result = evaluate_keras(predictor, test, data.inputs["test"], data.labels)
                        result.fit_seconds = summary["seconds"]["fit"]
                        record = _record(
                            keras_key, result, config=label, model=keras_label, corpus=corpus,
                            protocol=fold_protocol, fold=fold, test=test,
                            best_epoch=summary["best_epoch"], run_dir=summary["run_dir"],
                            train_seconds=summary["seconds"]["total"], classes=data.labels,
                        )  # fmt: skip
                        journal.add(record)
                        records.append(record)
                        say(
                            f"{label} {corpus} fold {fold} ({', '.join(test.speakers)}): "
                            f"{keras_label} UA {result.metrics['ua']:.3f} "
                            f"WA {result.metrics['wa']:.3f} (fit {result.fit_seconds:.0f} s, "
                            f"best epoch {summary['best_epoch']})"
                        )
                        del predictor
                        _release_keras()
                    if todo_base:
                        if data is None:
                            data = prepare_data(
                                fold_cfg, split=split, manifest=target if dependent else manifest,
                                log=detail,
                                keep_features=True,
                            )  # fmt: skip
                            test = Examples(data.rows["test"], data.targets["test"])
                        run_features = PooledFeatures(
                            fold_cfg.features, fold_cfg.data.sample_rate, known=data.features,
                            log=detail,
                        )  # fmt: skip
                        results = evaluate_baselines(
                            fold_cfg, Examples(data.rows["train"], data.targets["train"]), test,
                            data.labels, run_features,
                            val=Examples(data.rows["val"], data.targets["val"]),
                            names=todo_base, log=detail,
                        )  # fmt: skip
                        for result in results:
                            model = f"{result.name} ({_short_features(fold_cfg, result.name)})"
                            record = _record(
                                base_keys[result.name], result, config=label, model=model,
                                corpus=corpus, protocol=fold_protocol, fold=fold, test=test,
                                classes=data.labels,
                            )  # fmt: skip
                            journal.add(record)
                            records.append(record)
                        say(
                            f"{label} {corpus} fold {fold} [{fold_protocol}]: baselines "
                            + ", ".join(f"{r.name} {r.metrics['ua']:.3f}" for r in results)
                            + " (UA)"
                        )
                    del data
                    gc.collect()
                bar.close()

    # One record per key: a resumed run may list a reused record twice.
    unique = list({r["key"]: r for r in records}.values())
    seconds = time.time() - started
    resumed = []
    computed = len(unique) - len(reused)
    # A resume that computed nothing only re-rendered the reports: nothing to note.
    if reused and computed:
        when = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started))
        commit = at_start.get("git_commit", "unknown")
        resumed.append(
            f"{when}: resumed with {len(reused)} finished results reused and {computed} "
            f"computed, commit {commit}"
        )
    result = {
        "format": CV_FORMAT,
        "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "commit": at_start.get("git_commit", "unknown"),
        "versions": at_start,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "configs": {label: cfg.to_dict() for cfg, label in zip(cfgs, labels, strict=True)},
        "protocol_notes": notes,
        "out_dir": str(out),
        "seconds": seconds,
        "resumed": resumed,
        "command": command,
        "groups": _summarise(unique),
        "folds": sorted(unique, key=lambda r: (r["corpus"], r["model"], r["protocol"], r["fold"])),
    }
    if previous is not None:
        # The command stays this invocation's: it names every config the results cover.
        for key in ("created", "commit", "versions", "machine"):
            result[key] = previous.get(key) or result[key]
        result["command"] = command or previous.get("command", "")
        result["seconds"] = previous["seconds"] + (seconds if computed else 0.0)
        result["resumed"] = [*previous.get("resumed", []), *result["resumed"]]
    (out / "cv.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    (out / "cv.md").write_text(reports.render_cv_markdown(result), encoding="utf-8")
    log(reports.format_cv_table(result["groups"]))
    log(f"cross-validation report: {out / 'cv.md'} (and cv.json, folds.jsonl)")
    return result


def _discard_unfinished(cfg: Config, log: Log) -> None:
    """Delete the run folder and logs of a fold interrupted before it was recorded:
    it is trained again from scratch, so every fold's numbers and timings are whole."""
    name = cfg.train.run_name or ""
    for folder in (Path(cfg.train.checkpoints_dir) / name, Path(cfg.train.experiments_dir) / name):
        if name and folder.exists():
            log(f"discarding unfinished fold {folder}")
            shutil.rmtree(folder)


def _read_previous(path: Path) -> dict[str, Any] | None:
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return previous if previous.get("format") == CV_FORMAT else None


def _release_keras() -> None:
    """Free the graphs and models of a finished fold before the next one trains."""
    import keras

    keras.backend.clear_session()
    gc.collect()
