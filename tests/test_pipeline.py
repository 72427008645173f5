"""The tf.data builder: normalisation, padding, shuffling, augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from ser.config import AugmentConfig
from ser.data.pipeline import (
    Normaliser,
    centre_crop,
    length_bucket_bounds,
    make_dataset,
    to_model_input,
)


def sequences(n=5, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(5.0, 2.0, size=(4 + i, dim)).astype(np.float32) for i in range(n)]


def test_normaliser_fits_frames_and_round_trips(tmp_path):
    xs = sequences()
    norm = Normaliser.fit(xs)
    frames = np.concatenate(xs)
    np.testing.assert_allclose(norm.mean, frames.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.std, frames.std(0), rtol=1e-5)
    z = np.concatenate([norm.apply(x) for x in xs])
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-5)
    norm.save(tmp_path / "n.json")
    again = Normaliser.load(tmp_path / "n.json")
    np.testing.assert_array_equal(again.mean, norm.mean)
    np.testing.assert_array_equal(again.std, norm.std)


def test_normaliser_fit_one_clip_at_a_time_matches_the_stacked_statistics():
    rng = np.random.default_rng(1)
    scales, offsets = rng.uniform(0.01, 80.0, 40), rng.uniform(-500.0, 500.0, 40)
    xs = [
        (rng.standard_normal((int(rng.integers(1, 60)), 40)) * scales + offsets).astype(np.float32)
        for _ in range(50)
    ]
    stacked = np.concatenate(xs).astype(np.float64)
    norm = Normaliser.fit(xs)
    np.testing.assert_array_equal(norm.mean, stacked.mean(0).astype(np.float32))
    np.testing.assert_allclose(norm.std, stacked.std(0), rtol=1e-6)
    vectors = [x[0] for x in xs]  # pooled inputs [D] count one row each
    np.testing.assert_allclose(Normaliser.fit(vectors).mean, np.stack(vectors).mean(0), rtol=1e-6)


def test_frames_handed_over_in_many_chunks_arrive_whole_and_in_order(monkeypatch):
    from ser.data import pipeline

    xs = sequences(n=9, dim=3)
    norm = Normaliser.fit(xs)
    monkeypatch.setattr(pipeline, "FRAME_CHUNK_BYTES", 100)  # a chunk every clip or two
    ds = make_dataset(xs, np.arange(9), normaliser=norm, batch_size=1, training=False, seed=0)
    got = list(ds.as_numpy_iterator())
    assert [int(y[0]) for _, y in got] == list(range(9))
    for x, (batch, _) in zip(xs, got):
        np.testing.assert_array_equal(batch[0], norm.apply(x))


def test_normaliser_constant_dimension_stays_finite():
    xs = [np.ones((4, 2), np.float32), np.ones((3, 2), np.float32)]
    out = Normaliser.fit(xs).apply(xs[0])
    assert np.isfinite(out).all()
    with pytest.raises(ValueError, match="empty"):
        Normaliser.fit([])


def test_sequence_batches_are_zero_padded_at_the_end_in_order():
    xs = sequences(n=5, dim=3)
    labels = np.arange(5)
    norm = Normaliser.fit(xs)
    ds = make_dataset(xs, labels, normaliser=norm, batch_size=2, training=False, seed=0)
    batches = list(ds.as_numpy_iterator())
    assert [b[0].shape for b in batches] == [(2, 5, 3), (2, 7, 3), (1, 8, 3)]
    x0, y0 = batches[0]
    np.testing.assert_array_equal(y0, [0, 1])
    np.testing.assert_allclose(x0[0, :4], norm.apply(xs[0]), atol=1e-6)
    assert (x0[0, 4:] == 0).all()  # padding is exact zeros (masked by the models)
    assert (np.abs(x0[1]).sum(axis=1) > 0).all()


def test_training_shuffle_is_seeded():
    xs = sequences(n=20, dim=2)
    labels = np.arange(20)
    norm = Normaliser.fit(xs)

    def order(seed):
        ds = make_dataset(xs, labels, normaliser=norm, batch_size=32, training=True, seed=seed)
        return next(iter(ds.as_numpy_iterator()))[1].tolist()

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(order(1)) == list(range(20))


def test_datasets_shard_by_data_and_every_task_builds_the_same_order():
    """Multi-worker tasks each build the dataset and keep their slices of every batch
    (DATA sharding): that needs the same order on every task, epoch after epoch."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    pooled = [rng.normal(size=4).astype(np.float32) for _ in range(9)]
    labels = np.arange(9)
    for xs in (pooled, sequences(n=9, dim=2)):
        norm = Normaliser.fit(xs)

        def build(training: bool, xs=xs, norm=norm):
            return make_dataset(
                xs, labels, normaliser=norm, batch_size=4, training=training, seed=3
            )

        def epochs(ds) -> list[list[int]]:
            return [[int(y) for _, ys in ds.as_numpy_iterator() for y in ys] for _ in range(2)]

        for training in (True, False):
            policy = build(training).options().experimental_distribute.auto_shard_policy
            assert policy == tf.data.experimental.AutoShardPolicy.DATA
        task0, task1 = epochs(build(True)), epochs(build(True))
        assert task0 == task1 and task0[0] != task0[1]  # reshuffled, identically on each task


