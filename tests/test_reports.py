"""Reports: terminal table, Markdown, plots and the results page, from known numbers."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ser import reports
from ser.config import Config
from ser.data.corpora import Utterance
from ser.evaluation import Examples, ModelResult, build_report
from ser.metrics import classification_metrics, mean_std

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = ["neutral", "sad", "angry"]


def _result(name, kind, y_true, y_pred, corpora):
    metrics = classification_metrics(y_true, y_pred, LABELS)
    return ModelResult(
        name=name,
        kind=kind,
        title=name,
        features="mfcc 13 per frame",
        metrics=metrics,
        per_corpus={c: {"ua": 0.5, "wa": 0.5, "macro_f1": 0.5, "n": 3} for c in corpora},
        predictions=np.asarray(y_pred),
        fit_seconds=None if kind == "keras" else 1.25,
    )


def make_report(tmp_path: Path, speaker_independent: bool = True) -> dict:
    rows = [
        Utterance(f"/d/{i}.wav", corpus, f"{corpus}:0{i % 2}", None, LABELS[i % 3], 1.0)
        for i, corpus in enumerate(["emodb", "emodb", "emodb", "tess", "tess", "tess"])
    ]
    y_true = np.array([0, 1, 2, 0, 1, 2])
    test = Examples(rows, y_true)
    results = [
        _result("lstm", "keras", y_true, [0, 1, 1, 0, 1, 1], ["emodb", "tess"]),
        _result("svc", "baseline", y_true, [0, 1, 2, 0, 1, 1], ["emodb", "tess"]),
        _result("knn", "baseline", y_true, [2, 2, 2, 0, 0, 0], ["emodb", "tess"]),
    ]
    protocol = {
        "line": "speaker-independent (speaker split, seed 1): test speakers emodb:00"
        if speaker_independent
        else "SPEAKER-DEPENDENT random stratified split (seed 1)",
        "speaker_independent": speaker_independent,
        "method": "speaker" if speaker_independent else "random",
        "train_speakers": ["emodb:03", "tess:OAF"],
        "val_speakers": ["emodb:08"],
        "test_speakers": test.speakers,
        "val_utterances_from_train_speakers": 7,
    }
    predictor = SimpleNamespace(run_dir=tmp_path)
    return build_report(
        predictor,
        Config(),
        protocol,
        LABELS,
        test,
        results,
        examples={"train": 10, "val": 4, "test": 6},
    )


def test_table_ranks_by_ua_and_names_the_protocol(tmp_path):
    report = make_report(tmp_path)
    assert [r["name"] for r in report["ranking"]] == ["svc", "lstm", "knn"]
    text = reports.format_table(report)
    lines = text.splitlines()
    assert "speaker-independent" in lines[0] and lines[1].startswith("protocol: ")
    ranked = [line.split()[1] for line in lines if line.strip()[:1].isdigit()]
    assert ranked == ["svc", "lstm", "knn"]
    svc = next(line for line in lines if " svc " in line)
    assert "83.3" in svc  # UA of svc: (1 + 1 + 0.5) / 3
    assert "UA = unweighted accuracy" in text
    assert "SPEAKER-DEPENDENT" not in text


def test_speaker_dependent_report_says_so_everywhere(tmp_path):
    report = make_report(tmp_path, speaker_independent=False)
    assert "WARNING: SPEAKER-DEPENDENT" in reports.format_table(report)
    assert "> **SPEAKER-DEPENDENT split" in reports.render_markdown(report)


def test_markdown_has_protocol_speakers_ranking_and_per_class_tables(tmp_path):
    report = make_report(tmp_path)
    md = reports.render_markdown(report, ["confusion.png"])
    assert "- train speakers (2): emodb:03, tess:OAF" in md
    assert "- validation speakers (1): emodb:08 + 7 validation utterances" in md
    assert "- test speakers (4): emodb:00, emodb:01, tess:00, tess:01" in md
    assert "| 1 | svc | 83.3 |" in md
    assert "## Per corpus (test split)" in md  # two corpora in the test split
    assert "| neutral | 100.0 | 100.0 | 100.0 | 2 |" in md  # lstm: both neutrals right
    assert "## Recall per class, every model (%)" in md
    assert "![confusion](confusion.png)" in md


def test_plots_are_png_files(tmp_path):
    report = make_report(tmp_path)
    history = tmp_path / "history.csv"
    history.write_text(
        "epoch,accuracy,loss,val_accuracy,val_loss,val_ua\n0,0.3,1.9,0.3,1.8,0.25\n"
        "1,0.5,1.5,0.4,1.6,0.35\n2,0.6,1.2,0.45,1.5,0.4\n"
    )
    report["model"]["best_epoch"] = 3
    names, skipped = reports.write_plots(report, tmp_path, [history])
    assert names == ["confusion.png", "per_class_recall.png", "training_curves.png"]
    assert skipped == {}
    for name in names:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
    names_without, skipped = reports.write_plots(report, tmp_path / ".", [])
    assert names_without == names[:2]
    assert "training_curves.png" in skipped and "history.csv" in skipped["training_curves.png"]


def test_results_page_states_command_protocol_and_gap():
    def group(model, corpus, independent, ua):
        return {
            "corpus": corpus,
            "model": model,
            "kind": "baseline",
            "protocol": "speaker-independent, 5-fold by speaker"
            if independent
            else "SPEAKER-DEPENDENT, random split x5",
            "speaker_independent": independent,
            "folds": 2,
            "features": "f",
            "classes": ["neutral", "sad"],
            "speakers": 4,
            "ua": mean_std(ua),
            "wa": mean_std(ua),
            "macro_f1": mean_std(ua),
            "fit_seconds": mean_std([1.0, 2.0]),
        }

    result = {
        "created": "2026-01-01 00:00:00",
        "commit": "abcdef1234567890",
        "machine": "x86_64, 2 CPU",
        "seconds": 7200.0,
        "versions": {"python": "3.11", "git_commit": "abcdef"},
        "protocol_notes": ["ravdess: speaker-independent, 5-fold by speaker"],
        "configs": {"lstm": Config(name="lstm").to_dict()},
        "groups": [
            group("seed_mlp (x)", "ravdess", True, [0.4, 0.36]),
            group("seed_mlp (x)", "ravdess", False, [0.6, 0.62]),
        ],
        "folds": [
            {
                "corpus": "ravdess",
                "model": "seed_mlp (x)",
                "protocol": "p",
                "fold": 0,
                "test_speakers": ["ravdess:01"],
                "n": 60,
                "ua": 0.4,
                "wa": 0.41,
                "kind": "baseline",
                "fit_seconds": 1.0,
            }
        ],
    }
    page = reports.render_results_markdown(result, "python evaluate.py --cv")
    assert "```bash\npython evaluate.py --cv\n```" in page
    assert "commit `abcdef123456`" in page and "2.0 h in total" in page
    assert "## RAVDESS: 2 classes (neutral, sad), 4 speakers" in page
    assert "| seed_mlp (x) | speaker-independent, 5-fold by speaker | 2 | 38.0 ± 2.8 |" in page
    assert "| ravdess | 61.0 ± 1.4 | 38.0 ± 2.8 | 23.0 |" in page  # the gap table


def test_served_accuracy_finds_the_fold_runs_of_a_config_or_of_a_study(tmp_path):
    import importlib.util

    generator = Path(__file__).resolve().parents[1] / "docs" / "generators" / "served_accuracy.py"
    spec = importlib.util.spec_from_file_location("served_accuracy", generator)
    served_accuracy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(served_accuracy)

    def finish(config, corpus, fold):
        run = tmp_path / "study" / config / corpus / f"fold{fold}"
        run.mkdir(parents=True)
        (run / "summary.json").write_text("{}", encoding="utf-8")

    study = tmp_path / "study"
    finish("lstm_a", "emodb", 0)
    finish("lstm_a", "emodb", 1)
    finish("lstm_a", "ravdess", 0)
    (study / "lstm_a" / "ravdess" / "fold1").mkdir()  # unfinished: no summary.json
    for given in (study / "lstm_a", study):
        config_dir, folds = served_accuracy.fold_runs(given)
        assert config_dir == study / "lstm_a"
        assert {c: [f.name for f in fs] for c, fs in folds.items()} == {
            "emodb": ["fold0", "fold1"],
            "ravdess": ["fold0"],
        }
    finish("lstm_b", "emodb", 0)
    with pytest.raises(SystemExit, match="several configs' fold runs; name one of: .*lstm_a"):
        served_accuracy.fold_runs(study)
    with pytest.raises(SystemExit, match="no finished fold runs"):
        served_accuracy.fold_runs(study / "lstm_a" / "emodb")
    with pytest.raises(SystemExit, match="no such folder"):
        served_accuracy.fold_runs(tmp_path / "missing")


def test_ablation_table_differences_come_from_the_cv_groups():
    import importlib.util

    generator = Path(__file__).resolve().parents[1] / "docs" / "generators" / "ablation.py"
    spec = importlib.util.spec_from_file_location("ablation", generator)
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)

    def group(corpus, model, mean, si=True):
        kind = "baseline" if model.startswith("svc") else "keras"
        return {
            "corpus": corpus,
            "model": model,
            "speaker_independent": si,
            "kind": kind,
            "protocol": "speaker-independent",
            "ua": {"mean": mean, "std": 0.01},
        }

    cv = {
        "groups": [
            group("tess", "dense (dense_meanstd)", 0.40),
            group("tess", "dense (dense_meanstd_spk)", 0.55),
            group("tess", "dense (dense_meanstd_spk)", 0.99, si=False),  # never read
            group("emodb", "dense (dense_meanstd_spk)", 0.70),
        ]
    }
    lines = ablation.render(cv).splitlines()
    row = next(line for line in lines if line.startswith("| + per-speaker z-norm"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == ["n/a", "", "55.0 ± 1.0", "+15.0", "70.0 ± 1.0", ""]
    cv["groups"].append(group("tess", "svc (x)", 0.60))
    targets = ablation.render_targets(cv).splitlines()
    tess = [
        c.strip() for c in next(t for t in targets if t.startswith("| tess")).strip("|").split("|")
    ]
    assert tess == [
        "tess",
        "80",
        "dense (dense_meanstd_spk)",
        "55.0 ± 1.0",
        "svc (x)",
        "60.0 ± 1.0",
    ]


# ------------------------------------------------- fixed inputs, pages as rendered before
# The expected pages below were rendered from these inputs before render_markdown and
# render_results_markdown were split into one function per section: the split must not
# change a byte.


def _scores(recalls, f1s, support):
    return {
        label: {"precision": r, "recall": r, "f1": f, "support": s}
        for label, r, f, s in zip(LABELS, recalls, f1s, support, strict=True)
    }


def _model(name, kind, ua, recalls, **extra):
    model = {
        "name": name,
        "kind": kind,
        "title": f"{name} title",
        "features": "mfcc 13 per frame",
        "ua": ua,
        "wa": ua + 0.05,
        "macro_f1": ua - 0.05,
        "fit_seconds": None if kind == "keras" else 0.5,
        "per_corpus": {"emodb": {"ua": ua, "wa": 0.5}, "tess": {"ua": 0.25, "wa": 0.75}},
        "per_class": _scores(recalls, [0.5, float("nan"), 1.0], [2, 2, 2]),
        "confusion": [[2, 0, 0], [0, 1, 1], [1, 0, 1]],
        "params": {},
        "grid": None,
        "notes": [],
    }
    model.update(extra)
    return model


def evaluation_report(cross_corpus: bool) -> dict:
    """A report dict reaching every section of ``render_markdown`` (cross_corpus) or the fewest."""
    models = [_model("lstm", "keras", 0.6667, [1.0, 0.5, 0.5])]
    if cross_corpus:
        models += [
            _model(
                "svc",
                "baseline",
                0.8333,
                [1.0, 1.0, 0.5],
                params={"C": 1.0, "kernel": "rbf"},
                grid={"best": {"C": 10}, "best_cv_ua": 0.71, "folds": "3 speaker folds"},
                notes=["refit on all training speakers"],
            ),
            _model(
                "knn",
                "baseline",
                0.3333,
                [0.0, 0.5, 0.5],
                params={"k": 5},
                fit_seconds=12.25,
                per_corpus={"emodb": {"ua": 0.1, "wa": 0.2}},
            ),
        ]
    ranked = sorted(models, key=lambda m: -m["ua"])
    protocol = {
        "line": "cross-corpus: trained on ravdess, tested on emodb+tess"
        if cross_corpus
        else "SPEAKER-DEPENDENT random stratified split (seed 1)",
        "speaker_independent": cross_corpus,
        "method": "cross-corpus" if cross_corpus else "random",
        "train_speakers": ["ravdess:01", "ravdess:02"] if cross_corpus else [],
        "val_speakers": ["ravdess:03"] if cross_corpus else [],
        "test_speakers": ["emodb:03", "tess:OAF"],
        "val_utterances_from_train_speakers": 7 if cross_corpus else 0,
    }
    return {
        "kind": "cross-corpus" if cross_corpus else "run",
        "run": "20260101-lstm",
        "created": "2026-01-01 00:00:00 +0000",
        "commit": {"evaluation": "0123456789abcdef", "training": "fedcba9876543210"},
        "protocol": protocol,
        "labels": LABELS,
        "examples": {"train": 10, "val": 4, "test": 6} if cross_corpus else {"test": 6},
        "test_by_corpus": {"emodb": 3, "tess": 3} if cross_corpus else {"emodb": 6},
        "data": "/data (moved from /old)" if cross_corpus else "as trained",
        "model": {"best_epoch": [12, 9, 15], "best_value": 0.61234, "monitor": "val_ua"}
        if cross_corpus
        else {"best_epoch": 4, "best_value": 0.5, "monitor": "val_ua"},
        "models": models,
        "ranking": [
            {
                "rank": i + 1,
                "name": m["name"],
                "ua": m["ua"],
                "wa": m["wa"],
                "macro_f1": m["macro_f1"],
            }
            for i, m in enumerate(ranked)
        ],
    }


def _group(model, corpus, independent, ua, kind="baseline"):
    summary = {"n": 2, "mean": ua, "std": 0.012}
    return {
        "corpus": corpus,
        "model": model,
        "kind": kind,
        "protocol": "speaker-independent, 5-fold by speaker"
        if independent
        else "SPEAKER-DEPENDENT, random split x5",
        "speaker_independent": independent,
        "folds": 2,
        "classes": ["neutral", "sad"],
        "speakers": 4,
        "ua": summary,
        "wa": summary,
        "macro_f1": {"n": 0},
        "fit_seconds": {"n": 2, "mean": 0.25} if kind == "baseline" else {"n": 0},
    }


def _fold(model, corpus, kind, fold, **extra):
    row = {
        "corpus": corpus,
        "model": model,
        "protocol": "p",
        "fold": fold,
        "kind": kind,
        "test_speakers": [f"{corpus}:0{fold}", f"{corpus}:1{fold}"],
        "n": 60,
        "ua": 0.4,
        "wa": float("nan"),
        "fit_seconds": 12.5,
    }
    row.update(extra)
    return row


def cv_result(resumed: bool) -> dict:
    """A ``cross_validate`` result reaching every branch of the results page."""
    lstm = Config(name="lstm").to_dict()
    dense = Config(name="dense").to_dict()
    dense["train"]["early_stopping"]["enabled"] = False
    return {
        "created": "2026-01-01 00:00:00 +0000",
        "commit": "abcdef1234567890",
        "machine": "x86_64, 2 CPU",
        "seconds": 5400.0 if resumed else 7200.0,
        "versions": {"python": "3.11", "git_commit": "abcdef", "keras": "3.0"},
        "resumed": ["2026-01-01 01:00:00: resumed with 3 results reused"] if resumed else [],
        "protocol_notes": [
            "ravdess: speaker-independent, 5-fold by speaker",
            "emodb: speaker-independent, leave-one-speaker-out",
        ],
        "configs": {"lstm": lstm, "dense": dense},
        "groups": [
            _group("seed_mlp (x)", "ravdess", True, 0.4),
            _group("seed_mlp (x)", "ravdess", False, 0.6),
            _group("seed_mlp (x)", "emodb", True, 0.5),
            _group("lstm", "emodb", True, 0.55, "keras"),
            _group("seed_mlp (x)", "tess+emodb", False, 0.9),
        ]
        if resumed
        else [_group("lstm", "emodb", True, 0.55, "keras")],
        "folds": [
            _fold("lstm", "emodb", "keras", 0, train_seconds=14.0, best_epoch=7),
            _fold(
                "lstm", "emodb", "keras", 1, train_seconds=0.5, best_epoch=[3, 4], fit_seconds=None
            ),
            _fold("seed_mlp (x)", "ravdess", "baseline", 0, fit_seconds=0.04),
        ]
        if resumed
        else [_fold("seed_mlp (x)", "ravdess", "baseline", 0)],
    }


CROSS_CORPUS_REPORT_MD = r"""
# Cross-corpus evaluation: 20260101-lstm

