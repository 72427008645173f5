"""Custom layers that keep padded frames out of convolutional models, and shared blocks.

Sequence batches are padded at the end with all-zero frames. Keras ``Conv1D`` and
``MaxPooling1D`` drop Keras masks, so the CNN and CRNN carry their own frame mask: a
float tensor ``[batch, frames]`` (1 = real frame, 0 = padding), the same layout as a
Keras mask so it can be passed straight to ``BatchNormalization(mask=...)`` and to
recurrent layers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import keras
from keras import layers, ops

# Keras's masked recurrent loop (what its own LSTM runs on CPU); it has no public name.
from keras.src.backend import rnn as backend_rnn

# Statistics ``MaskedGlobalPooling`` computes over a clip's real frames. The moments,
# slope and delta are defined as ``ser.features.extractors.pool`` defines them for the
# utterance functionals (slope against time scaled to [-1, 1]; delta the mean absolute
# change between neighbouring frames), in float32.
POOLING_STATS = ("mean", "std", "max", "min", "skew", "kurtosis", "slope", "delta")
# Below this variance a channel is constant over the clip: its skew and kurtosis are 0.
CONSTANT_VARIANCE = 1e-6


@keras.saving.register_keras_serializable(package="ser")
class FrameMask(layers.Layer):
    """``[B, T, D]`` features -> ``[B, T]`` float mask, 1 where a frame has any non-zero value.

    Normalised features are never exactly all zero, so an all-zero frame is padding.
    """

    def call(self, inputs):
        return ops.cast(ops.any(ops.not_equal(inputs, 0), axis=-1), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])


class ExplicitMaskLayer(layers.Layer):
    """Base of layers that take the frame mask as an explicit input, ``[x, mask]``.

    ``BatchNormalization(mask=...)`` and recurrent layers attach the frame mask to
    their output as a Keras mask; these layers accept it silently and drop it, as
    they read (and return, if they change it) the mask explicitly.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def compute_mask(self, inputs, previous_mask=None):
        return None


@keras.saving.register_keras_serializable(package="ser")
class MaskedMaxPooling1D(ExplicitMaskLayer):
    """Max-pool frames and their mask together over non-overlapping windows.

    ``[x [B, T, C], mask [B, T]] -> [x [B, ceil(T/p), C], mask [B, ceil(T/p)]]``.
    A pooled frame is real if its window holds any real frame; its value is the max
    over the real frames only, and pooled padding frames are exactly 0. Windows
    always start at frame 0 (the sequence is right-padded to a multiple of ``p``,
    unlike "same" pooling, which can shift them), so appending padding to an input
    never changes its real outputs.
    """

    def __init__(self, pool_size: int, **kwargs):
        super().__init__(**kwargs)
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self.pool_size = int(pool_size)

    def call(self, inputs):
        x, mask = inputs
        p = self.pool_size
        valid = ops.expand_dims(mask > 0, axis=-1)
        x = ops.where(valid, x, float("-inf"))
        mask = ops.expand_dims(ops.cast(mask, x.dtype), axis=-1)
        if p > 1:
            extra = (-ops.shape(x)[1]) % p
            pad = [[0, 0], [0, extra], [0, 0]]
            x = ops.pad(x, pad, constant_values=float("-inf"))
            mask = ops.pad(mask, pad, constant_values=0)
            x = ops.max_pool(x, pool_size=p, strides=p, padding="valid")
            mask = ops.max_pool(mask, pool_size=p, strides=p, padding="valid")
        # Windows of padding only hold -inf; they become 0 like the input padding,
        # so the next "same" convolution sees what it would see past the real end.
        x = ops.where(mask > 0, x, 0.0)
        return x, ops.squeeze(mask, axis=-1)

    def compute_output_shape(self, input_shape):
        x_shape, _ = input_shape
        steps = x_shape[1]
        steps = None if steps is None else -(-steps // self.pool_size)
        return (x_shape[0], steps, x_shape[2]), (x_shape[0], steps)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size}


@keras.saving.register_keras_serializable(package="ser")
class MaskedGlobalPooling(ExplicitMaskLayer):
    """Statistics over real frames only: ``[x [B, T, C], mask [B, T]] -> [B, C * len(stats)]``.

    ``stats`` is an ordered subset of ``POOLING_STATS``, concatenated in the given
    order. A sequence with no real frame pools to zeros instead of NaN.
    """

    def __init__(self, stats: Sequence[str] = ("mean", "max"), **kwargs):
        super().__init__(**kwargs)
        self.stats = _checked_stats(stats)

    def call(self, inputs):
        x, mask = inputs
        return masked_statistics(x, mask, self.stats)

    def compute_output_shape(self, input_shape):
        x_shape, _ = input_shape
        channels = x_shape[-1]
        return (x_shape[0], None if channels is None else channels * len(self.stats))

    def get_config(self):
        return {**super().get_config(), "stats": list(self.stats)}


