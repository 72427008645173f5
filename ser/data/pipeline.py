"""The one tf.data builder, used by training, evaluation and tests.

cached features -> model inputs (crop sequences / pool statistics) -> normalise
with statistics fitted on the training split only -> (train only) augmentation
-> seeded shuffle -> padded batch -> prefetch.

Sequences are padded at the end with exact zeros; the models mask all-zero
frames, so padding never counts. After normalisation a real frame is all-zero
with probability ~0.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ser.config import AugmentConfig
from ser.features.extractors import pool


@dataclass(frozen=True)
class Normaliser:
    """Per-dimension z-normalisation: ``(x - mean) / std``; ``mean``, ``std`` are [D]."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, inputs: Sequence[np.ndarray]) -> Normaliser:
        """Fit on training inputs: each [frames, D] (every frame counts) or [D]."""
        if not inputs:
            raise ValueError("cannot fit a normaliser on an empty training set")
        # Two passes, one input at a time (float64 sums): stacking every training frame
        # in float64 first would need four times the frames' own memory (GBs with copies).
        rows = [np.atleast_2d(x) for x in inputs]
        count = sum(x.shape[0] for x in rows)
        mean = sum(x.sum(axis=0, dtype=np.float64) for x in rows) / count
        squares = sum(np.square(x - mean).sum(axis=0) for x in rows)  # x - mean is float64
        std = np.sqrt(squares / count)
        # Constant dimensions (e.g. a chroma bin in silence) must not blow up.
        std = np.where(std < 1e-8, 1.0, std)
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> Normaliser:
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Normaliser:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def zscore(frames: np.ndarray) -> np.ndarray:
    """[T, D] -> [T, D] with each dimension at zero mean and unit variance over its frames."""
    std = frames.std(axis=0)
    return ((frames - frames.mean(axis=0)) / np.where(std < 1e-8, 1.0, std)).astype(np.float32)


def scope_normalise(
    features: dict[str, np.ndarray], rows: Sequence[Any], scope: str
) -> dict[str, np.ndarray]:
    """Label-free normalisation of frame features [T, D] by utterance or by speaker.

    ``rows`` are manifest rows (``path``, ``speaker``); a speaker's statistics pool the
    frames of all of their clips, whatever split they are in: no label is used, so
    test speakers may be normalised by their own unlabelled audio. Speakers named
    ``<corpus>:unknown`` are normalised per utterance.
    """
    if scope == "none":
        return features
    groups: dict[str, list[str]] = {}
    for row in rows:
        if row.path in features:
            whole = scope == "utterance" or row.speaker.endswith(":unknown")
            groups.setdefault(row.path if whole else row.speaker, []).append(row.path)
    out: dict[str, np.ndarray] = {}
    for paths in groups.values():
        stacked = zscore(np.concatenate([features[p] for p in paths]))
        start = 0
        for p in paths:
            n = features[p].shape[0]
            out[p] = stacked[start : start + n]
            start += n
    return out


def speaker_normalise_vectors(
    vectors: Sequence[np.ndarray], speakers: Sequence[str]
) -> list[np.ndarray]:
    """Pooled vectors [D] z-normalised per speaker over all of that speaker's vectors.

    Label-free: the statistics of a test speaker come from their own unlabelled clips.
    Speakers named ``<corpus>:unknown`` form one group per corpus. A speaker with a
    single clip is only centred (its std is undefined): the vector becomes zeros.
    """
    if len(vectors) != len(speakers):
        raise ValueError(f"{len(vectors)} vectors but {len(speakers)} speakers")
    groups: dict[str, list[int]] = {}
    for i, speaker in enumerate(speakers):
        groups.setdefault(speaker, []).append(i)
    out: list[np.ndarray] = [np.empty(0, np.float32)] * len(vectors)
    for idx in groups.values():
        normalised = zscore(np.stack([vectors[i] for i in idx]).astype(np.float64))
        for row, i in enumerate(idx):
            out[i] = normalised[row]
    return out


def speaker_prior(vectors: Sequence[np.ndarray], speakers: Sequence[str]) -> Normaliser:
    """The average speaker: mean over speakers of each speaker's mean and std, over
    their pooled vectors [D] or over all frames of their clips (each [T, D])."""
    return average_speaker(*speaker_statistics(vectors, speakers))


