"""The NumPy runtime: dense models and ensembles run without TensorFlow, equal to Keras."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ser import runs
from ser.inference import Predictor
from ser.numpy_runtime import load_numpy_model
from tests.support import ROOT
from tests.support.tiny_run import encode, tiny_run, tone


@pytest.fixture(scope="module", params=[1, 2], ids=["dense", "ensemble2"])
def dense_run(request, tmp_path_factory):
    return tiny_run(tmp_path_factory, "dense", ensemble=request.param)


def test_dense_models_and_ensembles_equal_keras(dense_run) -> None:
    predictor = Predictor.load(dense_run, runtime="numpy")
    assert predictor.runtime == "numpy"
    x = np.random.default_rng(0).standard_normal((7, predictor.input_dim)).astype(np.float32)
    expected = np.asarray(predictor.model(x, training=False))  # Keras, loaded on demand
    np.testing.assert_allclose(predictor.predict_batch(x), expected, rtol=0, atol=1e-5)
    assert predictor.parameters == predictor.model.count_params()


def test_a_clip_gets_the_same_answer_from_either_runtime(dense_run) -> None:
    # A steady tone is no speech to the speech check; only the runtimes are compared here.
    fast = Predictor.load(dense_run, speech_check=False)
    keras = Predictor.load(dense_run, runtime="keras", speech_check=False)
    assert (fast.runtime, keras.runtime) == ("onnx", "keras")  # ONNX Runtime by default
    wave = tone(2.5, seed=3)
    a, b = fast.predict_clip(wave), keras.predict_clip(wave)
    np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=0, atol=1e-5)
    assert len(a.windows) == len(b.windows) > 1


def test_lstm_runs_on_numpy_when_asked_and_equals_keras(run_dir) -> None:
    """The tiny LSTM: ONNX Runtime by default, NumPy when asked, with Keras's
    probabilities, padding frames masked."""
    assert Predictor.load(run_dir).runtime == "onnx"
    fast = Predictor.load(run_dir, runtime="numpy")
    assert fast.runtime == "numpy" and fast.light_model.sequence
    x = np.random.default_rng(1).standard_normal((3, fast.max_frames, fast.input_dim))
    x = x.astype(np.float32)
    x[1, fast.max_frames // 2 :] = 0.0  # padding at the end: masked
    x[2, 3] = 0.0  # an all-zero frame inside: masked too, as Keras's Masking does
    expected = np.asarray(fast.model(x, training=False))
    np.testing.assert_allclose(fast.predict_batch(x), expected, rtol=0, atol=1e-5)
    assert fast.parameters == fast.model.count_params()
    with pytest.raises(ValueError, match="runtime must be one of"):
        Predictor.load(run_dir, runtime="tflite")


def test_models_numpy_cannot_run_fall_back_to_keras(tmp_path_factory) -> None:
    cnn = tiny_run(tmp_path_factory, "cnn")
    assert load_numpy_model(cnn / runs.MODEL) is None
    assert Predictor.load(cnn, runtime="numpy").runtime == "keras"
    assert Predictor.load(cnn).runtime == "keras"


def test_unknown_layers_fall_back_to_keras(tmp_path) -> None:
    import keras

    inputs = keras.Input((10,))
    x = keras.layers.Dense(4, activation="elu")(inputs)  # no NumPy kernel for elu
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.save(tmp_path / "model.keras")
    assert load_numpy_model(tmp_path / "model.keras") is None


@pytest.mark.parametrize("model", ["dense", "lstm"])
def test_predict_never_imports_tensorflow(model, tmp_path_factory, tmp_path) -> None:
    """``ser predict`` on a dense or LSTM run: ONNX Runtime runs the model, so TensorFlow's
    ~6 s import is never paid (the command imports it only if it comes to need it)."""
    run = tiny_run(tmp_path_factory, model)
    clip = tmp_path / "clip.wav"
    clip.write_bytes(encode(tone(1.5)))
    script = (
        "import sys, json\n"
        "from ser.cli import main\n"
        f"code = main(['predict', '--run', {str(run)!r}, {str(clip)!r}, '--json'])\n"
        "print(json.dumps({'code': code, 'tensorflow': 'tensorflow' in sys.modules}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == {"code": 0, "tensorflow": False}
    assert '"emotion"' in out.stdout


@pytest.mark.parametrize("model", ["dense", "lstm"])
def test_onnx_runtime_equals_keras(model, tmp_path_factory) -> None:
    """``runtime="onnx"``: the same graph on ONNX Runtime, no TensorFlow needed."""
    predictor = Predictor.load(tiny_run(tmp_path_factory, model), runtime="onnx")
    assert predictor.runtime == "onnx"
    frames = (predictor.max_frames,) if predictor.sequence else ()
    x = np.random.default_rng(3).standard_normal((2, *frames, predictor.input_dim))
    x = x.astype(np.float32)
    expected = np.asarray(predictor.model(x, training=False))
    np.testing.assert_allclose(predictor.predict_batch(x), expected, rtol=0, atol=1e-5)
    assert predictor.parameters == predictor.model.count_params()