def _checked_stats(stats: Sequence[str]) -> tuple[str, ...]:
    """``stats`` as a tuple; ``ValueError`` unless they are distinct ``POOLING_STATS``."""
    stats = tuple(stats)
    unknown = [s for s in stats if s not in POOLING_STATS]
    if not stats or unknown or len(set(stats)) != len(stats):
        raise ValueError(f"stats must be distinct names from {POOLING_STATS}, got {list(stats)}")
    return stats


def masked_statistics(x, mask, stats: Sequence[str]):
    """``stats`` of ``x`` [B, T, C] over its real frames (``mask`` [B, T], 1 = real),
    concatenated in order: [B, C * len(stats)]; a sequence without a real frame gives
    zeros (its std the square root of Keras's epsilon)."""
    weights = ops.expand_dims(ops.cast(mask, x.dtype), axis=-1)  # [B, T, 1]
    count = ops.sum(weights, axis=1)  # [B, 1]
    safe_count = ops.maximum(count, 1.0)
    mean = ops.sum(x * weights, axis=1) / safe_count
    centred = (x - ops.expand_dims(mean, axis=1)) * weights
    variance = ops.sum(ops.square(centred), axis=1) / safe_count
    pooled = []
    for stat in stats:
        if stat == "mean":
            pooled.append(mean)
        elif stat == "std":
            # The epsilon keeps the gradient of sqrt finite for constant channels.
            pooled.append(ops.sqrt(variance + keras.config.epsilon()))
        elif stat in ("max", "min"):
            sign = 1.0 if stat == "max" else -1.0
            peak = ops.max(ops.where(weights > 0, sign * x, float("-inf")), axis=1)
            pooled.append(ops.where(count > 0, sign * peak, 0.0))
        elif stat in ("skew", "kurtosis"):
            pooled.append(_standard_moment(centred, variance, safe_count, stat))
        elif stat == "slope":
            pooled.append(_slope(centred, count))
        else:
            pooled.append(_mean_change(x, weights, count))
    return pooled[0] if len(pooled) == 1 else ops.concatenate(pooled, axis=-1)


@keras.saving.register_keras_serializable(package="ser")
class MaskedWindowPooling1D(ExplicitMaskLayer):
    """Statistics of frames over non-overlapping windows: each window of ``pool_size``
    frames becomes one step holding ``stats`` (``POOLING_STATS``, as
    ``MaskedGlobalPooling`` computes them) of its real frames, so a sequence model reads
    short-segment functionals (e.g. mean and std over 250 ms) instead of frames.

    ``[x [B, T, C], mask [B, T]] -> [x [B, ceil(T/p), C * len(stats)], mask [B, ceil(T/p)]]``.
    Windows start at frame 0 (the sequence right-padded to a multiple of ``p``); a window
    is real if it holds a real frame, and a window of padding only is exactly 0, so
    appending padding never changes the real outputs.
    """

    def __init__(self, pool_size: int, stats: Sequence[str] = ("mean", "std"), **kwargs):
        super().__init__(**kwargs)
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self.pool_size = int(pool_size)
        self.stats = _checked_stats(stats)

    def call(self, inputs):
        x, mask = inputs
        p, channels = self.pool_size, x.shape[-1]
        batch, extra = ops.shape(x)[0], (-ops.shape(x)[1]) % p
        x = ops.pad(x, [[0, 0], [0, extra], [0, 0]])
        mask = ops.pad(ops.cast(mask, x.dtype), [[0, 0], [0, extra]])
        pooled = masked_statistics(
            ops.reshape(x, (-1, p, channels)), ops.reshape(mask, (-1, p)), self.stats
        )
        pooled = ops.reshape(pooled, (batch, -1, channels * len(self.stats)))
        window_mask = ops.max(ops.reshape(mask, (batch, -1, p)), axis=-1)
        return ops.where(ops.expand_dims(window_mask > 0, -1), pooled, 0.0), window_mask

    def compute_output_shape(self, input_shape):
        x_shape, _ = input_shape
        steps, channels = x_shape[1], x_shape[2]
        steps = None if steps is None else -(-steps // self.pool_size)
        return (x_shape[0], steps, channels * len(self.stats)), (x_shape[0], steps)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "stats": list(self.stats)}


