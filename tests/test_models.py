"""Shared harness for every registered model, plus known answers for the custom layers."""

from __future__ import annotations

import typing

import keras
import numpy as np
import pytest

from ser.config import CNNConfig, CRNNConfig, DenseConfig, LSTMConfig, ModelConfig, TCNConfig
from ser.features.extractors import pool
from ser.models import MODELS, build_model
from ser.models.layers import (
    FrameMask,
    HoistedLSTM,
    MaskedAttentionPooling,
    MaskedGlobalPooling,
    MaskedMaxPooling1D,
)
from ser.registry import UnknownNameError

INPUT_DIM = 8
NUM_CLASSES = 4
SEQUENCE_MODELS = ("lstm", "cnn", "crnn", "tcn")

TINY = {
    "lstm": LSTMConfig(units=[8, 8], dense_units=[8]),
    "cnn": CNNConfig(filters=[8, 8], kernel_size=3, dense_units=[8]),
    "crnn": CRNNConfig(
        filters=[8, 8], kernel_size=3, rnn_units=4, attention_units=4, dense_units=[8]
    ),
    "tcn": TCNConfig(filters=8, dilations=[1, 2], dense_units=[8]),
    "dense": DenseConfig(units=[16, 8]),
}
PARAMS_TYPE = {
    LSTMConfig: "lstm",
    CNNConfig: "cnn",
    CRNNConfig: "crnn",
    TCNConfig: "tcn",
    DenseConfig: "dense",
}
# Variants the sequence harness must also hold for: a bidirectional LSTM, an even
# kernel with a pool size whose "same" windows would not start at frame 0, and the
# CRNN with an LSTM in place of its GRU.
VARIANTS = {
    "lstm": TINY["lstm"],
    "bilstm": LSTMConfig(units=[8, 8], bidirectional=True, dense_units=[8]),
    "bilstm_stats_fusion": LSTMConfig(
        units=[8],
        bidirectional=True,
        pooling="stats",
        frame_pool=3,
        functionals=["mean", "std", "max", "min", "skew", "kurtosis", "slope", "delta"],
        dense_units=[8],
    ),
    "lstm_attention": LSTMConfig(units=[8, 8], pooling="attention", attention_units=4),
    "bilstm_window_stats": LSTMConfig(
        units=[8],
        bidirectional=True,
        pooling="stats",
        frame_pool=4,
        frame_pool_stats=["mean", "std"],
        dense_units=[8],
    ),
    "cnn": TINY["cnn"],
    "cnn_pool3": CNNConfig(filters=[8, 8], kernel_size=4, pool_size=3, dense_units=[8]),
    "crnn": TINY["crnn"],
    "crnn_lstm_pool3": CRNNConfig(
        filters=[8],
        kernel_size=4,
        pool_size=3,
        rnn="lstm",
        rnn_units=4,
        attention_units=4,
        dense_units=[8],
    ),
    "tcn": TINY["tcn"],
    "tcn_even_kernel_pool3": TCNConfig(
        filters=8, kernel_size=4, dilations=[1, 3, 5], frame_pool=3, dense_units=[8]
    ),
}


def tiny(name: str, params=None) -> keras.Model:
    params = TINY[name] if params is None else params
    cfg = ModelConfig(type=name, **{name: params})
    return build_model(cfg, INPUT_DIM, NUM_CLASSES)


def variant(key: str) -> keras.Model:
    params = VARIANTS[key]
    return tiny(PARAMS_TYPE[type(params)], params)


def inputs_for(name: str, batch: int = 3, frames: int = 30, seed: int = 0) -> np.ndarray:
    """Random normalised features: ``[batch, frames, INPUT_DIM]`` or ``[batch, INPUT_DIM]``."""
    rng = np.random.default_rng(seed)
    shape = (batch, INPUT_DIM) if name == "dense" else (batch, frames, INPUT_DIM)
    return rng.standard_normal(shape).astype("float32")


