"""scikit-learn baselines on the same split and the same cached features as the Keras models.

Every baseline sees pooled statistics (``features.pooling``, e.g. mean and std over
frames) of the run's own cached frame features, so a report compares like with
like; ``seed_mlp`` is the exception by design: it is the upstream project's recipe
(utterance means of MFCC 40, chroma 12 and mel 128, unscaled, into an MLP) and
extracts those features through the same cache. Baselines train on the training
split only; ``--grid`` searches hyper-parameters with speaker-grouped folds of the
training speakers and never sees a test row. Fitted baselines are not saved (no
pickles): the report keeps their parameters and scores, and refitting takes seconds.

Registered in ``BASELINES`` as ``name -> (params, seed, n_jobs) -> estimator``,
names equal ``ser.config.BaselineName``.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold, PredefinedSplit
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

from ser.config import (
    OPTIONAL_FEATURE_FIELDS,
    ChromaParams,
    Config,
    EvaluationConfig,
    FeaturesConfig,
    HistGradientBoostingParams,
    KNNParams,
    LogisticRegressionParams,
    MelParams,
    MFCCParams,
    MLPParams,
    RandomForestParams,
    SeedMLPParams,
    SVCParams,
)
from ser.data.corpora import Utterance
from ser.data.pipeline import speaker_normalise_vectors
from ser.features.cache import extract_all
from ser.features.extractors import feature_dims, pool
from ser.progress import Log
from ser.registry import Registry

BASELINES: Registry[Callable[[Any, int, int], Any]] = Registry("baseline")

# Shown in reports next to the registry name.
TITLES = {
    "svc": "SVC",
    "random_forest": "RandomForest",
    "hist_gradient_boosting": "HistGradientBoosting",
    "knn": "KNN",
    "mlp": "MLP",
    "logistic_regression": "LogisticRegression",
    "seed_mlp": "seed recipe (MFCC+chroma+mel means, MLP)",
}


# ----------------------------------------------------------------------- builders
@BASELINES.register("svc")
def build_svc(p: SVCParams, seed: int, n_jobs: int) -> SVC:
    return SVC(
        C=p.C, kernel=p.kernel, gamma=p.gamma, class_weight=p.class_weight, random_state=seed
    )


@BASELINES.register("random_forest")
def build_random_forest(p: RandomForestParams, seed: int, n_jobs: int) -> RandomForestClassifier:
    return RandomForestClassifier(
        n_estimators=p.n_estimators,
        max_depth=p.max_depth,
        min_samples_leaf=p.min_samples_leaf,
        max_features=p.max_features,
        class_weight=p.class_weight,
        random_state=seed,
        n_jobs=n_jobs,
    )


@BASELINES.register("hist_gradient_boosting")
def build_hist_gradient_boosting(
    p: HistGradientBoostingParams, seed: int, n_jobs: int
) -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(
        learning_rate=p.learning_rate,
        max_iter=p.max_iter,
        max_leaf_nodes=p.max_leaf_nodes,
        l2_regularization=p.l2_regularization,
        class_weight=p.class_weight,
        early_stopping=False,
        random_state=seed,
    )


@BASELINES.register("knn")
def build_knn(p: KNNParams, seed: int, n_jobs: int) -> KNeighborsClassifier:
    return KNeighborsClassifier(n_neighbors=p.n_neighbors, weights=p.weights, metric=p.metric)


@BASELINES.register("mlp")
def build_mlp(p: MLPParams, seed: int, n_jobs: int) -> MLPClassifier:
    return MLPClassifier(
        hidden_layer_sizes=tuple(p.hidden_layer_sizes),
        alpha=p.alpha,
        learning_rate_init=p.learning_rate_init,
        batch_size=p.batch_size,
        max_iter=p.max_iter,
        random_state=seed,
    )


@BASELINES.register("logistic_regression")
def build_logistic_regression(
    p: LogisticRegressionParams, seed: int, n_jobs: int
) -> LogisticRegression:
    return LogisticRegression(
        C=p.C, max_iter=p.max_iter, class_weight=p.class_weight, random_state=seed
    )


@BASELINES.register("seed_mlp")
def build_seed_mlp(p: SeedMLPParams, seed: int, n_jobs: int) -> MLPClassifier:
    return MLPClassifier(
        hidden_layer_sizes=tuple(p.hidden_layer_sizes),
        alpha=p.alpha,
        batch_size=p.batch_size,
        learning_rate=p.learning_rate,
        max_iter=p.max_iter,
        epsilon=1e-8,
        random_state=seed,
    )


def params_of(cfg: EvaluationConfig, name: str) -> Any:
    """The typed parameters of baseline ``name`` (its section of ``evaluation``)."""
    BASELINES.get(name)  # unknown names fail here, listing the valid ones
    return getattr(cfg, name)


def make_pipeline(name: str, params: Any, seed: int, n_jobs: int = 1) -> Pipeline:
    """Unfitted ``[StandardScaler ->] classifier`` for baseline ``name``."""
    steps: list[tuple[str, Any]] = [("scale", StandardScaler())] if params.scale else []
    steps.append(("clf", BASELINES.get(name)(params, seed, n_jobs)))
    return Pipeline(steps)


def param_grid(params: Any) -> dict[str, list[Any]]:
    """``params.grid`` as a GridSearchCV grid over the pipeline (empty lists are skipped)."""
    grid: dict[str, list[Any]] = {}
    for key, values in params.grid.model_dump().items():
        if values:
            grid[f"clf__{key}"] = [tuple(v) if isinstance(v, list) else v for v in values]
    return grid


def shown_params(params: Any) -> dict[str, Any]:
    """Parameters for the report (without the grid)."""
    return params.model_dump(mode="json", exclude={"grid"})


# ----------------------------------------------------------------------- features
def seed_features_config(p: SeedMLPParams, like: FeaturesConfig) -> FeaturesConfig:
    """The seed recipe's frame features (pooled by mean), cached next to the run's."""
    return FeaturesConfig(
        extractors=["mfcc", "chroma", "mel"],
        mode="pooled",
        pooling=["mean"],
        frame=p.frame,
        mfcc=MFCCParams(n_mfcc=p.n_mfcc, n_mels=p.n_mels),
        chroma=ChromaParams(n_chroma=p.n_chroma),
        mel=MelParams(n_mels=p.n_mels),
        cache_dir=like.cache_dir,
        workers=like.workers,
    )


def describe_frames(f: FeaturesConfig) -> str:
    """E.g. ``"mfcc 40 + chroma 12 per frame (n_fft 512, hop 160)"``."""
    parts = [
        f"{name} {feature_dims(f.model_copy(update={'extractors': [name]}))}"
        for name in f.extractors
    ]
    return f"{' + '.join(parts)} per frame (n_fft {f.frame.n_fft}, hop {f.frame.hop_length})"


class PooledFeatures:
    """Pooled statistics [D * len(pooling)] of frame features, per utterance.

    ``known`` holds frame features already extracted with ``features`` (e.g. the
    run's, from ``prepare_data``); other paths go through ``extract_all`` and so
    through the same content-addressed cache.
    """

    def __init__(
        self,
        features: FeaturesConfig,
        sample_rate: int,
        known: dict[str, np.ndarray] | None = None,
        log: Log = print,
    ) -> None:
        self.features = features
        self.sample_rate = sample_rate
        self._frames = dict(known or {})
        self._log = log

    @property
    def key(self) -> str:
        """Stable id of what these vectors are: same key, same numbers."""
        spec = self.features.model_dump(mode="json", exclude={"cache_dir", "workers", "mode"})
        for optional in OPTIONAL_FEATURE_FIELDS:
            if spec.get(optional) is None:  # as the cache key: off leaves earlier keys as they were
                spec.pop(optional, None)
        spec["sample_rate"] = self.sample_rate
        text = json.dumps(spec, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def description(self) -> str:
        return f"{describe_frames(self.features)}, pooled by {'+'.join(self.features.pooling)}"

    def matrix(self, rows: Sequence[Utterance]) -> np.ndarray:
        """float32 [len(rows), D]; raises if a file cannot be read."""
        missing = [r.path for r in rows if r.path not in self._frames]
        if missing:
            found, report = extract_all(
                missing,
                self.features,
                self.sample_rate,
                cache_dir=self.features.cache_dir,
                log=self._log,
            )
            self._log(f"baseline {report.summary()}")
            if report.failed:
                path, reason = report.failed[0]
                raise RuntimeError(f"baseline features: cannot read {path}: {reason}")
            self._frames.update(found)
        if not rows:
            return np.zeros((0, 0), np.float32)
        vectors = [pool(self._frames[r.path], self.features.pooling) for r in rows]
        if self.features.pooled_normalisation == "speaker":
            # Over the rows asked for together (a fold's train + val + test: every clip
            # of each speaker), as training does.
            vectors = speaker_normalise_vectors(vectors, [r.speaker for r in rows])
        return np.stack(vectors)


def features_for(name: str, cfg: Config, run_features: PooledFeatures) -> PooledFeatures:
    """The features baseline ``name`` uses: the run's, or the seed recipe's own."""
    if name != "seed_mlp":
        return run_features
    return PooledFeatures(
        seed_features_config(cfg.evaluation.seed_mlp, cfg.features),
        run_features.sample_rate,
        log=run_features._log,
    )


# ---------------------------------------------------------------------- fit/score
@dataclass
class BaselineFit:
    name: str
    estimator: Pipeline
    seconds: float
    params: dict[str, Any]
    grid: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)


def _search_folds(groups: np.ndarray, n_folds: int, has_val: bool, log: Log) -> tuple[Any, str]:
    speakers = np.unique(groups)
    if len(speakers) >= 2:
        k = min(n_folds, len(speakers))
        return GroupKFold(n_splits=k), f"{k}-fold GroupKFold over {len(speakers)} training speakers"
    if not has_val:
        raise RuntimeError(
            "grid search needs at least two training speakers or a validation split; "
            "run without --grid"
        )
    log(
        "grid: one training speaker; searching on the run's validation split instead "
        "(no test rows either way)"
    )
    return None, "the run's validation split (one training speaker)"


def _plain(value: Any) -> Any:
    """A grid value as JSON keeps it (tuples become lists)."""
    return list(value) if isinstance(value, tuple) else value


def _grid_search(
    name: str,
    pipeline: Pipeline,
    grid_spec: dict[str, list[Any]],
    x_train: np.ndarray,
    y_train: np.ndarray,
    groups: np.ndarray,
    *,
    grid_folds: int,
    n_jobs: int,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    log: Log,
) -> dict[str, Any]:
    """Search ``grid_spec`` by balanced accuracy on speaker-grouped folds of the training
    rows (or on the validation rows, with one training speaker), set the best
    parameters on ``pipeline`` and return what was searched and found."""
    splitter, how = _search_folds(groups, grid_folds, x_val is not None, log)
    if splitter is None:  # one training speaker: search on the validation rows
        fold = np.r_[np.full(len(x_train), -1), np.zeros(len(x_val), int)]
        cv, fit_args = PredefinedSplit(fold), {}
        x, y = np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val])
    else:
        cv, fit_args, x, y = splitter, {"groups": groups}, x_train, y_train
    search = GridSearchCV(
        pipeline, grid_spec, scoring="balanced_accuracy", cv=cv, n_jobs=n_jobs, refit=False
    )
    search.fit(x, y, **fit_args)
    best = search.best_params_
    pipeline.set_params(**best)
    report = {
        "searched": {
            k.removeprefix("clf__"): [_plain(v) for v in vs] for k, vs in grid_spec.items()
        },
        "best": {k.removeprefix("clf__"): _plain(v) for k, v in best.items()},
        "best_cv_ua": float(search.best_score_),
        "folds": how,
        "candidates": len(search.cv_results_["params"]),
    }
    log(f"grid {name}: best {report['best']} (cv UA {search.best_score_:.3f}, {how})")
    return report


def fit_baseline(
    name: str,
    params: Any,
    x_train: np.ndarray,
    y_train: np.ndarray,
    groups: np.ndarray,
    *,
    seed: int,
    grid: bool = False,
    grid_folds: int = 3,
    n_jobs: int = 1,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    log: Log = print,
) -> BaselineFit:
    """Fit baseline ``name`` on training rows (``groups``: their speakers).

    With ``grid``, ``param_grid(params)`` is searched first, scored by balanced
    accuracy on speaker-grouped folds of these rows only (or, with a single training
    speaker, on ``x_val``); the best parameters are then refitted on the training rows.
    Callers pass only training (and validation) rows: nothing here can see a test row.
    """
    started = time.perf_counter()
    caught: list[str] = []
    chosen = shown_params(params)
    search_report = None
    # BLAS/OpenMP threads capped at n_jobs: on a busy 2-core machine, unlimited
    # OpenMP threads made HistGradientBoosting 20x slower (207 s vs 10 s, measured).
    with warnings.catch_warnings(record=True) as seen, threadpool_limits(n_jobs):
        warnings.simplefilter("always", ConvergenceWarning)
        pipeline = make_pipeline(name, params, seed, n_jobs)
        grid_spec = param_grid(params) if grid else {}
        if grid_spec:
            search_report = _grid_search(
                name,
                pipeline,
                grid_spec,
                x_train,
                y_train,
                groups,
                grid_folds=grid_folds,
                n_jobs=n_jobs,
                x_val=x_val,
                y_val=y_val,
                log=log,
            )
            chosen.update(search_report["best"])
        pipeline.fit(x_train, y_train)
    for w in seen:
        if issubclass(w.category, ConvergenceWarning):
            caught.append(str(w.message).splitlines()[0])
    if caught:
        log(f"note: {name}: {len(caught)} convergence warning(s) (max_iter reached)")
    return BaselineFit(
        name, pipeline, time.perf_counter() - started, chosen, search_report, sorted(set(caught))
    )


def class_scores(estimator: Pipeline, x: np.ndarray, num_classes: int) -> np.ndarray:
    """[N, num_classes] scores (probabilities or decision values; higher = more likely).

    Classes the estimator never saw in training get -inf.
    """
    if hasattr(estimator, "predict_proba"):
        raw = estimator.predict_proba(x)
    else:
        raw = estimator.decision_function(x)
        if raw.ndim == 1:  # two classes: one signed margin
            raw = np.stack([-raw, raw], axis=1)
    out = np.full((x.shape[0], num_classes), -np.inf)
    out[:, np.asarray(estimator.classes_, int)] = raw
    return out


def predict(
    estimator: Pipeline, x: np.ndarray, num_classes: int, allowed: Sequence[int] | None = None
) -> np.ndarray:
    """Class indices [N]. With ``allowed``, the best of those classes, as positions in
    ``allowed`` (cross-corpus evaluation on shared emotions)."""
    if allowed is None:
        return np.asarray(estimator.predict(x), int)
    return class_scores(estimator, x, num_classes)[:, list(allowed)].argmax(axis=1)
