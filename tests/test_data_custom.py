"""``ser data add-custom``: names written here must round-trip through the custom reader."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pytest
import soundfile as sf

from ser.cli import main
from ser.config import EMOTIONS, CustomOptions, DataConfig, load_config
from ser.data.corpora import Utterance, build_manifest, read_custom
from ser.datatools import DataToolError
from ser.datatools.custom import SPEAKER_PATTERN, add_custom, custom_name
from tests.support import ROOT
from tests.support.fakes import write_bytes, write_tone

WHEN = datetime(2019, 6, 16, 12, 57, 14)


def recorded_at(path: Path, when: datetime = WHEN) -> Path:
    stamp = when.timestamp()
    os.utime(path, (stamp, stamp))
    return path


def read_back(folder: Path) -> list[Utterance]:
    items = list(read_custom(folder, CustomOptions(speaker_pattern=SPEAKER_PATTERN)))
    assert all(isinstance(i, Utterance) for i in items), items
    return items


def add(files, emotion="happy", speaker="alice", to=None, **kw):
    lines: list[str] = []
    report = add_custom([str(f) for f in files], emotion, speaker, to, log=lines.append, **kw)
    return report, lines


def test_phone_recordings_are_converted_and_labelled_by_the_reader(tmp_path):
    stereo = recorded_at(
        write_tone(tmp_path / "rec" / "take 1.wav", sr=44100, channels=2, subtype="FLOAT")
    )
    mp3 = recorded_at(
        write_tone(tmp_path / "rec" / "take 2.mp3", sr=44100, channels=2),
        datetime(2019, 6, 16, 13, 0, 0),
    )
    folder = tmp_path / "data" / "custom"
    report, lines = add([stereo, mp3], "happy", "alice", folder)

    names = sorted(Path(out).name for _, out in report.added)
    assert names == ["20190616_125714_alice_happy.wav", "20190616_130000_alice_happy.wav"]
    for name in names:
        info = sf.info(str(folder / name))
        assert (info.channels, info.samplerate, info.subtype) == (1, 16000, "PCM_16")
    rows = read_back(folder)
    assert [(r.emotion, r.speaker) for r in rows] == [("happy", "custom:alice")] * 2
    assert any(
        line.startswith(f"added {folder / names[0]} (happy, speaker alice") for line in lines
    )

    # The same names through the whole manifest, as a training run would read them.
    data = DataConfig(
        root=str(tmp_path / "data"),
        corpora=["custom"],
        custom=CustomOptions(speaker_pattern=SPEAKER_PATTERN),
    )
    manifest = build_manifest(data, log=lambda _: None)
    assert manifest.counts(("speaker", "emotion")) == {("custom:alice", "happy"): 2}


def test_same_second_gets_a_counter_and_re_adding_is_a_no_op(tmp_path):
    a = recorded_at(write_tone(tmp_path / "a.wav", hz=300.0))
    b = recorded_at(write_tone(tmp_path / "b.wav", hz=500.0))
    folder = tmp_path / "custom"
    first, _ = add([a, b], "sad", "bob", folder)
    assert [Path(o).name for _, o in first.added] == [
        "20190616_125714_bob_sad.wav",
        "20190616_125714-2_bob_sad.wav",
    ]
    again, lines = add([b], "sad", "bob", folder)
    assert again.added == [] and again.present == [(str(b), first.added[1][1])]
    assert lines == [f"{b}: already added as {first.added[1][1]}"]
    assert len(list(folder.iterdir())) == 2  # no temporary files left
    assert [r.speaker for r in read_back(folder)] == ["custom:bob"] * 2


def test_synonyms_map_to_canonical_labels_and_speakers_become_one_token(tmp_path):
    src = recorded_at(write_tone(tmp_path / "x.wav"))
    report, lines = add([src], "Fearful", "Mary Ann_O'Neil", tmp_path / "custom")
    assert Path(report.added[0][1]).name == "20190616_125714_Mary-Ann-O-Neil_fear.wav"
    assert (
        lines[0]
        == "note: speaker \"Mary Ann_O'Neil\" is written as 'Mary-Ann-O-Neil' in file names"
    )
    assert [(r.emotion, r.speaker) for r in read_back(tmp_path / "custom")] == [
        ("fear", "custom:Mary-Ann-O-Neil")
    ]


def test_without_speaker_the_reader_sees_unknown(tmp_path):
    src = recorded_at(write_tone(tmp_path / "x.wav"))
    report, _ = add([src], "neutral", None, tmp_path / "custom")
    assert Path(report.added[0][1]).name == custom_name(WHEN, "unknown", "neutral")
    assert read_back(tmp_path / "custom")[0].speaker == "custom:unknown"


def test_unknown_emotion_is_rejected_with_the_valid_list_before_any_work(tmp_path):
    src = write_tone(tmp_path / "x.wav")
    with pytest.raises(DataToolError) as err:
        add([src], "excited", "alice", tmp_path / "custom")
    message = str(err.value)
    assert message.startswith("unknown emotion 'excited'; valid: " + ", ".join(EMOTIONS))
    assert "surprised" in message  # synonyms are listed too
    assert not (tmp_path / "custom").exists()

    with pytest.raises(DataToolError, match="--speaker '__'"):
        add([src], "happy", "__", tmp_path / "custom")


def test_cli_add_custom_exit_codes_and_config_hint(tmp_path, capsys):
    good = write_tone(tmp_path / "good.wav")
    bad = write_bytes(tmp_path / "bad.m4a", b"not audio")
    to = str(tmp_path / "data" / "custom")
    code = main(["data", "add-custom", str(good), str(bad), "--emotion", "angry", "--to", to])
    out = capsys.readouterr().out
    assert code == 0 and "1 added, 0 already there, 1 failed" in out
    assert f"speaker_pattern: '{SPEAKER_PATTERN}'" in out

    assert main(["data", "add-custom", str(bad), "--emotion", "angry", "--to", to]) == 1
    assert main(["data", "add-custom", str(good), "--emotion", "meh", "--to", to]) == 2
    assert "error: unknown emotion 'meh'; valid: neutral, calm, happy" in capsys.readouterr().err


def test_readme_speaker_pattern_is_the_one_names_are_written_for(tmp_path):
    """The YAML snippet in README's "Getting the data" loads as a config and matches."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    line = next(x for x in readme.splitlines() if "speaker_pattern:" in x and "custom:" in x)
    config = tmp_path / "custom.yaml"
    config.write_text(f"extends: {ROOT / 'configs' / 'base.yaml'}\ndata:\n{line}\n")
    cfg = load_config(config, env={})
    assert cfg.data.custom.speaker_pattern == SPEAKER_PATTERN
