"""Classification metrics for emotion recognition: the one place they are computed.

WA (weighted accuracy) is plain accuracy over utterances; UA (unweighted accuracy)
is the mean of per-class recalls, i.e. balanced accuracy. Both are always reported
together because corpora are imbalanced. Training (validation UA per epoch),
evaluation, cross-validation and the docs generators all import them from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """[num_classes, num_classes] counts; rows are true classes, columns predictions."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def metrics_from_confusion(cm: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """WA, UA, macro-F1 and per-class precision/recall/F1/support from a confusion matrix.

    Classes with no true examples are left out of UA and macro-F1 (their recall is
    undefined) and listed under ``absent``.
    """
    cm = np.asarray(cm, np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = support > 0
    total = support.sum()
    per_class = {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]) if present[i] else None,
            "f1": float(f1[i]) if present[i] else None,
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }
    return {
        "wa": float(tp.sum() / total) if total else float("nan"),
        "ua": float(np.mean(recall[present])) if present.any() else float("nan"),
        "macro_f1": float(np.mean(f1[present])) if present.any() else float("nan"),
        "n": int(total),
        "per_class": per_class,
        "absent": [label for i, label in enumerate(labels) if not present[i]],
        "confusion": cm.astype(np.int64).tolist(),
        "labels": list(labels),
    }


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    return metrics_from_confusion(confusion_matrix(y_true, y_pred, len(labels)), labels)


def unweighted_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Balanced accuracy (mean recall over classes present in ``y_true``)."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present])) if present.any() else 0.0


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1; 0 for one value) of fold scores."""
    array = np.asarray(values, np.float64)
    if array.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0, "values": []}
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return {"mean": float(array.mean()), "std": std, "n": int(array.size), "values": array.tolist()}


def metrics_by_group(
    y_true: np.ndarray, y_pred: np.ndarray, groups: Sequence[str], labels: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """UA, WA, macro-F1 and n of the utterances of each group (e.g. each corpus).

    A group's UA averages the classes present in that group only.
    """
    groups_array = np.asarray(groups)
    out: dict[str, dict[str, Any]] = {}
    for group in sorted(set(groups_array.tolist())):
        mask = groups_array == group
        m = classification_metrics(np.asarray(y_true)[mask], np.asarray(y_pred)[mask], labels)
        out[group] = {key: m[key] for key in ("ua", "wa", "macro_f1", "n")}
    return out
