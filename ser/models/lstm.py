"""Stacked (optionally bidirectional) LSTM over frame sequences, with an optional
branch of utterance statistics beside it."""

from __future__ import annotations

import keras
from keras import layers

from ser.config import LSTMConfig
from ser.models.layers import (
    FrameMask,
    HoistedLSTM,
    MaskedAttentionPooling,
    MaskedGlobalPooling,
    MaskedMaxPooling1D,
    MaskedWindowPooling1D,
    dense_stack,
    emotion_output,
)

# Statistics pooling of the recurrent outputs (x-vector style).
RECURRENT_STATS = ("mean", "std")


def build_lstm(params: LSTMConfig, input_dim: int, num_classes: int) -> keras.Model:
    """``[B, T, input_dim]`` zero-padded frames -> ``[B, num_classes]`` probabilities.

    All-zero frames are padding. ``frame_pool`` > 1 first max-pools the frames (and
    their mask) over that many frames, so the LSTMs take fewer steps; with
    ``frame_pool_stats`` other than ``[max]`` each window of frames becomes those
    statistics of its real frames instead (``MaskedWindowPooling1D``). The LSTMs skip
    padded frames; ``pooling`` turns their outputs into one vector: ``last`` the state
    at each sequence's final real frame, ``stats`` the mean and standard deviation of
    the outputs over the real frames, ``attention`` an attention-weighted sum of them.
    With ``functionals`` a second branch computes those statistics of the input frames
    over the clip's real frames (``MaskedGlobalPooling``), and the head reads both
    branches side by side.
    """
    inputs = keras.Input(shape=(None, input_dim), name="features")
    plain = params.frame_pool == 1 and params.frame_pool_stats == ["max"]
    if params.pooling == "last" and plain and not params.functionals:
        return _last_state_lstm(params, inputs, num_classes)
    mask = FrameMask(name="frame_mask")(inputs)
    x, steps = inputs, mask
    if params.frame_pool_stats != ["max"]:
        pool = MaskedWindowPooling1D(params.frame_pool, params.frame_pool_stats, name="frame_pool")
        x, steps = pool([x, steps])
    elif params.frame_pool > 1:
        x, steps = MaskedMaxPooling1D(params.frame_pool, name="frame_pool")([x, steps])
    x = _lstm_stack(x, params, last_state=params.pooling == "last", mask=steps)
    if params.pooling == "stats":
        x = MaskedGlobalPooling(RECURRENT_STATS, name="recurrent_stats")([x, steps])
    elif params.pooling == "attention":
        x = MaskedAttentionPooling(params.attention_units, name="attention_pooling")([x, steps])
    if params.functionals:
        utterance = MaskedGlobalPooling(params.functionals, name="functionals")([inputs, mask])
        utterance = layers.BatchNormalization(name="functionals_bn")(utterance)
        if params.dropout > 0:
            utterance = layers.Dropout(params.dropout, name="functionals_dropout")(utterance)
        x = layers.Concatenate(name="branches")([x, utterance])
    x = dense_stack(x, params.dense_units, params.dropout, batch_norm=False, name="head")
    return keras.Model(inputs, emotion_output(x, num_classes), name="lstm_classifier")


def _last_state_lstm(params: LSTMConfig, inputs, num_classes: int) -> keras.Model:
    """The plain stacked LSTM: ``Masking`` marks padding, the last LSTM returns its
    state at each sequence's final real frame (the layout of runs saved before the
    other options existed, kept so that they load and convert as before)."""
    x = layers.Masking(mask_value=0.0, name="padding_mask")(inputs)
    x = _lstm_stack(x, params, last_state=True)
    x = dense_stack(x, params.dense_units, params.dropout, batch_norm=False, name="head")
    return keras.Model(inputs, emotion_output(x, num_classes), name="lstm_classifier")


def _lstm_stack(x, params: LSTMConfig, *, last_state: bool, mask=None):
    """``params.units`` LSTMs (bidirectional if asked), each followed by dropout; the last
    returns its state at the final real frame when ``last_state``, else every step.
    ``mask`` ([B, T], 1 = real frame) is passed explicitly, or None for a Keras mask
    already attached to ``x`` (``Masking``)."""
    for i, units in enumerate(params.units, start=1):
        last = last_state and i == len(params.units)
        # Dropout between layers rather than LSTM(dropout=...) keeps the fused
        # cuDNN kernel usable on GPU.
        rnn = HoistedLSTM(units, return_sequences=not last, name=f"lstm_{i}")
        if params.bidirectional:
            rnn = layers.Bidirectional(rnn, name=f"bilstm_{i}")
        x = rnn(x) if mask is None else rnn(x, mask=mask)
        if params.dropout > 0:
            x = layers.Dropout(params.dropout, name=f"lstm_{i}_dropout")(x)
    return x
