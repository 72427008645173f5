"""The light runtimes: NumPy (``ser.numpy_runtime``) and ONNX Runtime (``ser.onnx_export``)
run every model type without TensorFlow and give Keras's probabilities."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ser import runs
from ser.audio import load_audio
from ser.cli import build_parser, main
from ser.inference import Predictor
from ser.numpy_runtime import UnsupportedModel, load_numpy_model, read_numpy_model
from ser.runs import RunDirError
from tests.support import ROOT
from tests.support.fakes import EMOTION_HZ
from tests.support.tiny_run import encode, tiny_run, tone, with_unconvertible_layer

# Largest difference from Keras's probabilities the ONNX path may have (as ``ser export``).
PARITY = 1e-4
# (model type, ensemble members): every model type, and ensembles of a pooled and a
# convolutional model.
RUNS = [("lstm", 1), ("cnn", 1), ("crnn", 1), ("tcn", 1), ("dense", 1), ("dense", 2), ("cnn", 2)]


@pytest.fixture(scope="module", params=RUNS, ids=lambda r: r[0] + ("" if r[1] == 1 else "-x2"))
def any_run(request, tmp_path_factory) -> Path:
    model, members = request.param
    return tiny_run(tmp_path_factory, model, ensemble=members)


@pytest.fixture(scope="module", params=[1, 2], ids=["dense", "ensemble2"])
def dense_run(request, tmp_path_factory):
    return tiny_run(tmp_path_factory, "dense", ensemble=request.param)


def generated_clips() -> list[np.ndarray]:
    """Clips of several lengths: 0.4 s (padded in a batch with the others), 1 s (one
    window) and 2.5 s (sliding windows), at the tones the tiny runs learnt."""
    return [
        tone(0.4, EMOTION_HZ["happy"], seed=1),
        tone(1.0, EMOTION_HZ["sad"], seed=2),
        tone(2.5, EMOTION_HZ["angry"], seed=3),
    ]


def corpus_clips(count: int = 4) -> list[np.ndarray]:
    """A few EMO-DB clips of the real corpora under ``SER_DATA_ROOT`` (skips without), and
    the first half second of the first (shorter than a window: padded in a batch)."""
    root = os.environ.get("SER_DATA_ROOT")
    if not root:
        pytest.skip("SER_DATA_ROOT is not set: no real corpus clips to compare on")
    paths = sorted((Path(root) / "emodb" / "wav").glob("*.*"))
    if not paths:
        pytest.skip(f"no EMO-DB clips under {root}/emodb/wav")
    step = max(1, len(paths) // count)
    waves = [load_audio(p, 16000) for p in paths[::step][:count]]
    return [*waves, waves[0][:8000]]


def keras_and_light_differ_by(run: Path, runtime: str, waves: list[np.ndarray]) -> float:
    """Largest difference between Keras's and ``runtime``'s probabilities on one batch of
    every window of ``waves`` (shorter windows zero-padded at the end)."""
    light = Predictor.load(run, runtime=runtime, speech_check=False)
    assert light.runtime == runtime
    inputs = [x for wave in waves for x in light.prepare_clip(wave).inputs]
    batch = light.pad_batch(inputs)
    if light.sequence:
        assert min(x.shape[0] for x in inputs) < batch.shape[1]  # some padding is masked
    expected = np.asarray(light.model(batch, training=False))  # Keras, loaded on demand
    assert light.parameters == light.model.count_params()
    return float(np.max(np.abs(light.predict_batch(batch) - expected)))


@pytest.mark.parametrize("runtime", ["onnx", "numpy"])
def test_every_model_type_equals_keras_on_generated_clips(any_run, runtime) -> None:
    assert keras_and_light_differ_by(any_run, runtime, generated_clips()) <= PARITY


def test_a_trained_lstm_with_the_pooling_options_runs_on_onnx_and_equals_keras(
    tmp_path_factory,
) -> None:
    """Statistics pooling, frame pooling and the batch-normalised functionals branch
    (``Concatenate``): ONNX Runtime by default, no fall-back to Keras, and both light
    runtimes give Keras's probabilities on padded clips."""
    run = tiny_run(
        tmp_path_factory,
        "lstm",
        variant="stats-functionals",
        **{
            "model.lstm.bidirectional": "true",
            "model.lstm.pooling": "stats",
            "model.lstm.frame_pool": "3",
            "model.lstm.functionals": "[mean,std,max,min,skew,kurtosis,slope,delta]",
        },
    )
    assert Predictor.load(run).runtime == "onnx"
    for runtime in ("onnx", "numpy"):
        assert keras_and_light_differ_by(run, runtime, generated_clips()) <= PARITY