def _standard_moment(centred, variance, count, stat: str):
    """Skewness (third standardised moment) or excess kurtosis of each channel, 0 for a
    channel that is constant over the clip. ``centred`` is zero on padded frames."""
    constant = variance <= CONSTANT_VARIANCE
    safe = ops.where(constant, 1.0, variance)
    squares = ops.square(centred)
    if stat == "skew":
        value = ops.sum(squares * centred, axis=1) / count / (safe * ops.sqrt(safe))
    else:
        value = ops.sum(ops.square(squares), axis=1) / count / ops.square(safe) - 3.0
    return ops.where(constant, 0.0, value)


def _slope(centred, count):
    """Least-squares slope of each channel against time scaled to [-1, 1] over the real
    frames (so it does not depend on the clip's length); 0 below two real frames."""
    steps = ops.cast(ops.arange(ops.shape(centred)[1]), centred.dtype)  # [T]
    span = ops.maximum(count - 1.0, 1.0)  # [B, 1]
    t = ops.expand_dims(2.0 * ops.expand_dims(steps, 0) / span - 1.0, -1)  # [B, T, 1]
    # centred is 0 on padded frames, so they add nothing to the numerator; the
    # denominator counts real frames only (frames are right-padded).
    real = ops.cast(
        ops.expand_dims(ops.expand_dims(steps, 0), -1) < ops.expand_dims(count, 1), t.dtype
    )
    denominator = ops.sum(ops.square(t) * real, axis=1)  # [B, 1]
    value = ops.sum(t * centred, axis=1) / ops.maximum(denominator, 1e-12)
    return ops.where(count > 1.0, value, 0.0)


def _mean_change(x, weights, count):
    """Mean absolute change between neighbouring real frames; 0 below two real frames.
    Frames are right-padded, so a pair is real when its second frame is."""
    change = ops.abs(x[:, 1:] - x[:, :-1]) * weights[:, 1:]
    return ops.sum(change, axis=1) / ops.maximum(count - 1.0, 1.0)


@keras.saving.register_keras_serializable(package="ser")
class HoistedLSTM(layers.LSTM):
    """Keras's ``LSTM`` with the input's share of every gate computed for all frames at once.

    Keras's own loop on CPU multiplies each step's input by the input kernel inside the
    loop (a [batch, D] x [D, 4 units] product per step, and its gradient per step). Here
    ``x @ kernel + bias`` runs once over the whole [batch, frames, D] sequence before the
    loop, and each step only adds ``h @ recurrent_kernel``: the same function of the
    same variables (outputs equal up to float rounding), fewer and larger matrix
    products, so training steps are faster (``bench/recurrent.py``). Masking, directions
    and ``return_sequences`` behave as Keras's; with dropout inside the layer, unrolling
    or a GPU (where Keras may run cuDNN) Keras's own loop runs. Saved models name this
    class; ``ser.numpy_runtime`` and the ONNX export read it as an ``LSTM``.
    """

    def inner_loop(self, sequences, initial_state, mask, training=False):
        cell = self.cell
        if cell.dropout or cell.recurrent_dropout or self.unroll or _has_gpu():
            return super().inner_loop(sequences, initial_state, mask, training=training)
        gate_inputs = ops.matmul(sequences, cell.kernel)
        if cell.use_bias:
            gate_inputs = ops.add(gate_inputs, cell.bias)

        def step(gates_in, states):
            h_tm1, c_tm1 = states
            gates = ops.add(gates_in, ops.matmul(h_tm1, cell.recurrent_kernel))
            z_i, z_f, z_c, z_o = ops.split(gates, 4, axis=1)  # Keras's gate order
            gate = cell.recurrent_activation
            c = gate(z_f) * c_tm1 + gate(z_i) * cell.activation(z_c)
            h = gate(z_o) * cell.activation(c)
            return h, [h, c]

        return backend_rnn(
            step,
            gate_inputs,
            list(initial_state),
            go_backwards=self.go_backwards,
            mask=mask,
            unroll=False,
            input_length=sequences.shape[1],
            zero_output_for_mask=self.zero_output_for_mask,
            return_all_outputs=self.return_sequences,
        )


@functools.cache
def _has_gpu() -> bool:
    """Whether TensorFlow sees a GPU (Keras's LSTM may then use its cuDNN kernel); asked
    once per process, not at every trace of every recurrent layer."""
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


