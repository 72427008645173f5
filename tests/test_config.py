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
    parse_override,
)

ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILES = sorted((ROOT / "configs").rglob("*.yaml"))


def test_configs_folder_is_not_empty():
    names = {p.name for p in CONFIG_FILES}
    assert {"base.yaml", "lstm.yaml", "cnn.yaml", "dense.yaml", "quick.yaml"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_file_loads(path):
    cfg = load_config(path, env={})
    assert isinstance(cfg, Config)
    # The resolved config is itself a valid config (it is what a run directory saves).
    tmp = Config.model_validate(cfg.to_dict())
    assert tmp == cfg


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
    for name in ("lstm", "cnn", "crnn", "dense"):
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