def test_pooled_inputs_batch_as_vectors():
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=6).astype(np.float32) for _ in range(7)]
    ds = make_dataset(xs, None, normaliser=Normaliser.fit(xs), batch_size=4, training=False, seed=0)
    assert [b.shape for b in ds.as_numpy_iterator()] == [(4, 6), (3, 6)]


def test_augmentation_only_changes_training_batches():
    xs = [np.random.default_rng(i).normal(size=(50, 10)).astype(np.float32) for i in range(4)]
    labels = np.zeros(4, int)
    norm = Normaliser.fit(xs)
    aug = AugmentConfig(time_masks=2, time_mask_width=10, feature_masks=1, gaussian_noise=0.1)
    plain = make_dataset(
        xs, labels, normaliser=norm, batch_size=4, training=False, seed=0, augment=aug
    )
    x_plain = next(iter(plain.as_numpy_iterator()))[0]
    np.testing.assert_allclose(x_plain, np.stack([norm.apply(x) for x in xs]), atol=1e-6)
    trained = make_dataset(
        xs, labels, normaliser=norm, batch_size=4, training=True, seed=0, augment=aug
    )
    x_aug = next(iter(trained.as_numpy_iterator()))[0]
    assert x_aug.shape == x_plain.shape
    assert not np.allclose(np.sort(x_aug.ravel()), np.sort(x_plain.ravel()))
    # Masked frames are not all-zero, so augmentation never turns a frame into padding.
    assert (np.abs(x_aug).sum(axis=2) > 0).all()


def test_crop_and_model_input():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    np.testing.assert_array_equal(centre_crop(x, 4), x[3:7])
    assert centre_crop(x, 40) is x
    pooled = to_model_input(x, "pooled", ["mean", "std"], 4)
    assert pooled.shape == (4,)
    assert to_model_input(x, "sequence", ["mean"], 4).shape == (4, 2)