def test_an_ensemble_across_model_types_averages_its_members_and_serves_on_onnx(
    tmp_path_factory,
) -> None:
    """``model.member_types: [lstm, tcn]``: member 0 an LSTM, member 1 a TCN, each saved
    in its own folder with its type; the run's model is their probabilities averaged,
    served on ONNX Runtime by default, and both light runtimes give Keras's probabilities."""
    import keras

    run = tiny_run(
        tmp_path_factory,
        "lstm",
        ensemble=2,
        variant="with-tcn",
        **{"model.member_types": "[lstm,tcn]"},
    )
    summary = json.loads((run / runs.SUMMARY).read_text())
    assert summary["model"] == "lstm+tcn"
    assert [m["type"] for m in summary["members"]] == ["lstm", "tcn"]
    onnx = Predictor.load(run)
    assert onnx.runtime == "onnx"
    for runtime in ("onnx", "numpy"):
        assert keras_and_light_differ_by(run, runtime, generated_clips()) <= PARITY
    inputs = [x for wave in generated_clips() for x in onnx.prepare_clip(wave).inputs]
    batch = onnx.pad_batch(inputs)
    members = [keras.models.load_model(runs.member_dir(run, k, 2) / runs.MODEL) for k in (0, 1)]
    assert {m.name.split("_")[0] for m in members} == {"lstm", "tcn"}
    expected = np.mean([np.asarray(m(batch, training=False)) for m in members], axis=0)
    assert np.max(np.abs(onnx.predict_batch(batch) - expected)) <= PARITY


def test_every_model_type_equals_keras_on_real_clips(any_run) -> None:
    assert keras_and_light_differ_by(any_run, "onnx", corpus_clips()) <= PARITY


def test_onnx_runtime_is_the_default_for_every_model_type(any_run) -> None:
    assert Predictor.load(any_run).runtime == "onnx"


