"""The seed project's own-data layout: data/train-custom/ and data/test-custom/ read as one
custom corpus whose split follows the folders (``split.method: folders``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ser.config import ConfigError, DataConfig, SplitConfig, load_config
from ser.data.corpora import build_manifest
from ser.data.splits import Split, SplitError, make_split
from ser.evaluation import evaluate_run
from ser.training import train
from tests.support import ROOT
from tests.support.fakes import make_custom
from tests.support.tiny_run import tiny_overrides

CONFIG = ROOT / "configs" / "custom_folders.yaml"
EMOTIONS4 = ("angry", "happy", "neutral", "sad")


def seed_layout(root: Path, speakers: tuple[str, str] | None = None, per_emotion: int = 6):
    """``train-custom/`` with ``per_emotion`` clips per emotion, ``test-custom/`` with two;
    names end in the label, e.g. ``recording3_angry.wav``; with ``speakers``, names start
    with the training / test folder's speaker (``alice_recording3_angry.wav``)."""
    train_who, test_who = (f"{s}_" for s in speakers) if speakers else ("", "")
    train = make_custom(
        root,
        [f"{train_who}recording{i}_{e}.wav" for e in EMOTIONS4 for i in range(per_emotion)],
        folder="train-custom",
    )
    test = make_custom(
        root, [f"{test_who}take{i}_{e}.wav" for e in EMOTIONS4 for i in range(2)], "test-custom"
    )
    return train, test


def folders_data(root: Path, **custom: str) -> DataConfig:
    options = {"train_folder": "train-custom", "test_folder": "test-custom", **custom}
    return DataConfig(root=str(root), corpora=["custom"], custom=options)


def test_both_folders_are_read_with_labels_from_the_last_token(tmp_path):
    train, test = seed_layout(tmp_path)
    make_custom(tmp_path, ["ignored_sad.wav"])  # data/custom is not part of this layout
    lines: list[str] = []
    m = build_manifest(folders_data(tmp_path), log=lines.append)
    assert sorted(r.path for r in m.rows) == sorted(str(p) for p in train + test)
    parts = {r.path: r.info["part"] for r in m.rows}
    assert {p for p, part in parts.items() if part == "test"} == {str(p) for p in test}
    assert all(r.emotion == Path(r.path).stem.rsplit("_", 1)[1] for r in m.rows)
    assert {r.speaker for r in m.rows} == {"custom:unknown"}
    assert any(line.startswith("custom (train folder): 24 rows") for line in lines)
    assert any(line.startswith("custom (test folder): 8 rows") for line in lines)


def test_a_bad_file_name_is_skipped_and_named(tmp_path):
    seed_layout(tmp_path)
    bad = make_custom(tmp_path, ["recording9_grumpy.wav", "recording10.wav"], "test-custom")
    lines: list[str] = []
    m = build_manifest(folders_data(tmp_path), log=lines.append)
    assert sorted(s.path for s in m.skipped) == [str(p) for p in bad]
    for path, token in zip(bad, ("recording10", "grumpy"), strict=True):
        (line,) = [x for x in lines if str(path) in x]
        assert line.startswith(f"warning: custom: skipped {path}: file name does not end in")
        assert f"last token {token!r}" in line and "recording3_angry.wav" in line


def test_split_follows_the_folders_and_is_speaker_dependent(tmp_path):
    train, test = seed_layout(tmp_path)
    rows = build_manifest(folders_data(tmp_path), log=lambda _: None).rows
    split = make_split(rows, SplitConfig(method="folders", val_fraction=0.25), seed=3)
    parts = split.partition(rows)
    assert sorted(r.path for r in parts["test"]) == [str(p) for p in test]
    assert {r.path for r in parts["train"] + parts["val"]} == {str(p) for p in train}
    assert len(parts["val"]) == 6 and {r.emotion for r in parts["val"]} == set(EMOTIONS4)
    assert split.speaker_independent is False and split.method == "folders"
    assert "speaker-dependent split" in split.protocol().lower()
    assert "8 clips of the test folder" in split.protocol()
    assert Split.from_dict(json.loads(json.dumps(split.to_dict()))) == split


def test_known_disjoint_speakers_make_it_speaker_independent(tmp_path):
    _, test = seed_layout(tmp_path, speakers=("alice", "bob"))
    pattern = {"speaker_pattern": "^(?P<speaker>[a-z]+)_"}
    rows = build_manifest(folders_data(tmp_path, **pattern), log=lambda _: None).rows
    split = make_split(rows, SplitConfig(method="folders"), seed=3)
    assert split.speaker_independent is True and split.test_speakers == ("custom:bob",)
    assert sorted(r.path for r in split.partition(rows)["test"]) == [str(p) for p in test]
    # One training speaker cannot spare a validation speaker: clips are sampled instead.
    assert split.val_paths and not split.val_speaker_independent


def test_a_speaker_in_both_folders_keeps_it_speaker_dependent(tmp_path):
    seed_layout(tmp_path, speakers=("alice", "alice"))
    pattern = {"speaker_pattern": "^(?P<speaker>[a-z]+)_"}
    rows = build_manifest(folders_data(tmp_path, **pattern), log=lambda _: None).rows
    split = make_split(rows, SplitConfig(method="folders"), seed=3)
    assert split.speaker_independent is False
    assert split.test_speakers == ("custom:alice",) and len(split.test_paths) == 8


def test_rows_from_no_folder_are_a_clear_split_error(tmp_path):
    make_custom(tmp_path, ["a_happy.wav", "b_sad.wav"])
    rows = build_manifest(DataConfig(root=str(tmp_path), corpora=["custom"]), log=print).rows
    with pytest.raises(SplitError, match=r"a_happy.wav comes from no train/test folder"):
        make_split(rows, SplitConfig(method="folders"), seed=0)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["data.custom.train_folder=null", "data.custom.test_folder=null"],
            "split.method 'folders' needs data.corpora: \\[custom\\]",
        ),
        (["data.corpora=[custom, emodb]"], "split.method 'folders' needs"),
        (["split.method=speaker", "data.custom.train_folder=null"], "set both or neither"),
        (["data.custom.test_folder=train-custom"], "are both 'train-custom'"),
    ],
)
def test_folders_settings_are_checked_with_the_config(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG, sets, env={})


def test_a_missing_folder_names_its_setting(tmp_path):
    make_custom(tmp_path, ["a_happy.wav"], "train-custom")
    with pytest.raises(FileNotFoundError, match="data.custom.test_folder"):
        build_manifest(folders_data(tmp_path), log=lambda _: None)


def test_the_example_config_trains_and_reports_speaker_dependent(tmp_path):
    root = tmp_path / "data"
    seed_layout(root)
    sets = tiny_overrides(
        root, tmp_path, "dense", "[custom]", **{"train.confusion_images": "false"}
    )
    cfg = load_config(CONFIG, sets, env={})
    assert (cfg.split.method, cfg.data.custom.split_folders) == (
        "folders",
        {"train": "train-custom", "test": "test-custom"},
    )
    summary = train(cfg, log=lambda _: None)
    assert summary["speaker_independent"] is False and summary["examples"]["test"] == 8
    assert "speaker-dependent split" in summary["protocol"].lower()
    run_dir = Path(summary["run_dir"])
    saved = json.loads((run_dir / "summary.json").read_text())
    assert "speaker-dependent split" in saved["protocol"].lower()
    report = evaluate_run(run_dir, overrides=["evaluation.baselines=[knn]"], log=lambda _: None)
    assert report["protocol"]["speaker_independent"] is False
    markdown = (run_dir / "report.md").read_text().lower()
    assert "speaker-dependent split" in markdown
