"""Reports: terminal table, Markdown, plots and the results page, from known numbers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ser import reports
from ser.config import Config
from ser.data.corpora import Utterance
from ser.evaluation import Examples, ModelResult, build_report, classification_metrics, mean_std

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = ["neutral", "sad", "angry"]


def _result(name, kind, y_true, y_pred, corpora):
    metrics = classification_metrics(y_true, y_pred, LABELS)
    return ModelResult(
        name=name, kind=kind, title=name, features="mfcc 13 per frame", metrics=metrics,
        per_corpus={c: {"ua": 0.5, "wa": 0.5, "macro_f1": 0.5, "n": 3} for c in corpora},
        predictions=np.asarray(y_pred), fit_seconds=None if kind == "keras" else 1.25,
    )  # fmt: skip


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
    return build_report(predictor, Config(), protocol, LABELS, test, results,
                        examples={"train": 10, "val": 4, "test": 6})  # fmt: skip


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
    names = reports.write_plots(report, tmp_path, history)
    assert names == ["confusion.png", "per_class_recall.png", "training_curves.png"]
    for name in names:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
    assert reports.write_plots(report, tmp_path / ".", None) == names[:2]


def test_results_page_states_command_protocol_and_gap():
    def group(model, corpus, independent, ua):
        return {
            "corpus": corpus, "model": model, "kind": "baseline",
            "protocol": "speaker-independent, 5-fold by speaker" if independent
            else "SPEAKER-DEPENDENT, random split x5",
            "speaker_independent": independent, "folds": 2, "features": "f",
            "classes": ["neutral", "sad"], "speakers": 4,
            "ua": mean_std(ua), "wa": mean_std(ua), "macro_f1": mean_std(ua),
            "fit_seconds": mean_std([1.0, 2.0]),
        }  # fmt: skip

    result = {
        "created": "2026-01-01 00:00:00", "commit": "abcdef1234567890", "machine": "x86_64, 2 CPU",
        "seconds": 7200.0, "versions": {"python": "3.11", "git_commit": "abcdef"},
        "protocol_notes": ["ravdess: speaker-independent, 5-fold by speaker"],
        "configs": {"lstm": Config(name="lstm").to_dict()},
        "groups": [group("seed_mlp (x)", "ravdess", True, [0.4, 0.36]),
                   group("seed_mlp (x)", "ravdess", False, [0.6, 0.62])],
        "folds": [{"corpus": "ravdess", "model": "seed_mlp (x)", "protocol": "p", "fold": 0,
                   "test_speakers": ["ravdess:01"], "n": 60, "ua": 0.4, "wa": 0.41, "kind": "baseline",
                   "fit_seconds": 1.0}],
    }  # fmt: skip
    page = reports.render_results_markdown(result, "python evaluate.py --cv")
    assert "```bash\npython evaluate.py --cv\n```" in page
    assert "commit `abcdef123456`" in page and "2.0 h in total" in page
    assert "## RAVDESS: 2 classes (neutral, sad), 4 speakers" in page
    assert "| seed_mlp (x) | speaker-independent, 5-fold by speaker | 2 | 38.0 ± 2.8 |" in page
    assert "| ravdess | 61.0 ± 1.4 | 38.0 ± 2.8 | 23.0 |" in page  # the gap table


def test_ablation_table_differences_come_from_the_cv_groups():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablation", Path(__file__).resolve().parent.parent / "docs" / "ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)

    def group(corpus, model, mean, si=True):
        kind = "baseline" if model.startswith("svc") else "keras"
        return {"corpus": corpus, "model": model, "speaker_independent": si, "kind": kind,
                "protocol": "speaker-independent", "ua": {"mean": mean, "std": 0.01}}  # fmt: skip

    cv = {"groups": [
        group("tess", "dense (dense_meanstd)", 0.40),
        group("tess", "dense (dense_meanstd_spk)", 0.55),
        group("tess", "dense (dense_meanstd_spk)", 0.99, si=False),  # never read
        group("emodb", "dense (dense_meanstd_spk)", 0.70),
    ]}  # fmt: skip
    lines = ablation.render(cv).splitlines()
    row = next(line for line in lines if line.startswith("| + per-speaker z-norm"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == ["n/a", "", "55.0 ± 1.0", "+15.0", "70.0 ± 1.0", ""]
    cv["groups"].append(group("tess", "svc (x)", 0.60))
    targets = ablation.render_targets(cv).splitlines()
    tess = [c.strip() for c in next(t for t in targets if t.startswith("| tess")).strip("|").split("|")]
    assert tess == ["tess", "80", "dense (dense_meanstd_spk)", "55.0 ± 1.0", "svc (x)", "60.0 ± 1.0"]