**Protocol (cross-corpus (unseen corpus)):** cross-corpus: trained on ravdess, tested on emodb+tess

- train speakers (2): ravdess:01, ravdess:02
- validation speakers (1): ravdess:03 + 7 validation utterances of training speakers (corpus too small for a validation speaker)
- test speakers (2): emodb:03, tess:OAF
- examples: train 10, val 4, test 6 (test by corpus: emodb 3, tess 3)
- classes (3): neutral, sad, angry
- checkpoint: a seed ensemble of 3 members averaging their probabilities, each at its best epoch on val_ua (12/9/15); the ensemble's val_ua 0.6123 on the validation split
- data: /data (moved from /old)
- evaluated 2026-01-01 00:00:00 +0000; commit 0123456789ab (trained at fedcba987654)

## Ranking on the test split

| rank | model | UA % | WA % | macro-F1 % | fit s | features |
|---|---|---|---|---|---|---|
| 1 | svc | 83.3 | 88.3 | 78.3 | 0.50 | mfcc 13 per frame |
| 2 | lstm (this run) | 66.7 | 71.7 | 61.7 |  | mfcc 13 per frame |
| 3 | knn | 33.3 | 38.3 | 28.3 | 12.2 | mfcc 13 per frame |

UA = unweighted accuracy (balanced accuracy: mean of per-class recalls); WA = weighted accuracy (plain accuracy over utterances). Ranked on the test split for reporting only: nothing was selected on it (the Keras checkpoint was chosen on validation UA; baseline hyper-parameters are fixed in the config or searched on training speakers only).

