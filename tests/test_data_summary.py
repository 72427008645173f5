"""``ser data summary`` on generated corpora, and on the real ones under SER_DATA_ROOT."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ser.cli import main
from ser.config import DATA_ROOT_ENV, EMOTIONS, CustomOptions, DataConfig
from ser.datatools.custom import SPEAKER_PATTERN
from ser.datatools.summary import format_summary, summarise, write_summary
from tests.support.fakes import make_corpora, make_custom, write_bytes, write_tone

BASE = str(Path(__file__).resolve().parents[1] / "configs" / "base.yaml")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    make_corpora(tmp_path / "data")  # ravdess 4 actors (FLAC), tess 2, emodb 5 (WAV)
    make_custom(tmp_path / "data", ["20190616_125714_alice_happy.wav"], seconds=0.5)
    write_tone(
        tmp_path / "data" / "custom" / "20190616_130000_alice_sad.wav",
        seconds=1.0,
        sr=44100,
        channels=2,
        subtype="FLOAT",
    )
    write_bytes(tmp_path / "data" / "emodb" / "wav" / "16b10Td.wav", b"not audio")
    return tmp_path / "data"


def config(root: Path, **kw) -> DataConfig:
    return DataConfig(
        root=str(root),
        corpora=["ravdess", "tess", "emodb", "custom"],
        custom=CustomOptions(speaker_pattern=SPEAKER_PATTERN),
        **kw,
    )


def test_counts_durations_census_and_unreadable_files(root):
    summary = summarise(config(root), log=lambda _: None)
    counts = summary.counts()
    # corpus x emotion x speaker
    assert counts["ravdess"]["angry"] == {f"ravdess:{a:02d}": 2 for a in range(1, 5)}
    assert counts["ravdess"]["neutral"] == {f"ravdess:{a:02d}": 1 for a in range(1, 5)}
    assert counts["tess"]["ps"] == {"tess:OAF": 2, "tess:YAF": 2}
    assert counts["emodb"]["boredom"] == {f"emodb:{s}": 1 for s in ("03", "08", "09", "10", "11")}
    assert counts["custom"] == {"happy": {"custom:alice": 1}, "sad": {"custom:alice": 1}}
    assert len(summary.rows) == 60 + 28 + 35 + 2

    seconds = summary.seconds("corpus")
    assert seconds["ravdess"] == pytest.approx(60 * 0.3)
    assert seconds["custom"] == pytest.approx(1.5)
    assert summary.seconds("emotion")["sad"] == pytest.approx((8 + 4 + 5) * 0.3 + 1.0)

    census = {(c, sr, ch, enc): n for (c, sr, ch, enc), n in summary.census.items()}
    assert census[("ravdess", 16000, 1, "FLAC/PCM_16")] == 60
    assert census[("custom", 44100, 2, "WAV/FLOAT")] == 1
    assert [(Path(s.path).name, s.reason.split(" (")[0]) for s in summary.skipped] == [
        ("16b10Td.wav", "not readable as audio")
    ]

    text = format_summary(summary)
    assert "emotion  ravdess  tess  emodb  custom  total  minutes  mean s" in text
    cells = [line.split() for line in text.splitlines()]
    assert ["custom", "44100", "2", "WAV/FLOAT", "1"] in cells
    assert ["total", "125", "12", "0.01", "0.6", "0.31"] in cells
    assert "Unreadable or unparseable files: 1" in text and "16b10Td.wav: not readable" in text
    assert "ravdess: files per speaker and emotion" in text


def test_files_written_are_json_text_and_two_png_plots(root, tmp_path):
    summary = summarise(config(root), log=lambda _: None)
    written = write_summary(summary, tmp_path / "summary")
    assert sorted(p.name for p in written) == [
        "class_balance.png",
        "durations.png",
        "summary.json",
        "summary.txt",
    ]
    for png in ("class_balance.png", "durations.png"):
        data = (tmp_path / "summary" / png).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
    saved = json.loads((tmp_path / "summary" / "summary.json").read_text())
    assert saved["files"] == 125 and saved["speakers"] == {
        "custom": 1,
        "emodb": 5,
        "ravdess": 4,
        "tess": 2,
    }
    assert saved["unreadable"][0]["path"].endswith("16b10Td.wav")


def test_a_missing_corpus_is_reported_and_the_rest_summarised(root):
    lines: list[str] = []
    cfg = config(root, tess={"folder": "not-here"})
    summary = summarise(cfg, log=lines.append)
    assert set(summary.missing) == {"tess"} and "not-here" in summary.missing["tess"]
    assert summary.corpora == ["ravdess", "emodb", "custom"]
    assert lines[0].startswith("warning: tess folder")


def test_cli_summary_exit_codes(root, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    out = tmp_path / "report"
    code = main(
        ["data", "summary", "--config", BASE, "--set", f"data.root={root}", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert (
        code == 0 and "Files per emotion" in printed and f"wrote {out / 'durations.png'}" in printed
    )

    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(
        [
            "data",
            "summary",
            "--config",
            BASE,
            "--set",
            f"data.root={empty}",
            "--no-plots",
            "--out",
            str(tmp_path / "r2"),
        ]
    )
    assert code == 1 and "no usable recordings" in capsys.readouterr().err


@pytest.mark.corpus
def test_summary_of_the_real_corpora_matches_their_readme(tmp_path):
    """Counts from ../shared/data/README.md: 1,200 / 2,800 / 535 files, 1.23 / 1.60 / 0.30 h."""
    root = os.environ.get(DATA_ROOT_ENV)
    if not root or not Path(root).is_dir():
        pytest.skip(f"set {DATA_ROOT_ENV} to the folder holding ravdess/, tess/, emodb/")
    summary = summarise(DataConfig(root=root), log=lambda _: None)
    assert summary.missing == {} and summary.skipped == [] and summary.dropped == {}
    counts = summary.counts()
    files = {c: sum(sum(s.values()) for s in e.values()) for c, e in counts.items()}
    assert files == {"ravdess": 1200, "tess": 2800, "emodb": 535}
    speakers = {c: len({s for e in counts[c].values() for s in e}) for c in counts}
    assert speakers == {"ravdess": 20, "tess": 2, "emodb": 10}
    hours = {c: round(s / 3600, 2) for c, s in summary.seconds("corpus").items()}
    assert hours == {"emodb": 0.30, "ravdess": 1.23, "tess": 1.60}
    # RAVDESS: per actor 2 statements x 2 repetitions x (1 intensity for neutral, else 2).
    for emotion in EMOTIONS[:-1]:  # all but boredom
        per_actor = 4 if emotion == "neutral" else 8
        assert counts["ravdess"][emotion] == {f"ravdess:{a:02d}": per_actor for a in range(1, 21)}
    assert counts["tess"]["ps"] == {"tess:OAF": 200, "tess:YAF": 200}
    assert {e: sum(s.values()) for e, s in counts["tess"].items()} == dict.fromkeys(
        ("angry", "disgust", "fear", "happy", "neutral", "ps", "sad"), 400
    )
    assert {e: sum(s.values()) for e, s in counts["emodb"].items()} == {
        "angry": 127,
        "boredom": 81,
        "disgust": 46,
        "fear": 69,
        "happy": 71,
        "sad": 62,
        "neutral": 79,
    }
    # Every file here is 16 kHz mono 16-bit FLAC (the README's conversion note).
    assert {(sr, ch, enc) for _, sr, ch, enc in summary.census} == {(16000, 1, "FLAC/PCM_16")}
    assert sum(summary.census.values()) == 4535
    written = write_summary(summary, tmp_path)
    assert all(p.stat().st_size > 0 for p in written)
