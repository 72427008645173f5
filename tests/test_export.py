"""``ser export``: SavedModel, TFLite and ONNX give the Keras model's probabilities on a test clip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ser.cli import main
from ser.export import export_run, load_exported
from ser.inference import Predictor
from tests.support.fakes import EMOTION_HZ
from tests.support.tiny_run import tiny_run, tone


@pytest.fixture(scope="module", params=["lstm", "cnn", "crnn", "tcn", "dense"])
def predictor(request, tmp_path_factory) -> Predictor:
    return Predictor.load(tiny_run(tmp_path_factory, request.param))


def clip_inputs(predictor) -> list[np.ndarray]:
    """Normalised inputs of real clips: one shorter than the window, one full window."""
    short = predictor.prepare_clip(tone(0.6, EMOTION_HZ["happy"])).inputs
    full = predictor.prepare_clip(tone(predictor.window_seconds, EMOTION_HZ["sad"])).inputs
    return short + full


@pytest.mark.parametrize("fmt", ["savedmodel", "tflite"])
def test_exported_model_matches_keras_on_a_test_clip(predictor, tmp_path, fmt):
    meta = export_run(predictor.run_dir, fmt, tmp_path / fmt, predictor=predictor)
    exported = load_exported(tmp_path / fmt)
    for x in clip_inputs(predictor):
        keras_probs = np.asarray(predictor.model(x[None], training=False))[0]
        np.testing.assert_allclose(exported.predict(x), keras_probs, atol=1e-5)
    assert meta["parity_max_abs_diff"] < 1e-4
    written = json.loads((tmp_path / fmt / "export.json").read_text())
    assert written["model_id"] == predictor.model_id
    assert written["output"]["labels"] == predictor.labels
    for name in ("labels.json", "normaliser.json", "run.yaml", written["model_file"]):
        assert (tmp_path / fmt / name).is_file(), name
    d = predictor.input_dim
    if fmt == "tflite":  # TFLite needs a static shape: one full window
        expected = [1, predictor.max_frames, d] if predictor.sequence else [1, d]
    else:
        expected = [None, None, d] if predictor.sequence else [None, d]
    assert written["input"]["shape"] == expected


def test_tflite_refuses_inputs_longer_than_its_window(predictor, tmp_path):
    if not predictor.sequence:
        pytest.skip("pooled models take one vector per clip")
    export_run(predictor.run_dir, "tflite", tmp_path / "t", predictor=predictor)
    exported = load_exported(tmp_path / "t")
    too_long = np.ones((predictor.max_frames + 1, predictor.input_dim), np.float32)
    with pytest.raises(ValueError, match="at most"):
        exported.predict(too_long)


def test_cli_export_prints_the_result_and_refuses_to_overwrite(predictor, tmp_path, capsys):
    out = tmp_path / "sm"
    args = ["export", str(predictor.run_dir), "--format", "savedmodel", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"exported {predictor.model_id} as savedmodel to {out}" in printed
    assert "max difference from Keras" in printed
    assert main(args) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_cli_export_rejects_an_unknown_format(predictor, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(predictor.run_dir), "--format", "coreml"])
    assert exit_.value.code == 2
    assert "invalid choice: 'coreml'" in capsys.readouterr().err


def test_onnx_matches_keras_on_test_clips(predictor, tmp_path):
    """ONNX: every model type equals Keras on real clips' inputs."""
    meta = export_run(predictor.run_dir, "onnx", tmp_path / "onnx", predictor=predictor)
    assert meta["parity_max_abs_diff"] < 1e-4
    exported = load_exported(tmp_path / "onnx")
    for x in clip_inputs(predictor):
        keras_probs = np.asarray(predictor.model(x[None], training=False))[0]
        np.testing.assert_allclose(exported.predict(x), keras_probs, atol=1e-5)
    d = predictor.input_dim
    written = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert written["input"]["shape"] == ([None, None, d] if predictor.sequence else [None, d])


def test_onnx_refuses_a_layer_it_cannot_convert_by_name(tmp_path_factory, tmp_path, capsys):
    """A model with a layer ONNX export lacks: refused, naming it, with nothing written."""
    from tests.support.tiny_run import with_unconvertible_layer

    run = with_unconvertible_layer(tiny_run(tmp_path_factory, "dense"), tmp_path / "run")
    out = tmp_path / "onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--format onnx:" in err and "'elu_layer' (Dense)" in err
    assert not out.exists()


def test_onnx_of_an_ensemble_is_one_graph_equal_to_keras(tmp_path_factory, tmp_path):
    """A seed ensemble exports as one graph (its members' average inside), runnable on
    ONNX Runtime in a process that never imports TensorFlow."""
    import subprocess
    import sys

    from tests.support import ROOT

    ensemble = Predictor.load(tiny_run(tmp_path_factory, "dense", ensemble=2))
    export_run(ensemble.run_dir, "onnx", tmp_path / "onnx", predictor=ensemble)
    x = np.random.default_rng(2).standard_normal((4, ensemble.input_dim)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np\n"
        "from ser.export import load_exported\n"
        f"m = load_exported({str(tmp_path / 'onnx')!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, np.stack([m.predict(v) for v in x]))\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    expected = np.asarray(ensemble.model(x, training=False))
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-5)