def randomise_weights(model: keras.Model, seed: int = 0) -> None:
    """Replace the fresh-init weights, whose zero BatchNorm shifts and LSTM biases
    would leave padded frames at exactly 0 and so hide any leak of padding."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        shape = tuple(weight.shape)
        if "variance" in weight.path:
            value = rng.uniform(0.5, 2.0, shape)
        else:
            value = rng.normal(0.0, 0.5, shape)
        weight.assign(value.astype(weight.dtype))


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(x, training=False))


# -------------------------------------------------------------------- registry
def test_registry_names_equal_config_choices():
    choices = typing.get_args(ModelConfig.model_fields["type"].annotation)
    assert MODELS.names() == sorted(choices)


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownNameError, match="valid: cnn, crnn, dense, lstm, tcn"):
        MODELS.get("transformer")
    # A config that skipped validation still fails with the registry's message.
    with pytest.raises(UnknownNameError, match="'transformer'"):
        build_model(ModelConfig.model_construct(type="transformer"), INPUT_DIM, NUM_CLASSES)


@pytest.mark.parametrize("input_dim, num_classes", [(0, 4), (8, 1)])
def test_build_model_rejects_bad_sizes(input_dim, num_classes):
    with pytest.raises(ValueError):
        build_model(ModelConfig(), input_dim, num_classes)


# ------------------------------------------------------------- model harness
@pytest.mark.parametrize("name", MODELS.names())
def test_default_config_builds_and_outputs_probabilities(name):
    model = build_model(ModelConfig(type=name), INPUT_DIM, NUM_CLASSES)
    assert model.name == f"{name}_classifier"
    assert not model.compiled
    assert model.get_layer("emotion").dtype == "float32"
    probs = predict(model, inputs_for(name, batch=5, frames=25))
    assert probs.shape == (5, NUM_CLASSES)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("safe_mode", [True, False])
@pytest.mark.parametrize("key", [*VARIANTS, "dense"])
def test_keras_file_round_trip(key, safe_mode, tmp_path):
    model = tiny("dense") if key == "dense" else variant(key)
    randomise_weights(model)
    x = inputs_for(model.name.split("_")[0])
    if x.ndim == 3:
        x[0, 20:] = 0.0  # one padded row, so the reloaded masks are exercised too
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=safe_mode)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    np.testing.assert_array_equal(predict(loaded, x), predict(model, x))


@pytest.mark.parametrize("name", MODELS.names())
def test_trains_one_step(name):
    keras.utils.set_random_seed(0)
    model = tiny(name)
    x = inputs_for(name, batch=8)
    if x.ndim == 3:
        x[::2, 17:] = 0.0  # padded rows, as the pipeline delivers them
    y = np.arange(8) % NUM_CLASSES
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert np.isfinite(predict(model, x)).all()


@pytest.mark.parametrize("key", VARIANTS)
def test_padding_never_changes_a_prediction(key):
    model = variant(key)
    randomise_weights(model, seed=1)
    lengths = [20, 33, 27, 1]
    rng = np.random.default_rng(2)
    clips = [rng.standard_normal((n, INPUT_DIM)).astype("float32") for n in lengths]
    batch = np.zeros((len(clips), 40, INPUT_DIM), "float32")
    for row, clip in zip(batch, clips):
        row[: len(clip)] = clip
    alone = np.concatenate([predict(model, clip[None]) for clip in clips])
    np.testing.assert_allclose(predict(model, batch), alone, atol=1e-5)


def test_cnn_batch_norm_statistics_ignore_padding():
    clip = inputs_for("cnn", batch=1, frames=20)
    padded = np.concatenate([clip, np.zeros((1, 30, INPUT_DIM), "float32")], axis=1)
    moving = []
    for x in (clip, padded):
        keras.utils.set_random_seed(0)
        model = tiny("cnn")
        model(x, training=True)
        moving.append([keras.ops.convert_to_numpy(w) for w in model.non_trainable_weights])
    for a, b in zip(*moving):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_crnn_attention_gives_padded_frames_no_weight():
    model = tiny("crnn")
    randomise_weights(model, seed=3)
    x = inputs_for("crnn", batch=2, frames=24, seed=4)
    x[0, 9:] = 0.0  # 9 real frames: 5 after one pool of 2, 3 after two
    attention = model.get_layer("attention_pooling")
    pooled_inputs = keras.Model(model.input, attention.input)(x, training=False)
    weights = keras.ops.convert_to_numpy(attention.frame_weights(pooled_inputs))
    assert weights.shape == (2, 6)
    np.testing.assert_array_equal(weights[0, 3:], 0.0)
    assert (weights[0, :3] > 0).all() and (weights[1] > 0).all()
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)


# ------------------------------------------------------------- custom layers
def test_frame_mask_marks_non_zero_frames():
    x = np.zeros((1, 4, 3), "float32")
    x[0, 0, 1] = 2.0
    x[0, 2] = -1.0
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(FrameMask()(x)), [[1, 0, 1, 0]])


def test_masked_max_pooling_ignores_padding_and_keeps_windows_at_frame_zero():
    # 5 real frames of 7, pool 3: windows [0..2], [3..5], [6]; frame 5 and 6 are padding.
    x = np.array([[[-3.0], [-1.0], [-2.0], [-4.0], [-5.0], [9.0], [9.0]]], "float32")
    mask = np.array([[1, 1, 1, 1, 1, 0, 0]], "float32")
    pooled, pooled_mask = MaskedMaxPooling1D(3)([x, mask])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(pooled)[0, :, 0], [-1.0, -4.0, 0.0])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(pooled_mask), [[1, 1, 0]])


def test_masked_global_pooling_uses_real_frames_only():
    x = np.array([[[1.0], [3.0], [100.0]], [[5.0], [5.0], [5.0]]], "float32")
    mask = np.array([[1, 1, 0], [0, 0, 0]], "float32")  # second row: no real frame
    out = keras.ops.convert_to_numpy(MaskedGlobalPooling(("mean", "std", "max"))([x, mask]))
    np.testing.assert_allclose(out[0], [2.0, 1.0, 3.0], atol=1e-3)
    np.testing.assert_allclose(out[1], [0.0, 0.0, 0.0], atol=1e-3)


def test_masked_global_pooling_equals_the_utterance_functionals():
    """The in-model statistics are the ones ``ser.features.extractors.pool`` computes
    for the utterance functionals, over the real frames of each clip."""
    stats = ("mean", "std", "max", "min", "skew", "kurtosis", "slope", "delta")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 40, 5)).astype("float32")
    x[1, 25:] = 0.0  # the second clip has 25 real frames
    mask = (np.abs(x).sum(axis=-1) > 0).astype("float32")
    out = keras.ops.convert_to_numpy(MaskedGlobalPooling(stats)([x, mask]))
    np.testing.assert_allclose(out[0], pool(x[0], stats), atol=1e-4)
    np.testing.assert_allclose(out[1], pool(x[1, :25], stats), atol=1e-4)


def test_masked_global_pooling_of_one_frame_and_constant_channels_is_finite():
    x = np.array([[[2.0, 1.0], [0.0, 0.0]], [[3.0, 3.0], [3.0, 3.0]]], "float32")
    mask = np.array([[1, 0], [1, 1]], "float32")
    stats = ("skew", "kurtosis", "slope", "delta", "min")
    out = keras.ops.convert_to_numpy(MaskedGlobalPooling(stats)([x, mask]))
    np.testing.assert_allclose(out[0], [0, 0, 0, 0, 0, 0, 0, 0, 2, 1], atol=1e-6)
    np.testing.assert_allclose(out[1], [0, 0, 0, 0, 0, 0, 0, 0, 3, 3], atol=1e-6)


def test_masked_attention_pooling_weighs_real_frames_only():
    layer = MaskedAttentionPooling(2)
    x = np.array([[[1.0], [3.0], [100.0]], [[5.0], [5.0], [5.0]]], "float32")
    mask = np.array([[1, 1, 0], [0, 0, 0]], "float32")  # second row: no real frame
    layer([x, mask])
    layer.hidden_kernel.assign([[0.0, 0.0]])  # every frame scores the same: plain mean
    out = keras.ops.convert_to_numpy(layer([x, mask]))
    np.testing.assert_allclose(out, [[2.0], [0.0]], atol=1e-6)
    layer.hidden_kernel.assign([[1.0, 1.0]])
    layer.score_kernel.assign([[1.0], [1.0]])  # the larger real frame weighs more
    weights = keras.ops.convert_to_numpy(layer.frame_weights([x, mask]))
    assert weights[0, 1] > weights[0, 0] > 0
    np.testing.assert_array_equal(weights[0, 2], 0.0)
    np.testing.assert_array_equal(weights[1], 0.0)


@pytest.mark.parametrize(
    "layer",
    [
        FrameMask(),
        MaskedMaxPooling1D(3),
        MaskedGlobalPooling(("std", "max")),
        MaskedAttentionPooling(5),
        HoistedLSTM(3, return_sequences=True),
    ],
)
def test_custom_layer_config_round_trip(layer):
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()


def test_masked_attention_pooling_rejects_no_units():
    with pytest.raises(ValueError, match="units"):
        MaskedAttentionPooling(0)


@pytest.mark.parametrize("stats", [(), ("mean", "mean"), ("median",)])
def test_masked_global_pooling_rejects_bad_stats(stats):
    with pytest.raises(ValueError, match="stats"):
        MaskedGlobalPooling(stats)


def test_dense_input_dropout_is_training_only_and_round_trips(tmp_path):
    model = tiny("dense", DenseConfig(units=[16], input_dropout=0.5))
    assert model.get_layer("input_dropout").rate == 0.5
    x = inputs_for("dense", batch=4)
    np.testing.assert_array_equal(predict(model, x), predict(model, x))  # inference: no drop
    dropped = model.get_layer("input_dropout")(x, training=True).numpy()
    assert 0 < (dropped == 0).mean() < 1
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_array_equal(predict(loaded, x), predict(model, x))


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_hoisted_lstm_computes_keras_lstm_and_its_gradients(return_sequences, bidirectional):
    """The same outputs and weight gradients as Keras's LSTM with the same weights, on
    sequences padded at the end and with a masked frame inside a clip."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 7, 5)).astype("float32")
    mask = np.ones((3, 7), bool)
    mask[1, 4:] = False  # padding at the end
    mask[2, 2] = False  # a masked frame inside the clip
    layer = HoistedLSTM(4, return_sequences=return_sequences)
    if bidirectional:
        layer = keras.layers.Bidirectional(layer)
    layer(x, mask=mask)  # build
    twin = (
        keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=return_sequences))
        if bidirectional
        else keras.layers.LSTM(4, return_sequences=return_sequences)
    )
    twin(x, mask=mask)
    twin.set_weights(layer.get_weights())
    import tensorflow as tf

    results = []
    for candidate in (layer, twin):
        with tf.GradientTape() as tape:
            out = candidate(x, mask=mask)
            loss = tf.reduce_sum(out * out)
        grads = tape.gradient(loss, candidate.trainable_variables)
        results.append((out.numpy(), [g.numpy() for g in grads]))
    np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-6)
    for ours, keras_own in zip(results[0][1], results[1][1], strict=True):
        np.testing.assert_allclose(ours, keras_own, atol=1e-5)


