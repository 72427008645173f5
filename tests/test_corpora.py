"""Corpus readers and manifests on tiny generated corpora (one marked test uses real data)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from ser.config import DATA_ROOT_ENV, EMOTIONS, CustomOptions, DataConfig
from ser.data.corpora import (
    CORPORA,
    CorpusNotFoundError,
    Manifest,
    Skipped,
    Utterance,
    build_manifest,
    canonical_emotion,
)
from tests.support.fakes import (
    make_corpora,
    make_custom,
    make_emodb,
    make_ravdess,
    make_tess,
    write_bytes,
    write_empty_wav,
    write_tone,
)


def config(root: Path, **kw) -> DataConfig:
    return DataConfig(root=str(root), **kw)


def manifest(root: Path, lines: list[str] | None = None, **kw) -> Manifest:
    log = lines.append if lines is not None else (lambda _: None)
    return build_manifest(config(root, **kw), log=log)


def test_all_readers_registered():
    assert CORPORA.names() == ["custom", "emodb", "ravdess", "tess"]


# ----------------------------------------------------------------------- RAVDESS
def test_ravdess_labels_speakers_genders_info(tmp_path):
    paths = make_ravdess(tmp_path, actors=(1, 2))
    m = manifest(tmp_path, corpora=["ravdess"])
    assert len(m.rows) == len(paths) == 30
    assert [r.path for r in m.rows] == sorted(str(p) for p in paths)
    assert {r.speaker: r.gender for r in m.rows} == {"ravdess:01": "male", "ravdess:02": "female"}
    assert m.counts("emotion") == {
        "angry": 4,
        "calm": 4,
        "disgust": 4,
        "fear": 4,
        "happy": 4,
        "neutral": 2,
        "ps": 4,
        "sad": 4,
    }
    row = next(r for r in m.rows if r.path.endswith("03-01-06-02-01-01-02.flac"))
    assert (row.corpus, row.emotion, row.speaker) == ("ravdess", "fear", "ravdess:02")
    assert row.info == {
        "vocal_channel": "speech",
        "intensity": "strong",
        "statement": 1,
        "repetition": 1,
    }
    assert row.duration == pytest.approx(0.3)
    assert os.path.isabs(row.path)


def test_ravdess_actor_comes_from_file_name_not_folder(tmp_path):
    write_tone(tmp_path / "ravdess" / "Actor_01" / "03-01-05-01-01-01-07.wav")
    (row,) = manifest(tmp_path, corpora=["ravdess"]).rows
    assert (row.speaker, row.gender, row.emotion) == ("ravdess:07", "male", "angry")


def test_ravdess_song_and_intensity_filters_are_counted(tmp_path):
    make_ravdess(tmp_path, actors=(1,), song=True)  # speech 15, song 11 (neutral normal only)
    m = manifest(tmp_path, corpora=["ravdess"], ravdess={"intensities": ["normal"]})
    assert len(m.rows) == 8 and {r.info["intensity"] for r in m.rows} == {"normal"}
    assert m.dropped == {"ravdess:song": 11, "ravdess:strong intensity": 7}

    both = manifest(tmp_path, corpora=["ravdess"], ravdess={"vocal_channels": ["speech", "song"]})
    assert Counter(r.info["vocal_channel"] for r in both.rows) == {"speech": 15, "song": 11}
    assert both.dropped == {}


def test_ravdess_video_modalities_and_bad_names(tmp_path):
    make_ravdess(tmp_path, actors=(1,), emotions=("angry",))
    folder = tmp_path / "ravdess" / "Actor_01"
    write_tone(folder / "01-01-05-01-01-01-01.wav")  # audio-video release
    write_tone(folder / "02-01-05-01-01-01-01.wav")  # video-only release
    write_tone(folder / "03-01-09-01-01-01-01.wav")  # no emotion 09
    write_tone(folder / "angry_take.wav")
    m = manifest(tmp_path, corpora=["ravdess"])
    assert len(m.rows) == 2
    assert m.dropped == {"ravdess:modality 01": 1, "ravdess:modality 02": 1}
    reasons = {Path(s.path).name: s.reason for s in m.skipped}
    assert set(reasons) == {"03-01-09-01-01-01-01.wav", "angry_take.wav"}
    assert all("expected MM-CC-EE-II-SS-RR-AA" in r for r in reasons.values())


# -------------------------------------------------------------------------- TESS
def test_tess_speakers_words_emotions(tmp_path):
    make_tess(tmp_path)
    m = manifest(tmp_path, corpora=["tess"])
    assert len(m.rows) == 28
    assert m.counts(("speaker", "gender")) == {
        ("tess:OAF", "female"): 14,
        ("tess:YAF", "female"): 14,
    }
    assert set(m.counts("emotion")) == {"angry", "disgust", "fear", "happy", "neutral", "ps", "sad"}
    row = next(r for r in m.rows if r.path.endswith("YAF_bar_ps.wav"))
    assert (row.emotion, row.info) == ("ps", {"word": "bar"})


@pytest.mark.parametrize(
    "spelling", ["ps", "pleasant_surprise", "pleasant_surprised", "Pleasant_Surprised", "surprised"]
)
def test_tess_pleasant_surprise_spellings(tmp_path, spelling):
    make_tess(tmp_path, speakers=("YAF",), emotions=("ps",), ps_spelling=spelling)
    m = manifest(tmp_path, corpora=["tess"])
    assert [(r.emotion, r.info["word"]) for r in m.rows] == [("ps", "back"), ("ps", "bar")]
    assert not m.skipped


def test_tess_capitalised_folders_typo_speaker_and_bad_names(tmp_path):
    write_tone(tmp_path / "tess" / "OAF_Fear" / "OAF_back_Fear.wav")
    write_tone(tmp_path / "tess" / "OAF_neutral" / "OA_bite_neutral.wav")  # as in the release
    write_tone(tmp_path / "tess" / "OAF_neutral" / "OAF_neutral.wav")  # no word
    write_tone(tmp_path / "tess" / "OAF_neutral" / "OAF_back_calmish.wav")
    m = manifest(tmp_path, corpora=["tess"])
    assert [(r.speaker, r.info["word"], r.emotion) for r in m.rows] == [
        ("tess:OAF", "back", "fear"),
        ("tess:OAF", "bite", "neutral"),
    ]
    assert sorted(Path(s.path).name for s in m.skipped) == [
        "OAF_back_calmish.wav",
        "OAF_neutral.wav",
    ]
    assert all("SPEAKER_WORD_EMOTION" in s.reason for s in m.skipped)


# ------------------------------------------------------------------------ EMO-DB
def test_emodb_labels_genders_info(tmp_path):
    make_emodb(tmp_path, speakers=("03", "08"), texts=("a01", "b10"))
    m = manifest(tmp_path, corpora=["emodb"])
    assert len(m.rows) == 28
    assert {r.speaker: r.gender for r in m.rows} == {"emodb:03": "male", "emodb:08": "female"}
    by_name = {Path(r.path).stem: r for r in m.rows}
    expected = {
        "W": "angry",
        "L": "boredom",
        "E": "disgust",
        "A": "fear",
        "F": "happy",
        "T": "sad",
        "N": "neutral",
    }
    for letter, emotion in expected.items():
        assert by_name[f"03a01{letter}a"].emotion == emotion
    assert by_name["08b10Ta"].info == {"text": "b10", "version": "a"}


def test_emodb_bad_names_are_skipped(tmp_path):
    make_emodb(tmp_path, speakers=("03",), emotions=("angry",))
    write_tone(tmp_path / "emodb" / "wav" / "03a01Xa.wav")  # no emotion X
    write_tone(tmp_path / "emodb" / "wav" / "speaker3_angry.wav")
    m = manifest(tmp_path, corpora=["emodb"])
    assert len(m.rows) == 1 and len(m.skipped) == 2
    assert all("EMO-DB file name" in s.reason for s in m.skipped)


# ------------------------------------------------------------------------ custom
def test_custom_synonyms_formats_and_nested_folders(tmp_path):
    make_custom(
        tmp_path,
        [
            "20190616_125714_happy.wav",
            "a/b/take1_Surprised.flac",
            "clip_fearful.ogg",
            "x_anger.mp3",
            "y_sadness.aiff",
            "z_happiness.WAV",
            "q_pleasant_surprise.caf",
        ],
    )
    write_tone(tmp_path / "custom" / "w_disgust.aif", format="AIFF")
    m = manifest(tmp_path, corpora=["custom"])
    assert not m.skipped
    got = {Path(r.path).name: r.emotion for r in m.rows}
    assert got == {
        "20190616_125714_happy.wav": "happy",
        "take1_Surprised.flac": "ps",
        "clip_fearful.ogg": "fear",
        "x_anger.mp3": "angry",
        "y_sadness.aiff": "sad",
        "z_happiness.WAV": "happy",
        "q_pleasant_surprise.caf": "ps",
        "w_disgust.aif": "disgust",
    }
    assert {(r.speaker, r.gender) for r in m.rows} == {("custom:unknown", None)}


def test_custom_unknown_label_is_skipped_with_valid_labels(tmp_path):
    make_custom(tmp_path, ["a_happy.wav", "b_excited.wav"])
    m = manifest(tmp_path, corpora=["custom"])
    assert [Path(r.path).name for r in m.rows] == ["a_happy.wav"]
    (skip,) = m.skipped
    assert skip.path.endswith("b_excited.wav")
    assert "valid labels" in skip.reason and "angry" in skip.reason and "boredom" in skip.reason


def test_custom_speaker_pattern(tmp_path):
    make_custom(tmp_path, ["20190616_125714_alice_happy.wav", "bob-take2_sad.wav"])
    pattern = r"^[0-9]+_[0-9]+_(?P<speaker>[^_]+)_"
    m = manifest(tmp_path, corpora=["custom"], custom={"speaker_pattern": pattern})
    assert [r.speaker for r in m.rows] == ["custom:alice", "custom:unknown"]


@pytest.mark.parametrize("pattern", ["(unclosed", "no_group_(.*)"])
def test_custom_bad_speaker_pattern_is_a_clear_error(tmp_path, pattern):
    make_custom(tmp_path, ["a_happy.wav"])
    reader = CORPORA.get("custom")
    with pytest.raises(ValueError, match="data.custom.speaker_pattern"):
        list(reader(tmp_path / "custom", CustomOptions(speaker_pattern=pattern)))


def test_canonical_emotion():
    assert all(canonical_emotion(e) == e for e in EMOTIONS)
    assert canonical_emotion("Surprised") == "ps"
    assert canonical_emotion("pleasant_surprised") == "ps"
    assert canonical_emotion("excited") is None


# -------------------------------------------------------------- bad and odd files
def test_broken_files_are_skipped_and_logged_the_rest_is_read(tmp_path):
    make_tess(tmp_path, speakers=("OAF",), emotions=("angry",))
    folder = tmp_path / "tess" / "OAF_angry"
    write_bytes(folder / "OAF_text_angry.wav")  # a text file renamed .wav
    write_bytes(folder / "OAF_zero_angry.flac", b"")  # zero bytes
    write_empty_wav(folder / "OAF_empty_angry.wav")  # header, no samples
    good = (folder / "OAF_back_angry.wav").read_bytes()
    write_bytes(folder / "OAF_cut_angry.wav", good[:30])  # truncated download
    lines: list[str] = []
    m = manifest(tmp_path, lines, corpora=["tess"])
    assert sorted(Path(r.path).name for r in m.rows) == ["OAF_back_angry.wav", "OAF_bar_angry.wav"]
    skipped = {Path(s.path).name: s.reason for s in m.skipped}
    assert set(skipped) == {
        "OAF_text_angry.wav",
        "OAF_zero_angry.flac",
        "OAF_empty_angry.wav",
        "OAF_cut_angry.wav",
    }
    assert "not readable as audio" in skipped["OAF_text_angry.wav"]
    assert "empty" in skipped["OAF_empty_angry.wav"]
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 4
    assert any("OAF_text_angry.wav" in w and "not readable" in w for w in warnings)


def test_hidden_and_non_audio_files_are_ignored(tmp_path):
    make_emodb(tmp_path, speakers=("03",), emotions=("angry",))
    wav = tmp_path / "emodb" / "wav"
    write_bytes(wav / "._03a01Wa.wav", b"\x00\x05\x16\x07")  # macOS resource fork
    write_bytes(tmp_path / "emodb" / "__MACOSX" / "wav" / "03a01Wa.wav", b"junk")
    write_bytes(tmp_path / "emodb" / "README.txt", b"about the corpus")
    lines: list[str] = []
    m = manifest(tmp_path, lines, corpora=["emodb"])
    assert len(m.rows) == 1 and not m.skipped
    assert any("ignored non-audio files: .txt 1" in line for line in lines)


# ---------------------------------------------------------------------- manifest
def test_emotions_filter_counts_dropped_labels(tmp_path):
    make_corpora(tmp_path)
    lines: list[str] = []
    m = manifest(tmp_path, lines, emotions=["angry", "happy", "sad", "neutral"])
    assert set(m.counts("emotion")) == {"angry", "happy", "sad", "neutral"}
    # RAVDESS 4 actors x (2 calm, 2 fear, 2 disgust, 2 ps); TESS 2 x 2 words; EMO-DB 5 speakers
    assert m.dropped == {
        "boredom": 5,
        "calm": 8,
        "disgust": 8 + 4 + 5,
        "fear": 8 + 4 + 5,
        "ps": 8 + 4,
    }
    assert len(m.rows) == 4 * 7 + 16 + 20
    assert any(line.startswith("ravdess: 28 rows, 4 speakers") for line in lines)
    assert lines[-1].startswith("manifest: 64 rows")


def test_rows_are_in_corpus_then_path_order(tmp_path):
    make_corpora(tmp_path)
    m = manifest(tmp_path, corpora=["tess", "emodb"])
    assert [r.corpus for r in m.rows] == ["tess"] * 28 + ["emodb"] * 35
    assert [r.path for r in m.rows[:28]] == sorted(r.path for r in m.rows[:28])


def test_missing_root_error_names_path_key_and_env(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(CorpusNotFoundError) as err:
        manifest(missing)
    assert str(missing) in str(err.value)
    assert "data.root" in str(err.value) and DATA_ROOT_ENV in str(err.value)
    assert isinstance(err.value, FileNotFoundError)


def test_missing_corpus_folder_error_names_path_and_key(tmp_path):
    make_tess(tmp_path)
    with pytest.raises(CorpusNotFoundError) as err:
        manifest(tmp_path, corpora=["tess", "ravdess"])
    message = str(err.value)
    assert str(tmp_path / "ravdess") in message
    assert "data.ravdess.folder" in message and DATA_ROOT_ENV in message


def test_folder_option_is_relative_to_root(tmp_path):
    make_custom(tmp_path, ["a_happy.wav"], folder="my recordings")
    m = manifest(tmp_path, corpora=["custom"], custom={"folder": "my recordings"})
    assert len(m.rows) == 1


def test_manifest_save_load_round_trip(tmp_path):
    make_corpora(tmp_path / "data")
    write_bytes(tmp_path / "data" / "tess" / "OAF_angry" / "OAF_bad_angry.wav")
    m = manifest(tmp_path / "data", emotions=["angry", "happy", "sad", "neutral", "calm"])
    assert m.skipped and m.dropped
    m.save(tmp_path / "manifest.jsonl")
    back = Manifest.load(tmp_path / "manifest.jsonl")
    assert back.rows == m.rows
    assert [r.info for r in back.rows] == [r.info for r in m.rows]
    assert (back.skipped, back.dropped) == (m.skipped, m.dropped)
    assert back.counts() == m.counts()
    assert m.to_records()[0]["speaker"] == m.rows[0].speaker


def test_manifest_load_rejects_other_files(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"path": "a.wav"}\n')
    with pytest.raises(ValueError, match="not a manifest"):
        Manifest.load(tmp_path / "x.jsonl")


def test_counts_and_hours():
    rows = [
        Utterance("/a.wav", "tess", "tess:OAF", "female", "sad", 1800.0),
        Utterance("/b.wav", "tess", "tess:OAF", "female", "sad", 1800.0),
        Utterance("/c.wav", "emodb", "emodb:03", "male", "angry", 0.0),
    ]
    m = Manifest(rows, [Skipped("/d.wav", "empty")], {})
    assert m.counts() == {("emodb", "angry"): 1, ("tess", "sad"): 2}
    assert m.counts("gender") == {"female": 2, "male": 1}
    assert m.hours == pytest.approx(1.0)


# -------------------------------------------------------------------- symlinks
def test_a_symlinked_corpus_folder_and_symlinked_subfolders_are_read(tmp_path):
    real = make_ravdess(tmp_path / "elsewhere", actors=(1, 2))
    root = tmp_path / "data"
    (root / "ravdess").mkdir(parents=True)
    # Actor_01 linked in from elsewhere, Actor_02 as a real folder beside it.
    (root / "ravdess" / "Actor_01").symlink_to(tmp_path / "elsewhere" / "ravdess" / "Actor_01")
    make_ravdess(root, actors=(2,))
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "ravdess").symlink_to(root / "ravdess")  # the corpus folder itself a link
    for where in (root, linked):
        m = manifest(where, corpora=["ravdess"])
        assert len(m.rows) == len(real) == 30 and not m.skipped
        assert {r.speaker for r in m.rows} == {"ravdess:01", "ravdess:02"}
        assert all(r.path.startswith(str(where / "ravdess")) for r in m.rows)


def test_symlink_loops_are_walked_once(tmp_path):
    paths = make_custom(tmp_path, ["a/one_happy.wav", "b/two_sad.wav"])
    (tmp_path / "custom" / "a" / "up").symlink_to(tmp_path / "custom")  # loop to the top
    (tmp_path / "custom" / "b" / "again").symlink_to(tmp_path / "custom" / "b")  # to itself
    (tmp_path / "custom" / "c").symlink_to(tmp_path / "custom" / "a")  # a second way in
    m = manifest(tmp_path, corpora=["custom"])
    assert sorted(r.path for r in m.rows) == [str(p) for p in paths]


# -------------------------------------------------------------------- real data
@pytest.mark.corpus
def test_real_corpora_counts():
    root = os.environ.get(DATA_ROOT_ENV)
    if not root or not Path(root).is_dir():
        pytest.skip(f"set {DATA_ROOT_ENV} to the folder holding ravdess/, tess/, emodb/")
    m = build_manifest(DataConfig(root=root), log=lambda _: None)
    assert m.skipped == [] and m.dropped == {}
    assert m.counts("corpus") == {"emodb": 535, "ravdess": 1200, "tess": 2800}
    by = m.counts()
    ravdess = {e: n for (c, e), n in by.items() if c == "ravdess"}
    assert ravdess == {e: 80 if e == "neutral" else 160 for e in EMOTIONS if e != "boredom"}
    assert {e: n for (c, e), n in by.items() if c == "tess"} == {
        e: 400 for e in ("angry", "disgust", "fear", "happy", "neutral", "ps", "sad")
    }
    assert {e: n for (c, e), n in by.items() if c == "emodb"} == {
        "angry": 127,
        "boredom": 81,
        "disgust": 46,
        "fear": 69,
        "happy": 71,
        "sad": 62,
        "neutral": 79,
    }
    speakers = m.counts("speaker")
    assert sorted(s for s in speakers if s.startswith("ravdess:")) == [
        f"ravdess:{a:02d}" for a in range(1, 21)
    ]
    assert sorted(s for s in speakers if s.startswith("tess:")) == ["tess:OAF", "tess:YAF"]
    assert len([s for s in speakers if s.startswith("emodb:")]) == 10
    assert None not in set(m.counts("gender"))


@pytest.mark.corpus
def test_a_symlink_to_a_real_corpus_reads_as_many_rows_as_the_real_path(tmp_path):
    root = os.environ.get(DATA_ROOT_ENV)
    if not root or not (Path(root) / "ravdess").is_dir():
        pytest.skip(f"set {DATA_ROOT_ENV} to the folder holding ravdess/")
    (tmp_path / "ravdess").symlink_to(Path(root).absolute() / "ravdess")
    direct = build_manifest(DataConfig(root=root, corpora=["ravdess"]), log=lambda _: None)
    linked = build_manifest(DataConfig(root=str(tmp_path), corpora=["ravdess"]), log=lambda _: None)
    assert len(linked.rows) == len(direct.rows) == 1200
    assert linked.counts() == direct.counts()
