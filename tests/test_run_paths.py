"""A run's saved paths are relative to the data root: the run and the corpora can move."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ser.config import DATA_ROOT_ENV, DataConfig, SplitConfig
from ser.data.corpora import CorpusNotFoundError, Manifest, build_manifest
from ser.data.prepare import locate_corpus, read_saved_split, save_run_data
from ser.data.splits import Split, make_split
from ser.evaluation import evaluate_run
from ser.training import train
from tests.support.fakes import make_emodb, write_bytes
from tests.support.tiny_run import tiny_config

QUIET = {"log": lambda _line: None}


def saved_run(root: Path, run_dir: Path) -> tuple[Manifest, Split]:
    """A manifest of a generated EMO-DB under ``root`` and a random split of it, saved
    into ``run_dir`` as training saves them; returns what was saved (absolute paths)."""
    make_emodb(root)
    write_bytes(root / "emodb" / "wav" / "99x99Xx.wav")  # a skipped file
    data = DataConfig(root=str(root), corpora=["emodb"])
    manifest = build_manifest(data, log=lambda _: None)
    split = make_split(manifest.rows, SplitConfig(method="random"), seed=1)
    run_dir.mkdir(parents=True)
    save_run_data(run_dir, manifest, split, data)
    return manifest, split


def load_saved(run_dir: Path) -> tuple[Manifest, Split]:
    return (
        Manifest.load(run_dir / "manifest.jsonl"),
        Split.from_dict(json.loads((run_dir / "split.json").read_text())),
    )


def test_saved_paths_are_relative_and_name_the_data_root(tmp_path):
    root = tmp_path / "A"
    manifest, split = saved_run(root, tmp_path / "run")
    saved_manifest, saved_split = load_saved(tmp_path / "run")
    assert saved_manifest.data_root == saved_split.data_root == str(root)
    assert [r.path for r in saved_manifest.rows] == [
        str(Path(r.path).relative_to(root)) for r in manifest.rows
    ]
    assert saved_manifest.rows[0].path.startswith("emodb/wav/")
    assert saved_manifest.skipped[0].path == "emodb/wav/99x99Xx.wav"
    assert saved_split.test_paths and all(p.startswith("emodb/") for p in saved_split.test_paths)
    assert len(saved_split.val_paths) == len(split.val_paths)
    text = (tmp_path / "run" / "split.json").read_text() + (
        tmp_path / "run" / "manifest.jsonl"
    ).read_text()
    assert text.count(str(root)) == 2  # only the two data_root entries


def test_relative_paths_resolve_against_the_data_root_given_now(tmp_path):
    manifest, split = saved_run(tmp_path / "A", tmp_path / "run")
    shutil.move(tmp_path / "A", tmp_path / "B")
    saved_manifest, saved_split = load_saved(tmp_path / "run")
    data = DataConfig(root=str(tmp_path / "A"), corpora=["emodb"])  # the run's own, now gone

    def moved(path: str) -> str:
        return path.replace(str(tmp_path / "A"), str(tmp_path / "B"))

    for kw in ({"env": {DATA_ROOT_ENV: str(tmp_path / "B")}}, {"data_root": tmp_path / "B"}):
        located, located_split, where = locate_corpus(saved_manifest, saved_split, data, **kw)
        assert [r.path for r in located.rows] == [moved(r.path) for r in manifest.rows]
        assert located_split.test_paths == tuple(sorted(moved(p) for p in split.test_paths))
        assert located_split.val_paths == tuple(sorted(moved(p) for p in split.val_paths))
        assert str(tmp_path / "B") in where
    # A SER_DATA_ROOT that lacks the files is passed over for the run's data.root.
    back = DataConfig(root=str(tmp_path / "B"), corpora=["emodb"])
    located, _, where = locate_corpus(
        saved_manifest, saved_split, back, env={DATA_ROOT_ENV: str(tmp_path)}
    )
    assert located.rows[0].path.startswith(str(tmp_path / "B")) and "run.yaml" in where


def test_no_root_holding_the_files_names_every_root_tried(tmp_path):
    saved_run(tmp_path / "A", tmp_path / "run")
    shutil.move(tmp_path / "A", tmp_path / "B")
    (tmp_path / "empty").mkdir()
    saved_manifest, saved_split = load_saved(tmp_path / "run")
    data = DataConfig(root=str(tmp_path / "A"), corpora=["emodb"])
    with pytest.raises(CorpusNotFoundError) as err:
        locate_corpus(
            saved_manifest, saved_split, data, env={DATA_ROOT_ENV: str(tmp_path / "empty")}
        )
    message = str(err.value)
    assert f"data root {tmp_path / 'empty'} ({DATA_ROOT_ENV}) lacks" in message
    assert f"data root {tmp_path / 'A'} (data.root in run.yaml) does not exist" in message
    assert "--data-root" in message and "emodb/" in message
    with pytest.raises(CorpusNotFoundError, match=r"nowhere \(--data-root\) does not exist"):
        locate_corpus(saved_manifest, saved_split, data, data_root=tmp_path / "nowhere", env={})


def test_old_runs_with_absolute_paths_still_load(tmp_path):
    root = tmp_path / "A"
    manifest, split = saved_run(root, tmp_path / "run")
    manifest.save(tmp_path / "run" / "manifest.jsonl")  # as runs were saved before
    (tmp_path / "run" / "split.json").write_text(json.dumps(split.to_dict()))
    old_manifest, old_split = load_saved(tmp_path / "run")
    assert old_manifest.data_root is None and old_manifest.rows[0].path.startswith(str(root))
    data = DataConfig(root=str(root), corpora=["emodb"])
    located, located_split, _ = locate_corpus(old_manifest, old_split, data, env={})
    assert located.rows == manifest.rows and located_split.test_paths == split.test_paths
    shutil.move(root, tmp_path / "B")
    located, located_split, _ = locate_corpus(
        old_manifest, old_split, data, env={DATA_ROOT_ENV: str(tmp_path / "B")}
    )
    assert located.rows[0].path.startswith(str(tmp_path / "B"))
    assert read_saved_split(tmp_path / "run", data) == split


def test_read_saved_split_resolves_against_the_configured_root(tmp_path):
    _, split = saved_run(tmp_path / "A", tmp_path / "run")
    data = DataConfig(root=str(tmp_path / "A"), corpora=["emodb"])
    assert read_saved_split(tmp_path / "run", data) == split


def test_a_run_and_its_corpus_moved_elsewhere_evaluate_to_the_same_metrics(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    make_emodb(a / "corpora")
    # A random split stores its test and validation clips by path.
    cfg = tiny_config(a / "corpora", a, "[emodb]", model="dense", **{"split.method": "random"})
    run_a = Path(train(cfg, **QUIET)["run_dir"])
    fast = ["evaluation.baselines=[svc]"]
    before = evaluate_run(run_a, overrides=fast, write=False, env={}, **QUIET)

    shutil.copytree(a / "corpora", b / "corpora")
    run_b = b / "runs" / run_a.name
    shutil.copytree(run_a, run_b)
    shutil.rmtree(a)
    lines: list[str] = []
    after = evaluate_run(
        run_b,
        overrides=fast,
        write=False,
        env={DATA_ROOT_ENV: str(b / "corpora")},
        log=lines.append,
    )
    assert after["examples"] == before["examples"]
    assert [(m["name"], m["ua"], m["wa"]) for m in after["models"]] == [
        (m["name"], m["ua"], m["wa"]) for m in before["models"]
    ]
    assert f"data: corpus files under {b / 'corpora'} ({DATA_ROOT_ENV})" in lines
