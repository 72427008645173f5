"""Runs with ``features.pooled_normalisation: speaker``: what training saves for
inference, and how a lone clip (no speaker statistics) is normalised."""

from __future__ import annotations

import numpy as np
import pytest
from fakes import make_emodb
from tiny_run import ROOT, tiny_overrides

from ser.config import load_config
from ser.data.pipeline import SPEAKER_PRIOR, Normaliser, speaker_prior
from ser.inference import Predictor, RunDirError
from ser.training import prepare_data, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("prior")
    make_emodb(work / "corpora")
    sets = tiny_overrides(
        work / "corpora", work, "dense", "[emodb]",
        **{"features.pooled_normalisation": "speaker", "train.run_name": "prior",
           "train.confusion_images": "false"},
    )  # fmt: skip
    cfg = load_config(ROOT / "configs" / "base.yaml", sets, env={})
    summary = train(cfg, log=lambda _line: None)
    return cfg, summary


def test_prior_is_the_average_training_speaker():
    rng = np.random.default_rng(0)
    a = rng.normal(10, 2, (5, 3))
    b = rng.normal(-10, 4, (3, 3))
    prior = speaker_prior(list(a) + list(b), ["A"] * 5 + ["B"] * 3)
    np.testing.assert_allclose(prior.mean, (a.mean(0) + b.mean(0)) / 2, rtol=1e-5)
    np.testing.assert_allclose(prior.std, (a.std(0) + b.std(0)) / 2, rtol=1e-5)


def test_training_saves_the_prior_and_inference_applies_it(run):
    cfg, summary = run
    run_dir = summary["run_dir"]
    prior = Normaliser.load(f"{run_dir}/{SPEAKER_PRIOR}")
    predictor = Predictor.load(run_dir, xla=False)
    assert predictor.speaker_prior is not None
    # The prior is fitted on the raw pooled vectors of the training speakers.
    data = prepare_data(cfg, log=lambda _line: None)
    np.testing.assert_allclose(prior.mean, data.speaker_prior.mean, rtol=1e-5)
    wave = 0.1 * np.sin(2 * np.pi * 180 * np.arange(16000) / 16000).astype(np.float32)
    frames = predictor.frame_features(wave)
    raw = frames.mean(0)  # the first pooled statistic is the mean
    x = predictor.model_input(frames)
    d = raw.shape[0]
    np.testing.assert_allclose(x[:d], (raw - prior.mean[:d]) / prior.std[:d], rtol=1e-4, atol=1e-4)
    probs = predictor.predict_wave(wave)
    assert np.isclose(probs.sum(), 1.0, atol=1e-4)


def test_a_run_without_its_prior_is_refused(run, tmp_path):
    import shutil

    _cfg, summary = run
    copy = tmp_path / "copy"
    shutil.copytree(summary["run_dir"], copy, symlinks=True)
    (copy / SPEAKER_PRIOR).unlink()
    with pytest.raises(RunDirError, match=SPEAKER_PRIOR):
        Predictor.load(copy, xla=False)
