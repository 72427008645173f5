"""Speaker-independent splits and folds on in-memory manifest rows."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from ser.config import SplitConfig
from ser.data.corpora import Utterance
from ser.data.splits import PARTS, Split, SplitError, cap_speaker_clips, make_folds, make_split

EMOTIONS7 = ("angry", "disgust", "fear", "happy", "neutral", "ps", "sad")


def corpus_rows(
    corpus: str, speakers: dict[str, str | None], per_emotion: int = 3
) -> list[Utterance]:
    """``per_emotion`` rows per speaker and emotion; ``speakers`` maps name -> gender."""
    return [
        Utterance(
            f"/data/{corpus}/{name}_{i}_{emotion}.wav",
            corpus,
            f"{corpus}:{name}",
            gender,
            emotion,
            1.0,
        )
        for name, gender in speakers.items()
        for emotion in EMOTIONS7
        for i in range(per_emotion)
    ]


def ravdess(n: int = 8) -> list[Utterance]:
    return corpus_rows(
        "ravdess", {f"{a:02d}": "male" if a % 2 else "female" for a in range(1, n + 1)}
    )


def tess() -> list[Utterance]:
    return corpus_rows("tess", {"OAF": "female", "YAF": "female"}, per_emotion=10)


def emodb() -> list[Utterance]:
    return corpus_rows(
        "emodb", {"03": "male", "08": "female", "09": "female", "10": "male", "11": "male"}
    )


ROWS = ravdess() + tess() + emodb()
SPEAKERS = sorted({r.speaker for r in ROWS})


def check(split: Split, rows: list[Utterance]) -> dict[str, list[Utterance]]:
    """The invariants every split must satisfy; returns the partition."""
    parts = split.partition(rows)
    paths = [r.path for part in PARTS for r in parts[part]]
    assert sorted(paths) == sorted(r.path for r in rows)  # every row exactly once
    assert all(parts[p] for p in PARTS), {p: len(parts[p]) for p in PARTS}
    if split.speaker_independent:
        test = {r.speaker for r in parts["test"]}
        train = {r.speaker for r in parts["train"]}
        val_speakers = {r.speaker for r in parts["val"] if r.path not in set(split.val_paths)}
        assert not test & (train | {r.speaker for r in parts["val"]})
        assert not val_speakers & train
        assert test == set(split.test_speakers)
        assert val_speakers == set(split.val_speakers)
        assert {r.speaker for r in rows if r.path in set(split.val_paths)} <= set(
            split.train_speakers
        )
        assert split.val_speaker_independent == (not split.val_paths)
    assert Split.from_dict(json.loads(json.dumps(split.to_dict()))) == split
    return parts


# ------------------------------------------------------------------------ methods
@pytest.mark.parametrize("seed", range(25))
def test_speaker_split_invariants(seed):
    split = make_split(ROWS, SplitConfig(method="speaker"), seed)
    check(split, ROWS)
    assert split.method == "speaker" and split.speaker_independent
    # every corpus is represented in test
    assert {s.split(":")[0] for s in split.test_speakers} == {"ravdess", "tess", "emodb"}


def test_speaker_split_counts_per_corpus():
    split = make_split(ravdess(20) + emodb(), SplitConfig(method="speaker"), 42)
    count = Counter(s.split(":")[0] for s in split.test_speakers)
    assert count == {"ravdess": 4, "emodb": 1}  # round(20 * .2), round(5 * .2)
    count = Counter(s.split(":")[0] for s in split.val_speakers)
    assert count == {"ravdess": 3, "emodb": 1}  # round(20 * .15); at least 1 of 5
    assert not split.val_paths and split.val_speaker_independent


@pytest.mark.parametrize("seed", range(10))
def test_speaker_split_balances_genders_in_test(seed):
    split = make_split(ravdess(20), SplitConfig(method="speaker"), seed)
    actors = [int(s.split(":")[1]) for s in split.test_speakers]
    assert sorted(a % 2 for a in actors) == [0, 0, 1, 1]


def test_two_speaker_corpus_validates_on_training_speaker_utterances():
    rows = tess()
    split = make_split(rows, SplitConfig(method="speaker", val_fraction=0.2), 7)
    parts = check(split, rows)
    assert len(split.test_speakers) == 1 and len(split.train_speakers) == 1
    assert split.val_speakers == ()
    assert not split.val_speaker_independent
    assert len(split.val_paths) == 14  # 20 % of 70 rows
    (train_speaker,) = split.train_speakers
    assert {r.speaker for r in parts["val"]} == {train_speaker}
    assert Counter(r.emotion for r in parts["val"]) == dict.fromkeys(EMOTIONS7, 2)  # stratified
    assert "validation utterances from training speakers: 14" in split.protocol()


def test_single_speaker_corpus_cannot_be_split_independently():
    rows = ravdess() + corpus_rows("custom", {"unknown": None})
    with pytest.raises(SplitError, match=r"'custom'.*method=random"):
        make_split(rows, SplitConfig(method="speaker"), 0)
    assert not make_split(rows, SplitConfig(method="random"), 0).speaker_independent


def test_same_seed_same_split_different_seeds_differ():
    cfg = SplitConfig(method="speaker")
    assert make_split(ROWS, cfg, 3) == make_split(list(reversed(ROWS)), cfg, 3)
    splits = {make_split(ROWS, cfg, seed) for seed in range(6)}
    assert len({s.test_speakers for s in splits}) > 1


def test_adding_a_corpus_does_not_reshuffle_the_others():
    cfg = SplitConfig(method="speaker")
    alone = make_split(ravdess(20), cfg, 5)
    mixed = make_split(ravdess(20) + emodb(), cfg, 5)
    assert [s for s in mixed.test_speakers if s.startswith("ravdess")] == list(alone.test_speakers)


# ------------------------------------------------------------------------ explicit
def test_explicit_with_validation_speakers():
    cfg = SplitConfig(
        method="explicit", test_speakers=["ravdess:01", "tess:OAF"], val_speakers=["ravdess:02"]
    )
    split = make_split(ROWS, cfg, 0)
    check(split, ROWS)
    assert split.test_speakers == ("ravdess:01", "tess:OAF")
    assert split.val_speakers == ("ravdess:02",) and not split.val_paths
    assert len(split.train_speakers) == len(SPEAKERS) - 3


def test_explicit_draws_validation_when_not_given():
    cfg = SplitConfig(method="explicit", test_speakers=["ravdess:01", "emodb:03", "tess:YAF"])
    split = make_split(ROWS, cfg, 0)
    check(split, ROWS)
    assert {s.split(":")[0] for s in split.val_speakers} == {"ravdess", "emodb"}
    assert split.val_paths  # from tess:OAF, the only TESS training speaker
    assert make_split(ROWS, cfg, 0) == split


@pytest.mark.parametrize(
    ("test", "val", "message"),
    [
        (["ravdess:99"], [], r"unknown speaker\(s\) ravdess:99; known: emodb:03"),
        (["ravdess:01"], ["tess:ZZZ"], r"split.val_speakers: unknown.*tess:YAF"),
        (["ravdess:01"], ["ravdess:01"], r"share ravdess:01"),
        ([], ["ravdess:01"], r"needs split.test_speakers"),
    ],
)
def test_explicit_errors(test, val, message):
    cfg = SplitConfig(method="explicit", test_speakers=test, val_speakers=val)
    with pytest.raises(SplitError, match=message):
        make_split(ROWS, cfg, 0)


# --------------------------------------------------------------------- kfold, loso
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("folds", [2, 3, 5])
def test_kfold_folds_partition_speakers(seed, folds):
    cfg = SplitConfig(method="kfold", folds=folds)
    splits = make_folds(ROWS, cfg, seed)
    assert len(splits) == folds
    tested = Counter(s for split in splits for s in split.test_speakers)
    assert sorted(tested) == SPEAKERS and set(tested.values()) == {1}
    for k, split in enumerate(splits):
        assert (split.fold, split.folds, split.method) == (k, folds, "kfold")
        check(split, ROWS)
        assert make_split(ROWS, SplitConfig(method="kfold", folds=folds, fold=k), seed) == split
    sizes = [len(s.test_speakers) for s in splits]
    assert max(sizes) - min(sizes) <= 1


def test_kfold_errors():
    with pytest.raises(SplitError, match="split.fold=5 must be in 0..4"):
        make_split(ROWS, SplitConfig(method="kfold", folds=5, fold=5), 0)
    with pytest.raises(SplitError, match="needs at least 3 speakers; the data has 2"):
        make_split(tess(), SplitConfig(method="kfold", folds=3), 0)


def test_loso_one_fold_per_speaker():
    splits = make_folds(ROWS, SplitConfig(method="loso"), 1)
    assert [s.test_speakers for s in splits] == [(s,) for s in SPEAKERS]
    for split in splits:
        check(split, ROWS)
        assert split.folds == len(SPEAKERS)
    assert make_split(ROWS, SplitConfig(method="loso", fold=3), 1) == splits[3]
    with pytest.raises(SplitError, match="one fold per speaker"):
        make_split(ROWS, SplitConfig(method="loso", fold=len(SPEAKERS)), 1)


def test_make_folds_of_single_split_methods():
    assert make_folds(ROWS, SplitConfig(method="speaker"), 0) == [
        make_split(ROWS, SplitConfig(method="speaker"), 0)
    ]


# -------------------------------------------------------------------------- random
@pytest.mark.parametrize("seed", range(5))
def test_random_split_is_stratified_and_labelled_speaker_dependent(seed):
    split = make_split(ROWS, SplitConfig(method="random", test_fraction=0.2), seed)
    parts = check(split, ROWS)
    assert not split.speaker_independent and not split.val_speaker_independent
    assert split.protocol().startswith("SPEAKER-DEPENDENT random stratified split")
    assert set(split.test_speakers) & set(split.train_speakers)
    assert set(split.train_speakers) == {r.speaker for r in parts["train"]}
    # 20 % of each (corpus, emotion) stratum of 24 / 20 / 15 rows
    test = Counter((r.corpus, r.emotion) for r in parts["test"])
    assert {test[("ravdess", e)] for e in EMOTIONS7} <= {4, 5}
    assert {test[("tess", e)] for e in EMOTIONS7} == {4}
    assert make_split(ROWS, SplitConfig(method="random"), seed) == split


# ------------------------------------------------------------------ Split as data
def test_protocol_names_test_and_validation_speakers():
    split = make_split(ROWS, SplitConfig(method="speaker"), 42)
    line = split.protocol()
    assert line.startswith("speaker-independent (speaker split, seed 42): test speakers ")
    assert all(s in line for s in split.test_speakers + split.val_speakers)
    fold = make_split(ROWS, SplitConfig(method="kfold", fold=2), 42).protocol()
    assert "kfold split, fold 2 of 0..4" in fold


def test_partition_rejects_unknown_speakers():
    split = make_split(ravdess(), SplitConfig(method="speaker"), 0)
    with pytest.raises(SplitError, match="speaker.*not in this split: tess:OAF, tess:YAF"):
        split.partition(ravdess() + tess())


def test_split_rejects_overlapping_lists_and_unknown_keys():
    with pytest.raises(SplitError, match="both train and test: a"):
        Split("speaker", True, ("a", "b"), (), ("a",))
    with pytest.raises(SplitError, match="speaker_independent"):
        Split("random", True, ("a",), (), ("b",))
    with pytest.raises(SplitError, match="unknown split keys"):
        Split.from_dict({**make_split(ROWS, SplitConfig(), 0).to_dict(), "extra": 1})


# ------------------------------------------------------------------ speaker caps
def test_capping_keeps_at_most_the_cap_per_speaker_spread_over_emotions():
    rows = tess() + ravdess(2)  # 70 clips per TESS speaker, 21 per RAVDESS actor
    kept = cap_speaker_clips(rows, 14, seed=3)
    per_speaker = Counter(r.speaker for r in kept)
    assert per_speaker == {"tess:OAF": 14, "tess:YAF": 14, "ravdess:01": 14, "ravdess:02": 14}
    for speaker in per_speaker:  # two clips of each of the seven emotions
        assert set(Counter(r.emotion for r in kept if r.speaker == speaker).values()) == {2}
    assert kept == [r for r in rows if r in kept]  # input order kept
    assert cap_speaker_clips(rows, 14, seed=3) == kept
    assert cap_speaker_clips(rows, 14, seed=4) != kept


def test_capping_leaves_speakers_under_the_cap_untouched():
    rows = ravdess(3) + emodb()
    assert cap_speaker_clips(rows, 21, seed=0) == rows