def test_scope_normalise_by_utterance_and_by_speaker():
    from types import SimpleNamespace as Row

    from ser.data.pipeline import scope_normalise

    rng = np.random.default_rng(0)
    feats = {
        "a1": rng.normal(3, 2, (10, 2)).astype(np.float32),
        "a2": rng.normal(5, 1, (6, 2)).astype(np.float32),
        "b1": rng.normal(-4, 3, (8, 2)).astype(np.float32),
        "u1": rng.normal(9, 9, (5, 2)).astype(np.float32),
    }
    rows = [
        Row(path="a1", speaker="x:A"),
        Row(path="a2", speaker="x:A"),
        Row(path="b1", speaker="x:B"),
        Row(path="u1", speaker="custom:unknown"),
    ]
    assert scope_normalise(feats, rows, "none") is feats
    per_utt = scope_normalise(feats, rows, "utterance")
    for x in per_utt.values():
        np.testing.assert_allclose(x.mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(x.std(0), 1, atol=1e-5)
    per_spk = scope_normalise(feats, rows, "speaker")
    a = np.concatenate([per_spk["a1"], per_spk["a2"]])
    np.testing.assert_allclose(a.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(a.std(0), 1, atol=1e-5)
    assert abs(per_spk["a1"].mean() - per_spk["a2"].mean()) > 0.1  # clips keep their offsets
    np.testing.assert_allclose(per_spk["u1"].mean(0), 0, atol=1e-5)  # unknown: by utterance
    assert [x.shape for x in per_spk.values()] == [x.shape for x in feats.values()]


def test_speaker_normalise_vectors():
    from ser.data.pipeline import speaker_normalise_vectors

    rng = np.random.default_rng(0)
    a = [rng.normal(5, 3, 4) for _ in range(6)]
    b = [rng.normal(-2, 0.5, 4) for _ in range(3)]
    speakers = ["x:A", "x:B", "x:A", "x:A", "x:B", "x:A", "x:A", "x:B", "x:Solo"]
    vectors = [a[0], b[0], a[1], a[2], b[1], a[3], a[4], b[2], rng.normal(0, 1, 4)]
    out = speaker_normalise_vectors(vectors, speakers)
    assert len(out) == len(vectors) and all(v.shape == (4,) for v in out)
    for speaker in ("x:A", "x:B"):
        own = np.stack([v for v, s in zip(out, speakers, strict=True) if s == speaker])
        np.testing.assert_allclose(own.mean(0), 0, atol=1e-6)
        np.testing.assert_allclose(own.std(0), 1, atol=1e-6)
    # order within a speaker is kept: the first A vector is still the first A vector
    first = (a[0] - np.mean(a[:5], 0)) / np.std(a[:5], 0)
    np.testing.assert_allclose(out[0], first, rtol=1e-5)
    np.testing.assert_array_equal(out[-1], 0)  # one clip: centred, nothing to scale by
    with pytest.raises(ValueError, match="2 vectors but 1 speakers"):
        speaker_normalise_vectors(vectors[:2], speakers[:1])


def test_pooled_normalisation_needs_pooled_mode():
    from ser.config import FeaturesConfig

    assert FeaturesConfig(mode="pooled", pooled_normalisation="speaker")
    with pytest.raises(ValueError, match="pooled_normalisation needs mode: pooled"):
        FeaturesConfig(pooled_normalisation="speaker")


def test_pooled_noise_only_in_training_and_fresh_each_epoch():
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=5).astype(np.float32) for _ in range(64)]
    labels = np.arange(64)  # unique: they tell which clip a shuffled row is
    norm = Normaliser.fit(xs)
    aug = AugmentConfig(gaussian_noise=0.5)
    clean = np.stack([norm.apply(x) for x in xs])
    plain = make_dataset(
        xs, labels, normaliser=norm, batch_size=64, training=False, seed=0, augment=aug
    )
    np.testing.assert_allclose(next(iter(plain.as_numpy_iterator()))[0], clean, atol=1e-6)
    noisy = make_dataset(
        xs, labels, normaliser=norm, batch_size=64, training=True, seed=0, augment=aug
    )
    epochs = []
    for _ in range(2):
        x, y = next(iter(noisy.as_numpy_iterator()))
        assert sorted(y.tolist()) == labels.tolist()
        epochs.append(x[np.argsort(y)])
    for x in epochs:
        assert 0.35 < np.std(x - clean) < 0.65  # the noise, ~0.5
    assert not np.allclose(epochs[0], epochs[1])  # a new draw each epoch


def test_one_hot_targets_for_pooled_and_sequence_batches():
    norm = Normaliser.fit(sequences())
    ds = make_dataset(
        sequences(),
        np.array([0, 2, 1, 2, 0]),
        normaliser=norm,
        batch_size=5,
        training=False,
        seed=0,
        one_hot=3,
    )
    _, y = next(iter(ds.as_numpy_iterator()))
    assert y.dtype == np.float32 and y.shape == (5, 3)
    np.testing.assert_array_equal(y.argmax(axis=1), [0, 2, 1, 2, 0])
    pooled = [x.mean(axis=0) for x in sequences()]
    ds = make_dataset(
        pooled,
        np.array([1, 1, 0, 0, 2]),
        normaliser=Normaliser.fit(pooled),
        batch_size=5,
        training=False,
        seed=0,
        one_hot=3,
    )
    _, y = next(iter(ds.as_numpy_iterator()))
    np.testing.assert_array_equal(y, np.eye(3, dtype=np.float32)[[1, 1, 0, 0, 2]])


def test_mixup_blends_vectors_and_targets_with_the_same_weight():
    rng = np.random.default_rng(1)
    n, classes = 256, 4
    # Vector i is one-hot of its own class scaled by 10, so a blend shows its weights.
    labels = rng.integers(0, classes, size=n)
    xs = [np.eye(classes, dtype=np.float32)[c] * 10 for c in labels]
    identity = Normaliser(mean=np.zeros(classes, np.float32), std=np.ones(classes, np.float32))
    aug = AugmentConfig(mixup=0.4)
    ds = make_dataset(
        xs,
        labels,
        normaliser=identity,
        batch_size=n,
        training=True,
        seed=3,
        augment=aug,
        one_hot=classes,
    )
    x, y = next(iter(ds.as_numpy_iterator()))
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)  # still distributions
    np.testing.assert_allclose(x / 10, y, atol=1e-5)  # the same blend for inputs and targets
    top = y.max(axis=1)
    assert (top < 0.999).mean() > 0.3  # most examples really are blended ...
    assert 0.5 <= top.min() and top.mean() > 0.7  # ... and Beta(0.4, 0.4) keeps one side strong
    plain = make_dataset(
        xs,
        labels,
        normaliser=identity,
        batch_size=n,
        training=False,
        seed=3,
        augment=aug,
        one_hot=classes,
    )
    _, y = next(iter(plain.as_numpy_iterator()))
    assert set(np.unique(y)) == {0.0, 1.0}  # never on validation or test batches


