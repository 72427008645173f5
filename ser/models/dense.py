"""Multilayer perceptron over pooled per-clip feature statistics."""

from __future__ import annotations

import keras

from ser.config import DenseConfig
from ser.models import MODELS
from ser.models.layers import dense_stack, emotion_output


@MODELS.register("dense")
def build_dense(params: DenseConfig, input_dim: int, num_classes: int) -> keras.Model:
    """``[B, input_dim]`` pooled statistics -> ``[B, num_classes]`` probabilities.

    Each block is Dense + BatchNorm + ReLU + Dropout.
    """
    inputs = keras.Input(shape=(input_dim,), name="features")
    x = dense_stack(inputs, params.units, params.dropout, batch_norm=True, name="dense")
    return keras.Model(inputs, emotion_output(x, num_classes), name="dense_classifier")
