"""Every awkward input through the corpus reader, feature extraction and training.

Usable audio (any bit depth, channel count or rate, silence, clipping, very short
or very long clips, odd names, symlinks) must give finite features; broken input
must be skipped with a message that names the file and says why, while the rest of
the corpus is processed, and nothing partial is left in the cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ser.config import load_config
from ser.data.corpora import build_manifest
from ser.data.prepare import read_run_data
from ser.features.cache import extract_all
from tests.support import ROOT
from tests.support.badinputs import (
    BROKEN_ONLY,
    CATALOGUE,
    MIXED,
    NAME_CASES,
    expected_usable,
    observed,
    short,
    write_broken_only,
    write_corpus,
)

CASES = sorted(CATALOGUE)


@pytest.fixture(scope="module")
def custom_corpus(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("robust")
    # Every case plus enough good files for a training run with two classes.
    return root, write_corpus(root / "custom")


def overrides(root: Path, tmp: Path) -> list[str]:
    return [
        f"data.root={root}",
        "data.corpora=[custom]",
        "data.emotions=[happy, sad]",
        "split.method=random",
        "features.workers=1",
        f"features.cache_dir={tmp / 'cache'}",
        "train.epochs=1",
        f"train.checkpoints_dir={tmp / 'ck'}",
        f"train.experiments_dir={tmp / 'ex'}",
    ]


def config(root: Path, tmp: Path):
    return load_config(ROOT / "configs" / "quick.yaml", overrides(root, tmp), env={})


def test_reader_accepts_usable_and_names_every_rejected_file(custom_corpus, tmp_path):
    root, paths = custom_corpus
    lines: list[str] = []
    manifest = build_manifest(config(root, tmp_path).data, log=lines.append)
    kept = {r.path: r for r in manifest.rows}
    skipped = {s.path: s.reason for s in manifest.skipped}
    for case in CASES:
        path = str(paths[case].absolute())
        if case == "directory named like a file":
            assert path not in kept and path not in skipped  # walked as a folder, never read
            observed(case, "reader", "walked as a folder (holds no audio)")
        elif case == "NaN and Inf samples":
            # Header-level problems are caught by the reader; sample-level ones by extraction.
            assert path in kept
            observed(case, "reader", f"listed ({kept[path].duration:.2f} s; samples not read)")
        elif expected_usable(case):
            assert path in kept, f"{case}: rejected: {skipped.get(path)}"
            observed(case, "reader", f"listed ({kept[path].duration:.2f} s)")
        else:
            assert path not in kept, f"{case}: accepted"
            assert skipped.get(path), f"{case}: not reported"
            assert any(path in line for line in lines), f"{case}: no warning line names it"
            observed(case, "reader", f"skipped (named): {short(skipped[path], path)}")
    for case in NAME_CASES:
        path = str(paths[case].absolute())
        assert "_<emotion>" in skipped[path]
        assert any(path in line for line in lines), f"{case}: no warning line names it"
        observed(case, "reader", f"skipped (named): {short(skipped[path], path, limit=45)}")


def test_extraction_gives_finite_features_or_a_named_failure(custom_corpus, tmp_path):
    root, paths = custom_corpus
    cfg = config(root, tmp_path)
    targets = [str(paths[c]) for c in CASES if not paths[c].is_dir()]
    lines: list[str] = []
    features, report = extract_all(
        targets,
        cfg.features,
        16000,
        workers=1,
        cache_dir=str(tmp_path / "cache"),
        progress=False,
        log=lines.append,
    )
    failed = dict(report.failed)
    assert "NaN" in failed[str(paths["NaN and Inf samples"])]
    long = features[str(paths["10 minutes"])]
    assert long.shape[0] == pytest.approx(600 * 100, rel=0.01)  # 10 ms hop
    # No temp files or partial entries left behind.
    leftovers = [
        p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.name.startswith(".")
    ]
    assert leftovers == []
    for case in CASES:
        path = str(paths[case])
        if paths[case].is_dir():
            continue
        if expected_usable(case):
            assert path in features, f"{case}: {failed.get(path)}"
            x = features[path]
            assert x.ndim == 2 and x.shape[0] >= 1 and np.isfinite(x).all(), case
            observed(case, "extraction", f"finite features [{x.shape[0]}, {x.shape[1]}]")
        else:
            assert path in failed and failed[path], f"{case}: not reported"
            assert any(line.startswith(f"warning: skipped {path}: ") for line in lines), case
            observed(case, "extraction", f"failed (named): {short(failed[path], path)}")


def test_training_skips_bad_files_counts_them_and_finishes(custom_corpus, tmp_path, capsys):
    from ser.training import train

    root, paths = custom_corpus
    cfg = config(root, tmp_path)
    summary = train(cfg)
    out = capsys.readouterr().out
    files_only = [c for c in CASES if c != "directory named like a file"]
    bad = [c for c in files_only if not expected_usable(c)] + list(NAME_CASES)
    files = summary["files"]
    counted = files["skipped_unreadable"] + files["failed_extraction"]
    assert counted == len(bad)
    assert np.isfinite(summary["test"]["ua"])
    manifest, _, _ = read_run_data(Path(summary["run_dir"]), cfg.data, env={})
    prefix = "warning: skipped "  # extraction failures, named as the manifest names them
    lines = [line for line in out.splitlines() if line.startswith(prefix)]
    failed = {line[len(prefix) :].split(": ")[0] for line in lines}
    used = {r.path for r in manifest.rows} - failed
    for case in bad:
        assert paths[case].name in out, f"{case}: not named in the output"
        assert str(paths[case].absolute()) not in used, case
        observed(case, "train.py", f"skipped (named), one of {counted} counted")
    for case in files_only:
        if case not in bad:
            assert str(paths[case].absolute()) in used, f"{case}: not used"
            observed(case, "train.py", "used in the run")
    folder = paths["directory named like a file"]
    assert str(folder.absolute()) not in used and folder.name not in out
    observed("directory named like a file", "train.py", "walked as a folder, not counted")
    observed(MIXED, "train.py", f"finished: test UA {summary['test']['ua']:.2f}, {counted} skipped")


@pytest.mark.parametrize("broken", list(BROKEN_ONLY))
def test_training_exits_non_zero_when_nothing_usable_remains(
    custom_corpus, tmp_path, capsys, broken
):
    from ser.cli import main

    write_broken_only(tmp_path / "custom", custom_corpus[1], broken)
    sets = [x for o in overrides(tmp_path, tmp_path) for x in ("--set", o)]
    code = main(["train", "--config", str(ROOT / "configs" / "quick.yaml"), *sets])
    captured = capsys.readouterr()
    assert code != 0 and "Traceback" not in captured.err
    error = captured.err.strip().splitlines()[-1].removeprefix("error: ")
    for path in (tmp_path / "custom").iterdir():
        assert path.name in captured.out, path
    observed(BROKEN_ONLY[broken], "train.py", f"exit {code}: {short(error, tmp_path.absolute())}")