def speaker_statistics(
    vectors: Sequence[np.ndarray], speakers: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Each speaker's mean and std (float64, [S, D] each, speakers in order of first
    appearance) over their pooled vectors [D] or over all frames of their clips ([T, D])."""
    groups: dict[str, list[np.ndarray]] = {}
    for x, speaker in zip(vectors, speakers, strict=True):
        groups.setdefault(speaker, []).append(np.atleast_2d(np.asarray(x, np.float64)))
    if not groups:
        raise ValueError("no training vectors to fit a speaker prior on")
    stacked = [np.concatenate(g, axis=0) for g in groups.values()]
    return np.stack([g.mean(axis=0) for g in stacked]), np.stack([g.std(axis=0) for g in stacked])


def average_speaker(means: np.ndarray, stds: np.ndarray) -> Normaliser:
    """The normaliser of the speakers whose statistics are ``means`` and ``stds`` ([S, D]):
    the mean of their means and of their stds (a constant dimension's std taken as 1)."""
    std = stds.mean(axis=0)
    return Normaliser(
        means.mean(axis=0).astype(np.float32), np.where(std < 1e-8, 1.0, std).astype(np.float32)
    )


# Pseudo-clips of the average training speaker blended into a session's statistics:
# a session's first clip leans on the prior, its twentieth mostly on its own clips.
SESSION_PRIOR_WEIGHT = 5.0


def blended_normaliser(
    count: int, total: np.ndarray, total_sq: np.ndarray, prior: Normaliser, prior_weight: float
) -> Normaliser:
    """Statistics of ``count`` raw pooled vectors (their sum and sum of squares) shrunk
    towards ``prior`` with ``prior_weight`` pseudo-vectors: mean = (n m + k m_prior) /
    (n + k), and the same for the variance. ``prior`` itself when ``count`` is 0."""
    n, k = count, prior_weight
    if n == 0:
        return prior
    prior_mean = prior.mean.astype(np.float64)
    prior_var = np.square(prior.std.astype(np.float64))
    mean = total / n
    var = np.maximum(total_sq / n - mean * mean, 0.0)
    std = np.sqrt((n * var + k * prior_var) / (n + k))
    return Normaliser(
        ((n * mean + k * prior_mean) / (n + k)).astype(np.float32),
        np.where(std < 1e-8, 1.0, std).astype(np.float32),
    )


def session_spread(count: int, total: np.ndarray, total_sq: np.ndarray, prior: Normaliser) -> float:
    """How varied a session's ``count`` raw pooled vectors are against what the average
    training speaker's clips vary by: the median over dimensions of the sample variance
    (n - 1) over the prior's variance, capped at 1. 1 (no evidence) below two clips."""
    if count < 2:
        return 1.0
    mean = total / count
    var = np.maximum(total_sq - count * mean * mean, 0.0) / (count - 1)
    prior_var = np.square(prior.std.astype(np.float64))
    return float(min(1.0, np.median(var / prior_var)))


def spread_weighted_normaliser(
    count: int,
    total: np.ndarray,
    total_sq: np.ndarray,
    prior: Normaliser,
    prior_weight: float,
    exponent: float,
) -> Normaliser:
    """``blended_normaliser`` with a prior weight that grows when the session's clips
    vary less than the average training speaker's (``session_spread`` r < 1): k / r**
    ``exponent``. A run of near-identical clips (one emotion) then leans on the prior
    instead of becoming the speaker's centre; a varied session is blended as before,
    and with many clips the weight of the session still goes to 1."""
    spread = max(session_spread(count, total, total_sq, prior), 1e-6)
    return blended_normaliser(count, total, total_sq, prior, prior_weight / spread**exponent)


def served_copies(
    vectors: Sequence[np.ndarray],
    speakers: Sequence[str],
    prior: Normaliser,
    copies: int,
    rng: np.random.Generator,
    prior_weight: float = SESSION_PRIOR_WEIGHT,
) -> list[list[np.ndarray]]:
    """``copies`` normalisations of each raw pooled vector as a served clip may get them.

    Each copy draws how many of its speaker's clips a session has heard, m from 0 to all
    of them with equal chance: m = 0 is a lone clip (the prior alone); otherwise the clip
    and m - 1 others of its speaker, blended with the prior (``blended_normaliser``).
    Returns one list of ``copies`` vectors per input vector, in input order. Label-free.
    """
    groups: dict[str, list[int]] = {}
    for i, speaker in enumerate(speakers):
        groups.setdefault(speaker, []).append(i)
    raw = [np.asarray(v, np.float64) for v in vectors]
    out: list[list[np.ndarray]] = [[] for _ in raw]
    for idx in groups.values():
        for i in idx:
            others = [j for j in idx if j != i]
            for _ in range(copies):
                m = int(rng.integers(0, len(idx) + 1))
                heard = [i, *rng.choice(others, size=m - 1, replace=False).tolist()] if m else []
                stack = np.stack([raw[j] for j in heard]) if heard else np.zeros((0, raw[i].size))
                norm = blended_normaliser(
                    len(heard), stack.sum(axis=0), (stack * stack).sum(axis=0), prior, prior_weight
                )
                out[i].append(norm.apply(raw[i].astype(np.float32)))
    return out


def centre_crop(frames: np.ndarray, max_frames: int) -> np.ndarray:
    """[T, D] -> [min(T, max_frames), D], keeping the middle of long clips."""
    if frames.shape[0] <= max_frames:
        return frames
    start = (frames.shape[0] - max_frames) // 2
    return frames[start : start + max_frames]


def to_model_input(
    features: np.ndarray, mode: str, pooling: Sequence[str], max_frames: int
) -> np.ndarray:
    """Frame-level features [T, D] -> one model input: [T', D] (sequence) or [D*k] (pooled)."""
    if mode == "pooled":
        return pool(features, pooling)
    return centre_crop(features, max_frames)


def max_frames_for(max_seconds: float, sample_rate: int, hop_length: int) -> int:
    return int(np.ceil(max_seconds * sample_rate / hop_length)) + 1


def _spec_augment(x, cfg: AugmentConfig, seed: int):
    """Train-only SpecAugment-style masks and Gaussian noise on one [T, D] sequence."""
    import tensorflow as tf

    t = tf.shape(x)[0]
    d = tf.shape(x)[1]
    # Masked cells are set to a tiny value, not 0: an all-zero frame means padding.
    fill = 1e-3
    for _ in range(cfg.time_masks):
        width = tf.random.uniform([], 0, cfg.time_mask_width + 1, dtype=tf.int32)
        start = tf.random.uniform([], 0, tf.maximum(t - width, 0) + 1, dtype=tf.int32)
        idx = tf.range(t)
        hit = tf.logical_and(idx >= start, idx < start + width)[:, None]
        x = tf.where(hit, fill * tf.ones_like(x), x)
    for _ in range(cfg.feature_masks):
        width = tf.random.uniform([], 0, cfg.feature_mask_width + 1, dtype=tf.int32)
        start = tf.random.uniform([], 0, tf.maximum(d - width, 0) + 1, dtype=tf.int32)
        idx = tf.range(d)
        hit = tf.logical_and(idx >= start, idx < start + width)[None, :]
        x = tf.where(hit, fill * tf.ones_like(x), x)
    if cfg.gaussian_noise > 0:
        x = x + tf.random.normal(tf.shape(x), stddev=cfg.gaussian_noise)
    return x


def augmentation_enabled(cfg: AugmentConfig | None) -> bool:
    return cfg is not None and (
        cfg.time_masks > 0 or cfg.feature_masks > 0 or cfg.gaussian_noise > 0
    )


def make_dataset(
    inputs: Sequence[np.ndarray],
    labels: np.ndarray | None,
    *,
    normaliser: Normaliser,
    batch_size: int,
    training: bool,
    seed: int,
    augment: AugmentConfig | None = None,
    one_hot: int | None = None,
    endless: bool = False,
    length_buckets: int = 0,
):
    """Build a batched ``tf.data.Dataset``.

    ``inputs``: model inputs, each [T_i, D] (sequence mode: batches are zero-padded
    to the longest clip, shape [B, T_max, D]) or [D] (pooled: [B, D]).
    ``labels``: int class indices [N] or None (inference: the dataset yields inputs only).
    ``one_hot``: the number of classes to yield float one-hot targets [B, classes]
    instead of indices (label smoothing and mixup need them; mixup requires it); with
    it, ``labels`` may also be probability targets [N, classes] (distillation).
    Shuffling (seeded, reshuffled each epoch) and augmentation happen only when ``training``.
    ``endless`` (training only): the shuffled examples repeat without end, reshuffled on
    each pass, for a caller that sets the steps of an epoch (``train.epoch_size: clips``).
    ``length_buckets`` > 1 (training sequences only): each batch is taken from one of
    that many buckets of similar lengths (``train.length_buckets``), in shuffled order.
    """
    import tensorflow as tf

    if len(inputs) == 0:
        raise ValueError("no examples to build a dataset from")
    sequence = np.ndim(inputs[0]) == 2
    mixup = augment.mixup if augment is not None and training and labels is not None else 0.0
    if mixup > 0 and one_hot is None:
        raise ValueError("mixup blends targets: pass one_hot=<number of classes>")
    if labels is not None and one_hot is not None and np.ndim(labels) == 1:
        labels = np.eye(one_hot, dtype=np.float32)[np.asarray(labels, np.int64)]
    if not sequence:
        noise = augment.gaussian_noise if augment is not None and training else 0.0
        normalised = np.stack([normaliser.apply(x) for x in inputs])
        return _pooled_dataset(
            normalised, labels, batch_size, training, seed, noise, mixup, endless
        )
    lengths, values = _normalised_frames(inputs, normaliser)
    ragged = tf.RaggedTensor.from_row_lengths(values, lengths)
    del values
    ds = tf.data.Dataset.from_tensor_slices(ragged)  # its own copy of the frames
    del ragged
    ds = ds.map(lambda x: x.to_tensor() if isinstance(x, tf.RaggedTensor) else x)
    if labels is not None:
        targets = np.asarray(labels, np.float32 if one_hot is not None else np.int32)
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensor_slices(targets)))
    if training:
        ds = ds.shuffle(len(inputs), seed=seed, reshuffle_each_iteration=True)
        if endless:
            ds = ds.repeat()
        if augmentation_enabled(augment):
            tf.random.set_seed(seed)
            aug = lambda x: _spec_augment(x, augment, seed)  # noqa: E731
            if labels is not None:
                ds = ds.map(lambda x, y: (aug(x), y), num_parallel_calls=tf.data.AUTOTUNE)
            else:
                ds = ds.map(aug, num_parallel_calls=tf.data.AUTOTUNE)
    dim = np.shape(inputs[0])[1]
    target_shape = [one_hot] if one_hot is not None else []
    shapes = ([None, dim], target_shape) if labels is not None else [None, dim]
    pads = (0.0, 0.0 if one_hot is not None else 0) if labels is not None else 0.0
    bounds = length_bucket_bounds(lengths, length_buckets) if training else []
    ds = _padded_batches(ds, lengths, bounds, batch_size, shapes, pads, endless)
    return _shard_by_data(ds.prefetch(tf.data.AUTOTUNE))