## Per corpus (test split)

| model | emodb UA % / WA % | tess UA % / WA % |
|---|---|---|
| lstm (this run) | 66.7 / 50.0 | 25.0 / 75.0 |
| svc | 83.3 / 50.0 | 25.0 / 75.0 |
| knn | 10.0 / 20.0 |  |

## Per class: lstm (this run)

| class | precision % | recall % | F1 % | support |
|---|---|---|---|---|
| neutral | 100.0 | 100.0 | 50.0 | 2 |
| sad | 50.0 | 50.0 | n/a | 2 |
| angry | 50.0 | 50.0 | 100.0 | 2 |

## Recall per class, every model (%)

| class | lstm (this run) | svc | knn |
|---|---|---|---|
| neutral | 100.0 | 100.0 | 0.0 |
| sad | 50.0 | 100.0 | 50.0 |
| angry | 50.0 | 50.0 | 50.0 |

## Confusion matrix: lstm (this run)

Rows: true class; columns: predicted.

| true \ predicted | neutral | sad | angry |
|---|---|---|---|
| neutral | 2 | 0 | 0 |
| sad | 0 | 1 | 1 |
| angry | 1 | 0 | 1 |

## Plots

![confusion](confusion.png)
![per_class_recall](plots/per_class_recall.png)

