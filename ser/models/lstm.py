"""Stacked (optionally bidirectional) LSTM over frame sequences."""

from __future__ import annotations

import keras
from keras import layers

from ser.config import LSTMConfig
from ser.models.layers import dense_stack, emotion_output


def build_lstm(params: LSTMConfig, input_dim: int, num_classes: int) -> keras.Model:
    """``[B, T, input_dim]`` zero-padded frames -> ``[B, num_classes]`` probabilities.

    ``Masking`` marks all-zero frames as padding; the LSTMs skip them and the last
    one returns its state at each sequence's final real frame.
    """
    inputs = keras.Input(shape=(None, input_dim), name="features")
    x = layers.Masking(mask_value=0.0, name="padding_mask")(inputs)
    for i, units in enumerate(params.units, start=1):
        last = i == len(params.units)
        # Dropout between layers rather than LSTM(dropout=...) keeps the fused
        # cuDNN kernel usable on GPU.
        rnn = layers.LSTM(units, return_sequences=not last, name=f"lstm_{i}")
        if params.bidirectional:
            rnn = layers.Bidirectional(rnn, name=f"bilstm_{i}")
        x = rnn(x)
        if params.dropout > 0:
            x = layers.Dropout(params.dropout, name=f"lstm_{i}_dropout")(x)
    x = dense_stack(x, params.dense_units, params.dropout, batch_norm=False, name="head")
    return keras.Model(inputs, emotion_output(x, num_classes), name="lstm_classifier")