def test_mixup_needs_one_hot_targets_and_pooled_features():
    from ser.config import load_config

    pooled = [x.mean(axis=0) for x in sequences()]
    with pytest.raises(ValueError, match="one_hot"):
        make_dataset(
            pooled,
            np.zeros(5, int),
            normaliser=Normaliser.fit(pooled),
            batch_size=2,
            training=True,
            seed=0,
            augment=AugmentConfig(mixup=0.2),
        )
    with pytest.raises(ValueError, match="augment.mixup needs features.mode: pooled"):
        load_config(None, ["augment.mixup=0.2"], env={})


@pytest.mark.parametrize("pooled", [False, True])
def test_an_endless_training_dataset_repeats_every_example_once_per_pass(pooled):
    """``train.epoch_size: clips``: the examples go round without end, each pass a new
    shuffle of all of them, so an epoch shorter than a pass goes on where the last stopped."""
    xs = [x.mean(axis=0) for x in sequences(n=10, dim=2)] if pooled else sequences(n=10, dim=2)
    labels = np.arange(10)
    norm = Normaliser.fit(xs)
    ds = make_dataset(
        xs, labels, normaliser=norm, batch_size=5, training=True, seed=3, endless=True
    )
    seen = [int(y) for _x, batch in ds.take(8).as_numpy_iterator() for y in batch]
    passes = [seen[k : k + 10] for k in range(0, 40, 10)]
    assert all(sorted(p) == list(range(10)) for p in passes)
    assert len({tuple(p) for p in passes}) > 1  # reshuffled on each pass
    plain = make_dataset(xs, labels, normaliser=norm, batch_size=5, training=True, seed=3)
    assert sum(1 for _ in plain) == 2  # without it, one pass


def test_length_bucket_bounds_split_the_lengths_into_groups_of_equal_size():
    lengths = np.arange(100, 200)
    bounds = length_bucket_bounds(lengths, 4)
    assert len(bounds) == 3
    groups = np.searchsorted(bounds, lengths, side="right")  # the bucket each length takes
    assert np.bincount(groups).tolist() == [25, 25, 25, 25]
    assert length_bucket_bounds(lengths, 1) == [] == length_bucket_bounds(lengths, 0)
    assert length_bucket_bounds(np.full(50, 120), 8) == []  # one length: one bucket


def test_length_buckets_pad_each_training_batch_to_clips_of_similar_length():
    """``train.length_buckets``: every example once per pass, each batch from one bucket
    (so padded to its own longest clip, not the longest the shuffle put beside it), the
    frames themselves unchanged, in a seeded order that still changes between seeds."""
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(10, 20, 40), rng.integers(80, 100, 40)])
    xs = [rng.normal(size=(n, 2)).astype(np.float32) + 1.0 for n in rng.permutation(lengths)]
    labels = np.arange(len(xs))
    norm = Normaliser.fit(xs)

    def batches(buckets, seed=1):
        ds = make_dataset(
            xs,
            labels,
            normaliser=norm,
            batch_size=8,
            training=True,
            seed=seed,
            length_buckets=buckets,
        )
        return list(ds.as_numpy_iterator())

    bucketed, plain = batches(2), batches(0)
    assert len(bucketed) == 10  # 40 short and 40 long clips in batches of 8
    ds = make_dataset(
        xs, labels, normaliser=norm, batch_size=8, training=True, seed=1, length_buckets=2
    )
    assert int(ds.cardinality()) == 10  # known beforehand, as Keras wants it
    for run in (bucketed, plain):
        assert sorted(int(y) for _x, ys in run for y in ys) == labels.tolist()
    padded = lambda run: sum(x.shape[0] * x.shape[1] for x, _y in run)  # noqa: E731
    assert padded(bucketed) < 0.7 * padded(plain)
    for x, ys in bucketed:  # short and long clips never share a batch
        real = [len(xs[int(y)]) for y in ys]
        assert max(real) < 20 or min(real) >= 80
        assert x.shape[1] == max(real)
        for row, y in zip(x, ys):
            np.testing.assert_allclose(row[: len(xs[int(y)])], norm.apply(xs[int(y)]), atol=1e-6)
    order = lambda run: [int(y) for _x, ys in run for y in ys]  # noqa: E731
    assert order(bucketed) == order(batches(2)) != order(batches(2, seed=2))