## Baseline settings

| baseline | parameters | grid search (training speakers only) |
|---|---|---|
| svc title | C=1.0, kernel=rbf | best {'C': 10}, cv UA 71.0 (3 speaker folds) |
| knn title | k=5 | no |

Baselines are not saved (no pickles); rerun the evaluation to refit them.

## Notes

- svc: refit on all training speakers
"""[1:]

SPEAKER_DEPENDENT_REPORT_MD = r"""
# Evaluation: 20260101-lstm

> **SPEAKER-DEPENDENT split: the test speakers were also heard in training, so these numbers overstate how the model does on new voices.**

**Protocol (SPEAKER-DEPENDENT):** SPEAKER-DEPENDENT random stratified split (seed 1)

- train speakers (0): none
- validation speakers (0): none
- test speakers (2): emodb:03, tess:OAF
- examples: test 6 (test by corpus: emodb 6)
- classes (3): neutral, sad, angry
- checkpoint: epoch 4, chosen on val_ua (0.5000) of the validation split
- data: as trained
- evaluated 2026-01-01 00:00:00 +0000; commit 0123456789ab (trained at fedcba987654)

## Ranking on the test split

| rank | model | UA % | WA % | macro-F1 % | fit s | features |
|---|---|---|---|---|---|---|
| 1 | lstm (this run) | 66.7 | 71.7 | 61.7 |  | mfcc 13 per frame |