def test_lstm_model_uses_the_hoisted_loop_and_numpy_runtime_reads_it(tmp_path):
    """The LSTM model type builds ``HoistedLSTM`` layers; the saved model loads in Keras
    and in the NumPy runtime (which ONNX export and serving use) with the same answer."""
    from ser.numpy_runtime import read_numpy_model

    params = LSTMConfig(units=[6], bidirectional=True, pooling="stats", dense_units=[8])
    model = tiny("lstm", params)
    recurrent = [layer for layer in model.layers if isinstance(layer, keras.layers.Bidirectional)]
    assert recurrent and all(isinstance(b.forward_layer, HoistedLSTM) for b in recurrent)
    x = inputs_for("lstm", batch=3)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(predict(loaded, x), predict(model, x), atol=1e-6)
    numpy_model = read_numpy_model(tmp_path / "m.keras")
    np.testing.assert_allclose(numpy_model(x), predict(model, x), atol=1e-5)


def test_window_statistics_need_a_window_and_distinct_names():
    with pytest.raises(ValueError, match="set frame_pool above 1"):
        LSTMConfig(frame_pool_stats=["mean", "std"])
    with pytest.raises(ValueError, match="lists a statistic twice"):
        LSTMConfig(frame_pool=4, frame_pool_stats=["mean", "mean"])
    assert LSTMConfig(frame_pool=4, frame_pool_stats=["mean", "std"]).frame_pool_stats == [
        "mean",
        "std",
    ]
