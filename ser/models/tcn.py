"""A dilated temporal convolution network over frame sequences (TIM-Net-like)."""

from __future__ import annotations

import keras
from keras import layers

from ser.config import TCNConfig
from ser.models.layers import (
    FrameMask,
    MaskedGlobalPooling,
    MaskedMaxPooling1D,
    dense_stack,
    emotion_output,
)

# Each block's output is summarised over the clip by its mean and standard deviation.
BLOCK_STATS = ("mean", "std")


def build_tcn(params: TCNConfig, input_dim: int, num_classes: int) -> keras.Model:
    """``[B, T, input_dim]`` zero-padded frames -> ``[B, num_classes]`` probabilities.

    The frames are max-pooled over ``frame_pool`` (with their mask), projected to
    ``filters`` channels, then pass through one residual block per entry of
    ``dilations``: x + BN(conv_d(ReLU(BN(conv_d(x))))), then ReLU, where conv_d is a
    "same" convolution of ``kernel_size`` taps ``d`` steps apart. With dilations
    1, 2, 4, ... the blocks see ever longer stretches of the clip; the mean and
    standard deviation of every block's output over the real steps are read together
    by the head, so short and long time scales both reach the decision.

    Padded steps are reset to 0 after every convolution's activation, so each
    convolution reads them as its own zero padding: a clip gets the same
    probabilities however much padding its batch adds.
    """
    inputs = keras.Input(shape=(None, input_dim), name="features")
    mask = FrameMask(name="frame_mask")(inputs)
    x, steps = MaskedMaxPooling1D(params.frame_pool, name="frame_pool")([inputs, mask])
    x = layers.Conv1D(params.filters, 1, name="tcn_input")(x)
    x = _zero_padding(x, steps, "tcn_input_reset")
    levels = []
    for i, dilation in enumerate(params.dilations, start=1):
        x = _residual_block(x, steps, params, dilation, name=f"tcn_{i}")
        levels.append(MaskedGlobalPooling(BLOCK_STATS, name=f"tcn_{i}_stats")([x, steps]))
    x = levels[0] if len(levels) == 1 else layers.Concatenate(name="tcn_levels")(levels)
    x = dense_stack(x, params.dense_units, params.dropout, batch_norm=False, name="head")
    return keras.Model(inputs, emotion_output(x, num_classes), name="tcn_classifier")


def _residual_block(x, steps, params: TCNConfig, dilation: int, *, name: str):
    """One residual block of two dilated convolutions; padded steps come out as 0."""
    h = _dilated_conv(x, steps, params, dilation, f"{name}_conv_1")
    h = layers.ReLU(name=f"{name}_conv_1_relu")(h)
    h = _zero_padding(h, steps, f"{name}_conv_1_reset")
    if params.dropout > 0:
        h = layers.Dropout(params.dropout, name=f"{name}_dropout")(h)
    h = _dilated_conv(h, steps, params, dilation, f"{name}_conv_2")
    x = layers.Add(name=f"{name}_residual")([x, h])
    x = layers.ReLU(name=f"{name}_relu")(x)
    return _zero_padding(x, steps, f"{name}_reset")


def _dilated_conv(x, steps, params: TCNConfig, dilation: int, name: str):
    """A "same" convolution of ``kernel_size`` taps ``dilation`` steps apart, then
    BatchNorm over the real steps (its own shift makes a conv bias redundant)."""
    x = layers.Conv1D(
        params.filters,
        params.kernel_size,
        dilation_rate=dilation,
        padding="same",
        use_bias=False,
        name=name,
    )(x)
    return layers.BatchNormalization(name=f"{name}_bn")(x, mask=steps)


def _zero_padding(x, steps, name: str):
    """``x`` with its padded steps set to 0 (a max-pool over 1 step, which does just that)."""
    x, _ = MaskedMaxPooling1D(1, name=name)([x, steps])
    return x
