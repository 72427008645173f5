"""scikit-learn baselines: registry, fitting, restricted prediction, and the grid-search
guarantee that no test row (or test speaker) ever reaches the search."""

from __future__ import annotations

import typing

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV

from ser import baselines
from ser.config import BaselineName, Config, EvaluationConfig, FeaturesConfig
from ser.data.corpora import Utterance
from ser.evaluation import EvaluationError, Examples, evaluate_baselines
from ser.features.extractors import feature_dims
from ser.registry import UnknownNameError

LABELS = ["neutral", "happy", "sad"]


def blobs(n_per_class: int = 30, dims: int = 6, seed: int = 0):
    """Three well-separated Gaussian classes: [3n, dims] float32 and targets [3n]."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(3.0 * k, 1.0, (n_per_class, dims)) for k in range(3)])
    y = np.repeat(np.arange(3), n_per_class)
    return x.astype(np.float32), y


def test_registry_matches_the_config_choices():
    assert baselines.BASELINES.names() == sorted(typing.get_args(BaselineName))
    assert set(EvaluationConfig().baselines) == set(baselines.BASELINES.names())
    with pytest.raises(UnknownNameError, match="valid: hist_gradient_boosting"):
        baselines.params_of(EvaluationConfig(), "xgboost")


@pytest.mark.parametrize("name", sorted(typing.get_args(BaselineName)))
def test_every_baseline_learns_separable_data(name):
    ev = EvaluationConfig()
    params = baselines.params_of(ev, name)
    if hasattr(params, "max_iter"):
        params = params.model_copy(update={"max_iter": 60})
    x, y = blobs()
    groups = np.repeat(["s1", "s2", "s3"], 30)
    fit = baselines.fit_baseline(name, params, x, y, groups, seed=0, log=lambda _: None)
    x_test, y_test = blobs(seed=1)
    pred = baselines.predict(fit.estimator, x_test, 3)
    assert (pred == y_test).mean() > 0.9
    assert fit.seconds >= 0 and fit.grid is None
    assert "grid" not in fit.params


def test_restricted_prediction_picks_among_allowed_classes_only():
    x, y = blobs()
    fit = baselines.fit_baseline(
        "svc", EvaluationConfig().svc, x, y, np.repeat(["a", "b"], 45), seed=0, log=lambda _: None
    )
    pred = baselines.predict(fit.estimator, x, 3, allowed=[0, 2])
    assert set(pred.tolist()) <= {0, 1}  # positions in `allowed`
    # Class 1 (middle blob) must go to one of its neighbours; 0 and 2 stay right.
    assert (pred[y == 0] == 0).all() and (pred[y == 2] == 1).all()


def _rows(speakers, n_per_class=10, start=0):
    rows = []
    for speaker in speakers:
        for k, label in enumerate(LABELS):
            for i in range(n_per_class):
                rows.append(
                    Utterance(
                        f"/x/{speaker}/{label}{i}.wav",
                        "emodb",
                        f"emodb:{speaker}",
                        None,
                        label,
                        1.0,
                    )
                )
    return rows


class _Frames(baselines.PooledFeatures):
    """Pooled features from a fixed table instead of audio (one row per path)."""

    def __init__(self, table):
        super().__init__(FeaturesConfig(pooling=["mean"]), 16000)
        self.table = table

    def matrix(self, rows):
        return np.stack([self.table[r.path] for r in rows])


def _examples(rows, rng):
    targets = np.array([LABELS.index(r.emotion) for r in rows])
    return Examples(rows, targets), {
        r.path: (rng.normal(3.0 * t, 1.0, 4)).astype(np.float32)
        for r, t in zip(rows, targets, strict=True)
    }


@pytest.mark.parametrize("train_speakers", [["03", "08", "09", "10"], ["03"]])
def test_grid_search_never_receives_a_test_row(monkeypatch, train_speakers):
    rng = np.random.default_rng(0)
    train, table = _examples(_rows(train_speakers), rng)
    val, more = _examples(_rows(["11"]), rng)
    test, rest = _examples(_rows(["12", "13"]), rng)
    features = _Frames({**table, **more, **rest})
    test_vectors = {features.table[r.path].tobytes() for r in test.rows}

    seen = []

    class SpyGridSearch(GridSearchCV):
        def fit(self, X, y=None, **params):
            seen.append((np.asarray(X), params.get("groups")))
            return super().fit(X, y, **params)

    monkeypatch.setattr(baselines, "GridSearchCV", SpyGridSearch)
    cfg = Config().model_copy(
        update={"evaluation": EvaluationConfig(grid=True, grid_folds=3, baselines=["svc", "knn"])}
    )
    results = evaluate_baselines(cfg, train, test, LABELS, features, val=val, log=lambda _: None)
    assert len(seen) == 2  # one search per baseline
    for x, groups in seen:
        assert not {row.tobytes() for row in x} & test_vectors
        if len(train_speakers) > 1:
            assert set(groups) == {r.speaker for r in train.rows}  # GroupKFold by speaker
            assert len(x) == len(train.rows)
        else:
            assert groups is None and len(x) == len(train.rows) + len(val.rows)  # validation split
    for r in results:
        assert r.grid is not None and r.grid["best"]
        assert r.metrics["n"] == len(test.rows)


def test_baselines_refuse_training_rows_of_a_test_speaker():
    rng = np.random.default_rng(0)
    train, table = _examples(_rows(["03", "12"]), rng)
    test, rest = _examples(_rows(["12"]), rng)
    with pytest.raises(EvaluationError, match="test speakers emodb:12"):
        evaluate_baselines(
            Config(),
            train,
            test,
            LABELS,
            _Frames({**table, **rest}),
            names=["knn"],
            log=lambda _: None,
        )


def test_seed_recipe_has_180_utterance_means():
    f = baselines.seed_features_config(EvaluationConfig().seed_mlp, FeaturesConfig())
    assert feature_dims(f) * len(f.pooling) == 180
    assert f.pooling == ["mean"] and f.extractors == ["mfcc", "chroma", "mel"]


def test_pooled_features_pool_the_frames_they_are_given():
    frames = np.arange(12, dtype=np.float32).reshape(4, 3)
    row = Utterance("/x/a.wav", "emodb", "emodb:03", None, "sad", 1.0)
    pooled = baselines.PooledFeatures(
        FeaturesConfig(pooling=["mean", "max"]), 16000, known={row.path: frames}
    )
    np.testing.assert_allclose(pooled.matrix([row]), [[4.5, 5.5, 6.5, 9, 10, 11]])
    other = baselines.PooledFeatures(FeaturesConfig(pooling=["mean"]), 16000)
    assert pooled.key != other.key  # different vectors, different dedupe keys


def test_pooled_feature_key_ignores_trimming_when_off():
    from ser.baselines import PooledFeatures
    from ser.config import FeaturesConfig

    # The key of the default features before features.trim_db existed: journals of
    # earlier cross-validations keep matching when trimming is off.
    assert PooledFeatures(FeaturesConfig(), 16000).key == "d4b77da9e62b"
    assert PooledFeatures(FeaturesConfig(trim_db=30), 16000).key != "d4b77da9e62b"
