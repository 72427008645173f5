"""Multilayer perceptron over pooled per-clip feature statistics."""

from __future__ import annotations

import keras

from ser.config import DenseConfig
from ser.models.layers import dense_stack, emotion_output


def build_dense(params: DenseConfig, input_dim: int, num_classes: int) -> keras.Model:
    """``[B, input_dim]`` pooled statistics -> ``[B, num_classes]`` probabilities.

    Optional dropout on the inputs, then blocks of Dense + BatchNorm + ReLU + Dropout.
    """
    inputs = keras.Input(shape=(input_dim,), name="features")
    x = inputs
    if params.input_dropout > 0:  # drops whole features: no single functional is relied on
        x = keras.layers.Dropout(params.input_dropout, name="input_dropout")(x)
    x = dense_stack(x, params.units, params.dropout, batch_norm=True, name="dense")
    return keras.Model(inputs, emotion_output(x, num_classes), name="dense_classifier")