@keras.saving.register_keras_serializable(package="ser")
class MaskedAttentionPooling(ExplicitMaskLayer):
    """Attention-weighted sum over real frames: ``[x [B, T, C], mask [B, T]] -> [B, C]``.

    Each frame gets a score ``v . tanh(W x_t + b)`` (``units`` hidden tanh units);
    a softmax over the real frames turns scores into weights that sum to 1, and
    padded frames get weight exactly 0, so padding never changes the output. A
    sequence with no real frame pools to zeros.
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        if units < 1:
            raise ValueError(f"units must be >= 1, got {units}")
        self.units = int(units)

    def build(self, input_shape):
        x_shape, _ = input_shape
        channels = x_shape[-1]
        self.hidden_kernel = self.add_weight(
            name="hidden_kernel", shape=(channels, self.units), initializer="glorot_uniform"
        )
        self.hidden_bias = self.add_weight(
            name="hidden_bias", shape=(self.units,), initializer="zeros"
        )
        # No score bias: softmax is unchanged by a shift shared by every frame.
        self.score_kernel = self.add_weight(
            name="score_kernel", shape=(self.units, 1), initializer="glorot_uniform"
        )

    def frame_weights(self, inputs):
        """``[x [B, T, C], mask [B, T]] -> [B, T]`` attention weights, 0 on padded frames."""
        x, mask = inputs
        hidden = ops.tanh(ops.matmul(x, self.hidden_kernel) + self.hidden_bias)
        scores = ops.squeeze(ops.matmul(hidden, self.score_kernel), axis=-1)  # [B, T]
        valid = ops.cast(mask, "float32") > 0
        scores = ops.where(valid, ops.cast(scores, "float32"), float("-inf"))
        # Softmax by hand: the peak over real frames only, and a row without any
        # real frame (peak -inf) gets weights 0 rather than NaN.
        peak = ops.max(scores, axis=1, keepdims=True)
        peak = ops.where(ops.isfinite(peak), peak, 0.0)
        weights = ops.where(valid, ops.exp(scores - peak), 0.0)
        total = ops.sum(weights, axis=1, keepdims=True)
        return ops.cast(weights / ops.maximum(total, 1e-30), x.dtype)

    def call(self, inputs):
        x, _ = inputs
        weights = self.frame_weights(inputs)
        return ops.sum(x * ops.expand_dims(weights, axis=-1), axis=1)

    def compute_output_shape(self, input_shape):
        x_shape, _ = input_shape
        return (x_shape[0], x_shape[-1])

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def conv_blocks(x, mask, filters: Sequence[int], kernel_size: int, pool_size: int, dropout: float):
    """``[x [B, T, D], mask [B, T]] -> [x [B, T', filters[-1]], mask [B, T']]``.

    ``T' = ceil(T / pool_size**len(filters))``, applying the ceiling at every block.

    Each block is Conv1D("same") + BatchNorm + ReLU + masked max-pool(``pool_size``)
    + Dropout. BatchNorm statistics and pooling see real frames only, and padded
    frames are reset to 0 after every block so the next convolution reads them as
    its own zero padding.
    """
    for i, width in enumerate(filters, start=1):
        # BatchNorm has its own shift, which makes a conv bias redundant.
        x = layers.Conv1D(width, kernel_size, padding="same", use_bias=False, name=f"conv_{i}")(x)
        x = layers.BatchNormalization(name=f"conv_{i}_bn")(x, mask=mask)
        x = layers.ReLU(name=f"conv_{i}_relu")(x)
        x, mask = MaskedMaxPooling1D(pool_size, name=f"conv_{i}_pool")([x, mask])
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"conv_{i}_dropout")(x)
    return x, mask


def dense_stack(x, units: Sequence[int], dropout: float, *, batch_norm: bool, name: str):
    """``[B, D] -> [B, units[-1]]``: Dense (+ BatchNorm) + ReLU + Dropout per entry of ``units``."""
    for i, width in enumerate(units, start=1):
        # BatchNorm has its own shift, which makes a Dense bias redundant.
        x = layers.Dense(width, use_bias=not batch_norm, name=f"{name}_{i}")(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"{name}_{i}_bn")(x)
        x = layers.ReLU(name=f"{name}_{i}_relu")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"{name}_{i}_dropout")(x)
    return x


def emotion_output(x, num_classes: int):
    """``[B, D] -> [B, num_classes]`` probabilities; float32 even under mixed precision."""
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="emotion")(x)