UA = unweighted accuracy (balanced accuracy: mean of per-class recalls); WA = weighted accuracy (plain accuracy over utterances). Ranked on the test split for reporting only: nothing was selected on it (the Keras checkpoint was chosen on validation UA; baseline hyper-parameters are fixed in the config or searched on training speakers only).

## Per class: lstm (this run)

| class | precision % | recall % | F1 % | support |
|---|---|---|---|---|
| neutral | 100.0 | 100.0 | 50.0 | 2 |
| sad | 50.0 | 50.0 | n/a | 2 |
| angry | 50.0 | 50.0 | 100.0 | 2 |

## Confusion matrix: lstm (this run)

Rows: true class; columns: predicted.

| true \ predicted | neutral | sad | angry |
|---|---|---|---|
| neutral | 2 | 0 | 0 |
| sad | 0 | 1 | 1 |
| angry | 1 | 0 | 1 |
"""[1:]

RESUMED_RESULTS_PAGE = r"""
# Results: speaker-independent cross-validation

Every number on this page comes from one run of:

```bash
python evaluate.py --cv
```

Generated 2026-01-01 00:00:00 +0000, commit `abcdef123456`, x86_64, 2 CPU, 1.5 h over its invocations. python 3.11, keras 3.0
Note: 2026-01-01 01:00:00: resumed with 3 results reused.

## Protocol