def _padded_batches(ds, lengths, bounds: list[int], batch_size: int, shapes, pads, endless: bool):
    """``ds``'s examples in zero-padded batches: plain (``bounds`` empty), or each batch
    from one length bucket (``length_bucket_bounds``), with the number of batches of a
    pass declared so Keras knows an epoch's length before the first one ends."""
    import tensorflow as tf

    if not bounds:
        return ds.padded_batch(batch_size, padded_shapes=shapes, padding_values=pads)
    ds = ds.bucket_by_sequence_length(
        lambda x, *_: tf.shape(x)[0],
        bucket_boundaries=bounds,
        bucket_batch_sizes=[batch_size] * (len(bounds) + 1),
        padded_shapes=shapes,
        padding_values=pads,
    )
    if endless:
        return ds
    buckets = np.bincount(np.searchsorted(bounds, lengths, side="right"))
    batches = int(sum(-(-n // batch_size) for n in buckets))
    return ds.apply(tf.data.experimental.assert_cardinality(batches))


def length_bucket_bounds(lengths: np.ndarray, buckets: int) -> list[int]:
    """Bucket bounds (a clip of length L goes to the first bucket whose bound exceeds
    L) at the quantiles that split ``lengths`` into ``buckets`` groups of about equal
    size; [] for one bucket. Repeated quantiles (many clips of one length) merge."""
    if buckets <= 1 or len(lengths) == 0:
        return []
    quantiles = np.quantile(np.asarray(lengths), np.arange(1, buckets) / buckets)
    return sorted({int(q) + 1 for q in quantiles if int(q) + 1 <= int(np.max(lengths))})


# Frames are normalised and handed to TensorFlow in chunks of about this many bytes.
FRAME_CHUNK_BYTES = 64 << 20


def _normalised_frames(
    inputs: Sequence[np.ndarray], normaliser: Normaliser
) -> tuple[np.ndarray, Any]:
    """Row lengths and the normalised frames of every clip, one after another, as one
    float32 tensor [sum of lengths, D]. Built chunk by chunk: while it is built the
    training set's frames are held twice (the chunks, then their concatenation), not
    three times as a whole NumPy array and its conversion would (GBs with copies)."""
    import tensorflow as tf

    lengths = np.array([np.shape(x)[0] for x in inputs], np.int64)
    chunks, pending, size = [], [], 0
    for x in inputs:
        pending.append(normaliser.apply(x))
        size += pending[-1].nbytes
        if size >= FRAME_CHUNK_BYTES:
            chunks.append(tf.constant(np.concatenate(pending)))
            pending, size = [], 0
    if pending:
        chunks.append(tf.constant(np.concatenate(pending)))
    values = chunks[0] if len(chunks) == 1 else tf.concat(chunks, axis=0)
    del chunks
    return lengths, values


def _shard_by_data(ds):
    """``ds`` set to be split between multi-worker tasks batch by batch (a no-op on one
    process).

    Under MultiWorkerMirroredStrategy every task builds this same in-memory dataset
    (same rows, same seeded shuffle: the same order on every task); the strategy cuts
    each global batch of ``batch_size`` into one slice per replica, and the DATA policy
    then gives each task its own slices. Sharding by FILE is impossible (there are no
    files), so AUTO would only fall back to DATA with a warning; OFF would feed every
    task every example, so each step would average duplicates and an epoch would cost
    the tasks' number of times more.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _pooled_dataset(
    x: np.ndarray,
    labels: np.ndarray | None,
    batch_size: int,
    training: bool,
    seed: int,
    noise: float = 0.0,
    mixup: float = 0.0,
    endless: bool = False,
):
    """[N, D] vectors -> batches [B, D]: shuffle and batch indices, then one gather per
    batch (slicing element by element costs more than a dense model's training step).
    ``noise`` > 0 (training only) adds N(0, noise^2) to every normalised value, a fresh
    draw each epoch; the masks of ``AugmentConfig`` apply to sequences only.
    ``mixup`` > 0 blends each example with a shuffled partner of its batch, weights
    l ~ Beta(mixup, mixup) per example, on the (noisy) vectors and the one-hot targets.
    ``endless`` (training only): the shuffled indices repeat without end."""
    import tensorflow as tf

    n = x.shape[0]
    index = tf.data.Dataset.range(n)
    if training:
        index = index.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        if endless:
            index = index.repeat()
    index = index.batch(batch_size)
    features = tf.constant(x)
    if labels is None:
        ds = index.map(lambda i: tf.gather(features, i))
    else:
        targets = tf.constant(
            labels if labels.dtype == np.float32 else np.asarray(labels, np.int32)
        )
        ds = index.map(lambda i: (tf.gather(features, i), tf.gather(targets, i)))
    if noise > 0 or mixup > 0:
        tf.random.set_seed(seed)
    if noise > 0:
        jitter = lambda v: v + tf.random.normal(tf.shape(v), stddev=noise, seed=seed)  # noqa: E731
        ds = ds.map(lambda v, y: (jitter(v), y)) if labels is not None else ds.map(jitter)
    if mixup > 0:
        ds = ds.map(lambda v, y: _mixup(v, y, mixup, seed))
    return _shard_by_data(ds.prefetch(tf.data.AUTOTUNE))


def _mixup(x, y, alpha: float, seed: int):
    """Blend batch ``x`` [B, D] and one-hot ``y`` [B, C] with a permutation of itself."""
    import tensorflow as tf

    n = tf.shape(x)[0]
    # Beta(a, a) as G1 / (G1 + G2) with G ~ Gamma(a, 1); tf.random has no beta.
    g1 = tf.random.gamma([n], alpha, seed=seed)
    g2 = tf.random.gamma([n], alpha, seed=seed + 1)
    lam = g1 / tf.maximum(g1 + g2, 1e-12)
    partner = tf.random.shuffle(tf.range(n), seed=seed)
    mix = lambda a: lam[:, None] * a + (1.0 - lam[:, None]) * tf.gather(a, partner)  # noqa: E731
    return mix(x), mix(y)
