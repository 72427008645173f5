"""Convolutions over time, a bidirectional recurrent layer and attention pooling."""

from __future__ import annotations

import keras
from keras import layers

from ser.config import CRNNConfig
from ser.models.layers import (
    FrameMask,
    MaskedAttentionPooling,
    conv_blocks,
    dense_stack,
    emotion_output,
)

RNN_LAYERS = {"gru": layers.GRU, "lstm": layers.LSTM}


def build_crnn(params: CRNNConfig, input_dim: int, num_classes: int) -> keras.Model:
    """``[B, T, input_dim]`` zero-padded frames -> ``[B, num_classes]`` probabilities.

    The convolution blocks of the CNN (time shrinks by ``pool_size`` per block) feed
    a bidirectional GRU or LSTM of ``rnn_units`` per direction over the pooled
    frames; attention pooling then weighs its ``[B, T', 2 * rnn_units]`` outputs
    into one vector. The frame mask is pooled with the frames: the recurrent layer
    skips padded frames (its backward direction starts at each clip's last real
    frame) and attention gives them weight 0.
    """
    inputs = keras.Input(shape=(None, input_dim), name="features")
    mask = FrameMask(name="frame_mask")(inputs)
    x, mask = conv_blocks(
        inputs, mask, params.filters, params.kernel_size, params.pool_size, params.dropout
    )
    rnn = RNN_LAYERS[params.rnn](params.rnn_units, return_sequences=True, name=params.rnn)
    x = layers.Bidirectional(rnn, name=f"bi{params.rnn}")(x, mask=mask)
    x = MaskedAttentionPooling(params.attention_units, name="attention_pooling")([x, mask])
    x = dense_stack(x, params.dense_units, params.dropout, batch_norm=False, name="head")
    return keras.Model(inputs, emotion_output(x, num_classes), name="crnn_classifier")