- Each corpus is cross-validated on its own: the model never hears a test speaker. Folds are drawn by `ser.data.splits` (speakers round-robin within gender groups, seeded); a corpus with fewer speakers than folds (TESS, 2 speakers) is cross-validated leave-one-speaker-out.
- In each fold, validation speakers come from the training side only (for TESS, whose one training speaker cannot spare a validation speaker, a stratified sample of that speaker's utterances) and select the Keras checkpoint by validation UA. Normalisation statistics come from the training speakers only.
- Baselines fit on the same training rows, with the hyper-parameters fixed in `configs/base.yaml` (`evaluation:`), on pooled statistics (mean and std over frames) of the same cached frame features as the Keras config they are listed with; the seed recipe uses its own 180 utterance means (MFCC 40, chroma 12, mel 128). Nothing is selected on a test fold.
- Rows marked SPEAKER-DEPENDENT are random stratified splits of the same corpus (baselines only), shown to measure the gap: their test speakers were heard in training.
- ravdess: speaker-independent, 5-fold by speaker
- emodb: speaker-independent, leave-one-speaker-out
- `lstm`: model lstm, features mfcc (sequence), up to 60 epochs (early stopping patience 12), batch 32, learning rate 0.001, seed 42
- `dense`: model lstm, features mfcc (sequence), up to 60 epochs (early stopping patience off), batch 32, learning rate 0.001, seed 42
- UA = unweighted accuracy (balanced accuracy: mean of per-class recalls); WA = weighted accuracy (plain accuracy over utterances). Mean ± sample standard deviation across folds; fit s / fold: wall-clock seconds of `model.fit` (Keras, including validation each epoch) or of the scikit-learn fit, per fold, on the machine above, which other jobs shared: timings are indicative.

## EMO-DB: 2 classes (neutral, sad), 4 speakers

| model | protocol | folds | UA % (mean ± std) | WA % (mean ± std) | macro-F1 % | fit s / fold |
|---|---|---|---|---|---|---|
| seed_mlp (x) | speaker-independent, 5-fold by speaker | 2 | 50.0 ± 1.2 | 50.0 ± 1.2 | n/a | 0.25 |
| lstm | speaker-independent, 5-fold by speaker | 2 | 55.0 ± 1.2 | 55.0 ± 1.2 | n/a |  |

## RAVDESS: 2 classes (neutral, sad), 4 speakers

| model | protocol | folds | UA % (mean ± std) | WA % (mean ± std) | macro-F1 % | fit s / fold |
|---|---|---|---|---|---|---|
| seed_mlp (x) | speaker-independent, 5-fold by speaker | 2 | 40.0 ± 1.2 | 40.0 ± 1.2 | n/a | 0.25 |
| seed_mlp (x) | SPEAKER-DEPENDENT, random split x5 | 2 | 60.0 ± 1.2 | 60.0 ± 1.2 | n/a | 0.25 |

## TESS+EMO-DB: 2 classes (neutral, sad), 0 speakers

| model | protocol | folds | UA % (mean ± std) | WA % (mean ± std) | macro-F1 % | fit s / fold |
|---|---|---|---|---|---|---|
| seed_mlp (x) | SPEAKER-DEPENDENT, random split x5 | 2 | 90.0 ± 1.2 | 90.0 ± 1.2 | n/a | 0.25 |

## The speaker-dependent gap: the seed recipe

| corpus | UA %, random split (SPEAKER-DEPENDENT) | UA %, unseen speakers | gap (points) |
|---|---|---|---|
| ravdess | 60.0 ± 1.2 | 40.0 ± 1.2 | 20.0 |

For comparison, the upstream code's own recipe, run on these corpora, scored 59 % UA with a random split vs 37.5 % with unseen actors on RAVDESS, and 99.7 % vs 30 % on TESS. The seed recipe here re-implements it with this project's extractors (log-mel in dB, hence standardised, 16 kHz audio), so the numbers differ a little; the gap is the point.

## Per fold: Keras models

fit s: `model.fit` wall-clock seconds of the fold (train split, with validation after each epoch); total s adds data preparation and the test evaluation.

| corpus | model | protocol | fold | test speakers | test n | UA % | WA % | fit s | total s | best epoch |
|---|---|---|---|---|---|---|---|---|---|---|
| emodb | lstm | p | 0 | emodb:00, emodb:10 | 60 | 40.0 | n/a | 12.5 | 14.0 | 7 |
| emodb | lstm | p | 1 | emodb:01, emodb:11 | 60 | 40.0 | n/a |  | 0.50 | 3/4 |

## Per fold: baselines

<details><summary>every fold of every baseline</summary>

| corpus | model | protocol | fold | test speakers | test n | UA % | WA % | fit s |
|---|---|---|---|---|---|---|---|---|
| ravdess | seed_mlp (x) | p | 0 | ravdess:00, ravdess:10 | 60 | 40.0 | n/a | 0.04 |

</details>
"""[1:]

BASELINE_ONLY_RESULTS_PAGE = r"""
# Results: speaker-independent cross-validation

Every number on this page comes from one run of:

```bash
python evaluate.py --cv
```

Generated 2026-01-01 00:00:00 +0000, commit `abcdef123456`, x86_64, 2 CPU, 2.0 h in total. python 3.11, keras 3.0

## Protocol

- Each corpus is cross-validated on its own: the model never hears a test speaker. Folds are drawn by `ser.data.splits` (speakers round-robin within gender groups, seeded); a corpus with fewer speakers than folds (TESS, 2 speakers) is cross-validated leave-one-speaker-out.
- In each fold, validation speakers come from the training side only (for TESS, whose one training speaker cannot spare a validation speaker, a stratified sample of that speaker's utterances) and select the Keras checkpoint by validation UA. Normalisation statistics come from the training speakers only.
- Baselines fit on the same training rows, with the hyper-parameters fixed in `configs/base.yaml` (`evaluation:`), on pooled statistics (mean and std over frames) of the same cached frame features as the Keras config they are listed with; the seed recipe uses its own 180 utterance means (MFCC 40, chroma 12, mel 128). Nothing is selected on a test fold.
- Rows marked SPEAKER-DEPENDENT are random stratified splits of the same corpus (baselines only), shown to measure the gap: their test speakers were heard in training.
- ravdess: speaker-independent, 5-fold by speaker
- emodb: speaker-independent, leave-one-speaker-out
- `lstm`: model lstm, features mfcc (sequence), up to 60 epochs (early stopping patience 12), batch 32, learning rate 0.001, seed 42
- `dense`: model lstm, features mfcc (sequence), up to 60 epochs (early stopping patience off), batch 32, learning rate 0.001, seed 42
- UA = unweighted accuracy (balanced accuracy: mean of per-class recalls); WA = weighted accuracy (plain accuracy over utterances). Mean ± sample standard deviation across folds; fit s / fold: wall-clock seconds of `model.fit` (Keras, including validation each epoch) or of the scikit-learn fit, per fold, on the machine above, which other jobs shared: timings are indicative.

## EMO-DB: 2 classes (neutral, sad), 4 speakers

| model | protocol | folds | UA % (mean ± std) | WA % (mean ± std) | macro-F1 % | fit s / fold |
|---|---|---|---|---|---|---|
| lstm | speaker-independent, 5-fold by speaker | 2 | 55.0 ± 1.2 | 55.0 ± 1.2 | n/a |  |


## Per fold: baselines

<details><summary>every fold of every baseline</summary>

| corpus | model | protocol | fold | test speakers | test n | UA % | WA % | fit s |
|---|---|---|---|---|---|---|---|---|
| ravdess | seed_mlp (x) | p | 0 | ravdess:00, ravdess:10 | 60 | 40.0 | n/a | 12.5 |

</details>
"""[1:]


def test_a_cross_corpus_report_says_why_it_has_no_training_curves(tmp_path):
    report = evaluation_report(cross_corpus=True)
    history = tmp_path / "history.csv"
    history.write_text("epoch,loss\n0,1.5\n")
    names, skipped = reports.write_plots(report, tmp_path, [history])
    assert names == ["confusion.png", "per_class_recall.png"]
    assert "cross-corpus" in skipped["training_curves.png"]
    markdown = reports.render_markdown(report, names, skipped)
    assert "- training_curves.png not drawn: a cross-corpus evaluation" in markdown


def test_report_markdown_is_unchanged_section_by_section():
    cross_corpus = reports.render_markdown(
        evaluation_report(cross_corpus=True), ["confusion.png", "plots/per_class_recall.png"]
    )
    assert cross_corpus == CROSS_CORPUS_REPORT_MD
    assert reports.render_markdown(evaluation_report(cross_corpus=False)) == (
        SPEAKER_DEPENDENT_REPORT_MD
    )


def test_results_page_is_unchanged_section_by_section():
    command = "python evaluate.py --cv"
    assert reports.render_results_markdown(cv_result(resumed=True), command) == (
        RESUMED_RESULTS_PAGE
    )
    assert reports.render_results_markdown(cv_result(resumed=False), command) == (
        BASELINE_ONLY_RESULTS_PAGE
    )


def _sections(markdown: str) -> list[str]:
    """A page's level-2 headings, each run of per-corpus headings as one ``corpus``."""
    out: list[str] = []
    for line in markdown.splitlines():
        if line.startswith("## "):
            name = "corpus" if re.match(r"## [A-Z+-]+: \d+ classes", line) else line
            if out[-1:] != [name]:
                out.append(name)
    return out


def test_checked_in_detail_pages_have_the_shape_the_results_page_renders():
    """docs/results/*.md are what ``--cv --results`` writes (a regenerated page replaces
    one like for like), each with its command, and docs/RESULTS.md links to each."""
    docs = Path(__file__).resolve().parents[1] / "docs"
    summary = (docs / "RESULTS.md").read_text(encoding="utf-8")
    assert len(summary.splitlines()) <= 200
    rendered = reports.render_results_markdown(
        cv_result(resumed=True), "python evaluate.py --cv", conditions="| condition |"
    )
    every_section = _sections(rendered)
    pages = sorted((docs / "results").glob("*.md"))
    assert pages
    for page in pages:
        text = page.read_text(encoding="utf-8")
        sections = _sections(text)
        assert sections[:2] == ["## Protocol", "corpus"]
        assert [s for s in every_section if s in sections] == sections  # none else, same order
        command = text.split("```bash\n")[1].split("\n```")[0]
        assert command.startswith("SER_DATA_ROOT=") and " --cv " in command
        assert f"(results/{page.name})" in summary


def test_the_checkpoint_line_says_when_the_network_was_distilled_and_refit():
    from ser.reports import _checkpoint_line

    model = {"best_epoch": 7, "best_value": 0.75, "monitor": "val_ua"}
    assert _checkpoint_line(model) == [
        "- checkpoint: epoch 7, chosen on val_ua (0.7500) of the validation split"
    ]
    refit = {**model, "distilled": True, "refit": {"epochs": 7, "speakers": 9}}
    (line,) = _checkpoint_line(refit)
    assert line.startswith("- checkpoint: a network distilled from a seed ensemble, epoch 7")
    assert line.endswith(
        "then trained again from the start on the training and validation speakers "
        "(9, with their copies) for those 7 epochs: that network is evaluated"
    )


def test_ensemble_members_scores_each_member_and_the_runs_own_model(tmp_path_factory, capsys):
    """``ensemble_members.py`` on a seed ensemble's fold run: one column per member,
    their average, and the run's model, which for a plain ensemble is that average."""
    import importlib.util

    from tests.support.tiny_run import tiny_run

    generators = Path(__file__).resolve().parents[1] / "docs" / "generators"
    spec = importlib.util.spec_from_file_location(
        "ensemble_members", generators / "ensemble_members.py"
    )
    members = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(members)
    run = tiny_run(tmp_path_factory, "dense", ensemble=2)
    study = tmp_path_factory.mktemp("study") / "dense_ens" / "emodb"
    study.mkdir(parents=True)
    (study / "fold0").symlink_to(run, target_is_directory=True)
    assert members.main([str(study.parent)]) == 0
    out = capsys.readouterr().out
    assert (
        "| emodb | member 0 (seed +0) | member 1 (seed +1) | members' average | run's model |"
        in out
    )
    row = next(line for line in out.splitlines() if line.startswith("| fold0 |"))
    values = [float(v) for v in row.strip("| ").split(" | ")[1:]]
    assert (
        len(values) == 4 and values[2] == values[3] and 0.0 <= min(values) <= max(values) <= 100.0
    )


def test_early_stopping_patience_replays_a_history_as_training_stops(tmp_path, capsys):
    """``early_stopping_patience.py``: the epoch each patience keeps and the epochs it
    trains, as ``EpochReport`` (float64, first best on ties) and Keras's EarlyStopping
    (float32) decide them."""
    import importlib.util

    generators = Path(__file__).resolve().parents[1] / "docs" / "generators"
    spec = importlib.util.spec_from_file_location(
        "early_stopping_patience", generators / "early_stopping_patience.py"
    )
    patience = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(patience)
    # Best at epoch 3, a tie at 5, a later best at 7; trained with patience 5 to epoch 12.
    ua = [0.5, 0.6, 0.7, 0.6, 0.7, 0.65, 0.72, 0.7, 0.7, 0.7, 0.7, 0.7]
    assert patience.stop(ua, 5) == (7, 12)
    assert patience.stop(ua, 3) == (3, 6)  # stops after epoch 6, before the later best
    assert patience.stop(ua, 20) == (7, 12)  # the history ends first
    # Two UAs equal in float32 but not in float64 (as two confusion matrices can give):
    # the checkpoint moves to the later one, early stopping counts from the earlier.
    tied = [0.5, 0.6510416666666666, 0.6, 0.6510416666666667, 0.6, 0.6, 0.6]
    assert patience.stop(tied, 4) == (4, 6)
    run = tmp_path / "study" / "cfg" / "emodb" / "fold0"
    run.mkdir(parents=True)
    rows = ["epoch,val_ua"] + [f"{i},{u}" for i, u in enumerate(ua)]
    (run / "history.csv").write_text("\n".join(rows) + "\n")
    runs = patience.histories(run.parents[1], member=0)
    assert runs == [("emodb/fold0", ua)]
    table = patience.render(runs, trained_with=5, patience=[3, 5])
    assert "| emodb/fold0 | 12 | 7 | **3** / 6 | 7 / 12 |" in table
    assert "patience 3: the run's own epoch kept on 0 of 1 folds; 6 epochs fewer" in table


def test_the_results_page_carries_the_recording_conditions_table_when_given():
    """``--cv --perturb --results``: the conditions table is on the page, after the
    speaker-dependent gap and before the folds; without ``--perturb`` there is none."""
    table = "| condition | mode | emodb UA % | Δ |\n|---|---|---:|---:|\n| clean | alone | 60.0 ± 1.0 |  |"
    page = reports.render_results_markdown(cv_result(resumed=False), "cmd", conditions=table)
    assert "## Recording conditions" in page and table in page
    assert page.index("## Recording conditions") < page.index("## Per fold")
    plain = reports.render_results_markdown(cv_result(resumed=False), "cmd")
    assert "## Recording conditions" not in plain
