"""1-D convolutions over time with masked pooling."""

from __future__ import annotations

import keras

from ser.config import CNNConfig
from ser.models.layers import (
    FrameMask,
    MaskedGlobalPooling,
    conv_blocks,
    dense_stack,
    emotion_output,
)

# Mean summarises the whole utterance; max keeps short emotional peaks that a
# mean over seconds of neutral-sounding frames would wash out.
POOLED_STATS = ("mean", "max")


def build_cnn(params: CNNConfig, input_dim: int, num_classes: int) -> keras.Model:
    """``[B, T, input_dim]`` zero-padded frames -> ``[B, num_classes]`` probabilities.

    Each block is Conv1D("same") + BatchNorm + ReLU + max-pool(``pool_size``) +
    Dropout, so time shrinks by ``pool_size`` per block. A frame mask is pooled
    alongside: BatchNorm statistics, pooling and the final statistics pooling see
    real frames only, and padded frames are reset to 0 after every block so the
    next convolution reads them as its own zero padding.
    """
    inputs = keras.Input(shape=(None, input_dim), name="features")
    mask = FrameMask(name="frame_mask")(inputs)
    x, mask = conv_blocks(
        inputs, mask, params.filters, params.kernel_size, params.pool_size, params.dropout
    )
    x = MaskedGlobalPooling(POOLED_STATS, name="masked_pooling")([x, mask])
    x = dense_stack(x, params.dense_units, params.dropout, batch_norm=False, name="head")
    return keras.Model(inputs, emotion_output(x, num_classes), name="cnn_classifier")
