"""Config loading: every shipped file, strictness, overrides, error messages."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from pydantic import ValidationError

from ser.config import (
    DATA_ROOT_ENV,
    Config,
    ConfigError,
    ExtractorName,
    ModelConfig,
    load_config,
    parent_files,
    parse_override,
)
from tests.support import ROOT

CONFIG_FILES = sorted((ROOT / "configs").rglob("*.yaml"))
# Named parts: fragments of one section each, composed by the configs through `extends`.
PART_GROUPS = ("features", "model")
PART_FILES = [p for p in CONFIG_FILES if p.parent.name in PART_GROUPS]
SHIPPED_CONFIGS = [p for p in CONFIG_FILES if p not in PART_FILES]


def test_configs_folder_is_not_empty():
    names = {p.name for p in CONFIG_FILES}
    assert {"base.yaml", "lstm.yaml", "cnn.yaml", "dense.yaml", "quick.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_file_loads(path):
    cfg = load_config(path, env={})
    assert isinstance(cfg, Config)
    # The resolved config is itself a valid config (it is what a run directory saves).
    tmp = Config.model_validate(cfg.to_dict())
    assert tmp == cfg


def extends_depth(path: Path) -> int:
    """Levels of ``extends`` above a file: 0 for none, 1 for parents only, and so on."""
    return max((1 + extends_depth(parent) for parent in parent_files(path)), default=0)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_config_is_deeper_than_two_levels_of_extends(path):
    # A reader follows at most a file, its parents and theirs to see a whole config.
    assert extends_depth(path) <= 2


@pytest.mark.parametrize("path", PART_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_part_is_one_section_used_by_a_shipped_config(path):
    import yaml

    assert set(yaml.safe_load(path.read_text())) == {path.parent.name}
    users = [c for c in SHIPPED_CONFIGS if path.resolve() in parent_files(c)]
    assert users, f"no config in configs/ extends {path.relative_to(ROOT)}"


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_unknown_key_names_file_path_and_valid_keys(tmp_path):
    path = write(tmp_path, "model:\n  lstm:\n    unitz: [3]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    text = str(err.value)
    assert str(path) in text
    assert "model.lstm.unitz: unknown key" in text
    assert "units" in text and "bidirectional" in text


def test_wrong_type_is_reported_with_key_path(tmp_path):
    path = write(tmp_path, "train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(path, env={})


def test_unknown_choice_lists_valid_choices(tmp_path):
    path = write(tmp_path, "model:\n  type: transformer\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert "model.type" in str(err.value)
    for name in ("lstm", "cnn", "crnn", "tcn", "dense"):
        assert name in str(err.value)


def test_unknown_extractor_and_emotion_are_rejected(tmp_path):
    path = write(tmp_path, "features:\n  extractors: [mfcc, pitchy]\n")
    with pytest.raises(ConfigError, match=r"features\.extractors\.1"):
        load_config(path, env={})
    path = write(tmp_path, "data:\n  emotions: [happy, elated]\n")
    with pytest.raises(ConfigError, match=r"data\.emotions\.1"):
        load_config(path, env={})


def test_model_and_feature_mode_must_agree(tmp_path):
    path = write(tmp_path, "model:\n  type: dense\n")
    with pytest.raises(ConfigError, match="needs features.mode 'pooled'"):
        load_config(path, env={})


def test_an_ensemble_across_model_types_names_one_type_per_member(tmp_path):
    path = write(tmp_path, "model:\n  ensemble: 2\n  member_types: [lstm, tcn]\n")
    cfg = load_config(path, env={})
    assert cfg.model.label == "lstm+tcn"
    assert [cfg.model.member(k).type for k in range(2)] == ["lstm", "tcn"]
    assert cfg.model.member(1).tcn == cfg.model.tcn  # every member keeps its own section
    seeds = load_config(write(tmp_path, "model:\n  ensemble: 2\n", "seeds.yaml"), env={})
    assert (seeds.model.label, seeds.model.member(1).type) == ("lstm", "lstm")
    with pytest.raises(ConfigError, match="lists 2 member type.*model.ensemble 3"):
        load_config(path, ["model.ensemble=3"], env={})
    with pytest.raises(ConfigError, match="model type 'dense' needs features.mode 'pooled'"):
        load_config(path, ["model.member_types=[lstm,dense]"], env={})


def test_extends_merges_and_overrides(tmp_path):
    write(tmp_path, "train:\n  epochs: 7\n  batch_size: 8\n", "parent.yaml")
    child = write(tmp_path, "extends: parent.yaml\ntrain:\n  epochs: 3\n")
    cfg = load_config(child, overrides=["train.batch_size=4", "model.lstm.units=[16, 8]"], env={})
    assert cfg.train.epochs == 3
    assert cfg.train.batch_size == 4
    assert cfg.model.lstm.units == [16, 8]


def test_extends_loop_and_missing_file(tmp_path):
    write(tmp_path, "extends: b.yaml\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "a.yaml", env={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml", env={})


def test_extends_list_merges_left_to_right_then_own_keys(tmp_path):
    write(tmp_path, "train:\n  epochs: 7\n  batch_size: 8\n  learning_rate: 0.5\n", "a.yaml")
    write(tmp_path, "train:\n  epochs: 9\n  batch_size: 16\n", "b.yaml")
    child = write(tmp_path, "extends: [a.yaml, b.yaml]\ntrain:\n  epochs: 3\n")
    cfg = load_config(child, env={})
    assert cfg.train.epochs == 3  # the file's own key wins
    assert cfg.train.batch_size == 16  # the later part wins over the earlier
    assert cfg.train.learning_rate == 0.5  # sections are merged, not replaced


def test_extends_list_may_share_a_grandparent(tmp_path):
    write(tmp_path, "seed: 1\n", "root.yaml")
    write(tmp_path, "extends: root.yaml\ntrain: {epochs: 4}\n", "a.yaml")
    write(tmp_path, "extends: root.yaml\ntrain: {batch_size: 2}\n", "b.yaml")
    cfg = load_config(write(tmp_path, "extends: [a.yaml, b.yaml]\n"), env={})
    assert (cfg.seed, cfg.train.epochs, cfg.train.batch_size) == (1, 4, 2)


def test_extends_list_loop_is_reported(tmp_path):
    write(tmp_path, "seed: 1\n", "ok.yaml")
    write(tmp_path, "extends: [ok.yaml, b.yaml]\n", "a.yaml")
    write(tmp_path, "extends: [a.yaml]\n", "b.yaml")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "a.yaml", env={})


@pytest.mark.parametrize("value", ["3", "[a.yaml, 3]", "[]", "{a: b.yaml}", "[[a.yaml]]"])
def test_extends_must_be_a_name_or_a_list_of_names(tmp_path, value):
    write(tmp_path, "seed: 1\n", "a.yaml")
    path = write(tmp_path, f"extends: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert str(path) in str(err.value)
    assert "extends: must be a file name or a non-empty list of file names" in str(err.value)


def test_extends_list_names_the_missing_part(tmp_path):
    write(tmp_path, "seed: 1\n", "a.yaml")
    path = write(tmp_path, "extends: [a.yaml, nowhere.yaml]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert f"{path}: extends: nowhere.yaml: config file not found" in str(err.value)


def test_bad_yaml_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"), env={})
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), env={})


def test_override_of_unknown_key_fails():
    with pytest.raises(ConfigError, match=r"train\.epoch: unknown key"):
        load_config(None, overrides=["train.epoch=3"], env={})
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("train.epochs")


def test_data_root_environment_variable(tmp_path):
    cfg = load_config(None, env={DATA_ROOT_ENV: str(tmp_path)})
    assert cfg.data.root == str(tmp_path)
    # An explicit override still wins over the environment.
    cfg = load_config(None, overrides=["data.root=/elsewhere"], env={DATA_ROOT_ENV: str(tmp_path)})
    assert cfg.data.root == "/elsewhere"


def test_config_is_frozen():
    cfg = load_config(None, env={})
    with pytest.raises(ValidationError):
        cfg.train.epochs = 5


def test_registries_match_config_choices():
    from ser.data.corpora import CORPORA
    from ser.features.extractors import FEATURES
    from ser.models import MODELS

    assert set(MODELS.names()) == set(typing.get_args(ModelConfig.model_fields["type"].annotation))
    assert set(FEATURES.names()) == set(typing.get_args(ExtractorName))
    assert set(CORPORA.names()) == {"ravdess", "tess", "emodb", "custom"}


def test_base_yaml_lists_every_key():
    import yaml

    from ser.config import Config

    listed = yaml.safe_load((ROOT / "configs" / "base.yaml").read_text())
    missing = []

    def walk(defaults: dict, written: dict, path: str) -> None:
        for key, value in defaults.items():
            if key not in written:
                missing.append(path + key)
            elif isinstance(value, dict) and value and isinstance(written[key], dict):
                walk(value, written[key], f"{path}{key}.")

    walk(Config().to_dict(), listed, "")
    assert not missing, f"configs/base.yaml does not list: {missing}"