def test_all_zero_frames_inside_a_clip_are_masked_as_keras_does(tmp_path_factory) -> None:
    """Keras masks every all-zero frame, not only trailing padding: the LSTM keeps its
    state over it and the CNN's and CRNN's frame masks drop it. ONNX does the same (the
    real frames are compacted before its LSTM/GRU node): inserting zero frames inside a
    clip changes an LSTM's answer not at all, and every model keeps Keras's answer."""
    rng = np.random.default_rng(5)
    for model in ("lstm", "cnn", "crnn", "tcn"):
        onnx = Predictor.load(tiny_run(tmp_path_factory, model), runtime="onnx")
        frames = onnx.max_frames
        x = rng.standard_normal((3, frames, onnx.input_dim)).astype(np.float32)
        x[0, 10:14] = 0.0  # a gap inside the clip
        x[1, 3] = 0.0
        x[1, frames // 2 :] = 0.0  # and padding at the end
        x[2, ::2] = 0.0  # every other frame
        expected = np.asarray(onnx.model(x, training=False))
        np.testing.assert_allclose(onnx.predict_batch(x), expected, rtol=0, atol=1e-5)
        if model == "lstm":
            gapless = np.concatenate([x[:1, :10], x[:1, 14:]], axis=1)
            np.testing.assert_allclose(onnx.predict_batch(gapless), expected[:1], atol=1e-6)


def test_a_sequence_without_any_real_frame_is_predicted_as_keras_does(any_run) -> None:
    onnx = Predictor.load(any_run, runtime="onnx")
    frames = (onnx.max_frames,) if onnx.sequence else ()
    x = np.zeros((2, *frames, onnx.input_dim), np.float32)
    expected = np.asarray(onnx.model(x, training=False))
    np.testing.assert_allclose(onnx.predict_batch(x), expected, rtol=0, atol=1e-5)


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


@pytest.fixture(scope="module")
def unconvertible_run(tmp_path_factory) -> Path:
    dense = tiny_run(tmp_path_factory, "dense")
    return with_unconvertible_layer(dense, tmp_path_factory.mktemp("elu") / "run")


def test_a_layer_the_light_runtimes_lack_is_named(unconvertible_run) -> None:
    """auto falls back to Keras; an explicit onnx or numpy stops with the layer's name."""
    model = unconvertible_run / runs.MODEL
    assert load_numpy_model(model) is None
    with pytest.raises(UnsupportedModel, match="'elu_layer' \\(Dense\\).*elu"):
        read_numpy_model(model)
    assert Predictor.load(unconvertible_run).runtime == "keras"
    for runtime in ("onnx", "numpy"):
        with pytest.raises(RunDirError, match=f"--runtime {runtime}: .*'elu_layer'"):
            Predictor.load(unconvertible_run, runtime=runtime)


def test_cli_onnx_on_an_unconvertible_model_names_the_layer(unconvertible_run, tmp_path, capsys):
    clip = tmp_path / "clip.wav"
    clip.write_bytes(encode(tone(1.0)))
    assert main(["predict", "--run", str(unconvertible_run), str(clip), "--onnx"]) == 2
    err = capsys.readouterr().err
    assert "error: --runtime onnx:" in err and "'elu_layer'" in err


@pytest.mark.parametrize(
    "argv",
    [["predict", "--run", "RUN", "clip.wav"], ["serve", "RUN"], ["record", "--run", "RUN"]],
    ids=["predict", "serve", "record"],
)
def test_onnx_flag_is_runtime_onnx(argv) -> None:
    parser = build_parser()
    assert parser.parse_args([*argv, "--onnx"]).runtime == "onnx"
    assert parser.parse_args(argv).runtime == "auto"
    with pytest.raises(SystemExit):  # one or the other, not both
        parser.parse_args([*argv, "--onnx", "--runtime", "keras"])


@pytest.mark.parametrize(
    ("model", "flags"),
    [("dense", []), ("lstm", []), ("cnn", ["--onnx"]), ("crnn", ["--onnx"]), ("tcn", [])],
)
def test_predict_never_imports_tensorflow(model, flags, tmp_path_factory, tmp_path) -> None:
    """``ser predict`` on any model type: ONNX Runtime runs the model, so TensorFlow's
    ~6 s import is never paid (the command imports it only if it comes to need it)."""
    run = tiny_run(tmp_path_factory, model)
    clip = tmp_path / "clip.wav"
    clip.write_bytes(encode(tone(1.5)))
    argv = ["predict", "--run", str(run), str(clip), "--json", *flags]
    script = (
        "import sys, json\n"
        "from ser.cli import main\n"
        f"code = main({argv!r})\n"
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


def _with_moving_statistics(model, rng: np.random.Generator):
    """``model`` with random BatchNormalization statistics, so that folding them matters."""
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.set_weights(
                [
                    rng.uniform(0.5, 2.0, w.shape) if i in (0, 3) else rng.normal(size=w.shape)
                    for i, w in enumerate(layer.get_weights())
                ]
            )
    return model


def _custom_sequence_model(input_dim: int):
    """Layer options no builder uses today: all three pooled statistics, a causal
    convolution with a bias, a GRU without ``reset_after`` and a stacked LSTM."""
    import keras

    from ser.models.layers import FrameMask, MaskedGlobalPooling

    inputs = keras.Input((None, input_dim))
    mask = FrameMask()(inputs)
    conv = keras.layers.Conv1D(6, 3, padding="causal", activation="relu")(inputs)
    pooled = MaskedGlobalPooling(("mean", "std", "max"))([conv, mask])
    masked = keras.layers.Masking()(inputs)
    gru = keras.layers.GRU(5, reset_after=False, return_sequences=True)(masked)
    lstm = keras.layers.LSTM(4)(gru)
    x = keras.layers.Average()([keras.layers.Dense(4)(pooled), keras.layers.Dense(4)(lstm)])
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


@pytest.mark.parametrize(
    "options",
    [
        ["model.type=lstm", "model.lstm.units=[6,5]", "model.lstm.bidirectional=true"],
        ["model.type=crnn", "model.crnn.filters=[8,8]", "model.crnn.rnn=lstm"],
        [
            "model.type=cnn",
            "model.cnn.filters=[8,8,6]",
            "model.cnn.kernel_size=4",
            "model.cnn.pool_size=3",
        ],
        [
            "model.type=lstm",
            "model.lstm.units=[6]",
            "model.lstm.bidirectional=true",
            "model.lstm.pooling=stats",
            "model.lstm.frame_pool=3",
            "model.lstm.functionals=[mean,std,max,min,skew,kurtosis,slope,delta]",
        ],
        ["model.type=lstm", "model.lstm.units=[6,5]", "model.lstm.pooling=attention"],
        [
            "model.type=lstm",
            "model.lstm.units=[6]",
            "model.lstm.bidirectional=true",
            "model.lstm.pooling=stats",
            "model.lstm.frame_pool=4",
            "model.lstm.frame_pool_stats=[mean,std,max]",
        ],
        [
            "model.type=tcn",
            "model.tcn.filters=6",
            "model.tcn.kernel_size=4",
            "model.tcn.dilations=[1,3,2]",
            "model.tcn.frame_pool=2",
        ],
        "custom",
    ],
    ids=[
        "bilstm",
        "crnn-lstm",
        "cnn-3-blocks",
        "bilstm-stats-pool3-functionals",
        "lstm-attention",
        "bilstm-window-stats4",
        "tcn-even-kernel-dilations",
        "custom-layers",
    ],
)
def test_model_options_equal_keras_on_both_runtimes(options, tmp_path) -> None:
    """Untrained models of the options the tiny runs do not train, padded and with
    all-zero frames inside: NumPy and ONNX Runtime give Keras's probabilities."""
    import keras

    from ser.config import load_config
    from ser.models import build_model
    from ser.onnx_export import OnnxModel

    rng = np.random.default_rng(7)
    if options == "custom":
        model = _custom_sequence_model(13)
    else:
        cfg = load_config(ROOT / "configs" / "base.yaml", options, env={})
        model = _with_moving_statistics(build_model(cfg.model, 13, 4), rng)
    model.save(tmp_path / "model.keras")
    keras_model = keras.models.load_model(tmp_path / "model.keras", compile=False)
    numpy_model = read_numpy_model(tmp_path / "model.keras")
    onnx_model = OnnxModel(numpy_model, ["a", "b", "c", "d"][: model.output_shape[-1]])
    for frames in (37, 5, 1):
        x = rng.standard_normal((3, frames, 13)).astype(np.float32)
        x[1, frames // 2 + 1 :] = 0.0
        x[2, frames // 3] = 0.0
        expected = np.asarray(keras_model(x, training=False))
        np.testing.assert_allclose(numpy_model(x), expected, rtol=0, atol=1e-5)
        np.testing.assert_allclose(onnx_model(x), expected, rtol=0, atol=1e-5)


def test_constant_variance_twin_equals_the_keras_layers() -> None:
    """``ser.numpy_runtime`` keeps its own copies of these (it must not import Keras)."""
    import keras

    from ser import numpy_runtime
    from ser.models import layers

    assert numpy_runtime.CONSTANT_VARIANCE == layers.CONSTANT_VARIANCE
    assert numpy_runtime.KERAS_EPSILON == keras.config.epsilon()


def test_every_masked_statistic_equals_keras_on_both_runtimes(tmp_path) -> None:
    """Each statistic of ``MaskedGlobalPooling`` itself (not through a softmax), on clips
    with padding, an all-zero frame inside, a nearly constant channel, one real frame and
    none."""
    import keras

    from ser.models.layers import POOLING_STATS, FrameMask, MaskedGlobalPooling
    from ser.onnx_export import OnnxModel

    inputs = keras.Input((None, 3))
    pooled = MaskedGlobalPooling(POOLING_STATS)([inputs, FrameMask()(inputs)])
    keras.Model(inputs, pooled).save(tmp_path / "model.keras")
    numpy_model = read_numpy_model(tmp_path / "model.keras")
    onnx_model = OnnxModel(numpy_model, [f"s{i}" for i in range(3 * len(POOLING_STATS))])
    x = np.random.default_rng(11).standard_normal((5, 23, 3)).astype(np.float32)
    x[:, :, 2] = 1.5 + 1e-4 * x[:, :, 2]  # variance below CONSTANT_VARIANCE: moments 0
    x[1, 17:] = 0.0  # padding
    x[2, 6] = 0.0  # an all-zero frame inside
    x[3, 1:] = 0.0  # one real frame
    x[4] = 0.0  # none
    expected = keras.ops.convert_to_numpy(keras.models.load_model(tmp_path / "model.keras")(x))
    moments = [3 * POOLING_STATS.index(s) + 2 for s in ("skew", "kurtosis")]
    assert np.all(expected[:, moments] == 0.0)
    for light in (numpy_model, onnx_model):
        np.testing.assert_allclose(light(x), expected, rtol=1e-5, atol=1e-5)


def test_window_statistics_equal_keras_on_both_runtimes_and_ignore_padding(tmp_path) -> None:
    """``MaskedWindowPooling1D`` itself: each window of 4 frames becomes its real frames'
    statistics (a window of padding only is 0), appending padding changes no
    real window, and NumPy and ONNX Runtime give Keras's numbers."""
    import keras

    from ser.models.layers import FrameMask, MaskedWindowPooling1D
    from ser.onnx_export import OnnxModel

    inputs = keras.Input((None, 3))
    pooled, _ = MaskedWindowPooling1D(4, ["mean", "std", "max"])([inputs, FrameMask()(inputs)])
    keras.Model(inputs, pooled).save(tmp_path / "model.keras")
    keras_model = keras.models.load_model(tmp_path / "model.keras")
    numpy_model = read_numpy_model(tmp_path / "model.keras")
    onnx_model = OnnxModel(numpy_model, [f"s{i}" for i in range(9)])
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 10, 3)).astype(np.float32)
    x[1, 5:] = 0.0  # padding: windows 0-3, 4-7 (frame 4 real), 8-9 (none)
    x[2, 2] = 0.0  # an all-zero frame inside
    expected = keras.ops.convert_to_numpy(keras_model(x))
    assert expected.shape == (3, 3, 9)
    np.testing.assert_allclose(expected[0, 0, :3], x[0, :4].mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(expected[0, 2, 3:6], x[0, 8:].std(axis=0), atol=1e-3)
    np.testing.assert_allclose(expected[1, 1, :3], x[1, 4], atol=1e-6)  # one real frame
    assert np.all(expected[1, 2] == 0.0)  # padding only: zeros
    real = [0, 1, 3]  # frame 2 is masked in clip 2
    np.testing.assert_allclose(expected[2, 0, 6:9], x[2, real].max(axis=0), atol=1e-6)
    longer = np.concatenate([x, np.zeros((3, 7, 3), np.float32)], axis=1)
    padded = keras.ops.convert_to_numpy(keras_model(longer))
    np.testing.assert_allclose(padded[:, :3], expected, atol=1e-6)
    assert np.all(padded[:, 3:] == 0.0)
    for light in (numpy_model, onnx_model):
        np.testing.assert_allclose(light(x), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(light(longer), padded, rtol=1e-5, atol=1e-5)
