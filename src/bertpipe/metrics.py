"""Classification metrics: accuracy, per-class precision/recall/F1, macro-F1, confusion matrix.

Inputs are 1-D integer arrays of class indices (numpy); outputs are plain Python numbers, lists
and dicts, ready for `json.dump`. A ratio whose denominator is zero (a class never predicted,
never present, or no examples at all) is 0.0, as scikit-learn's `zero_division=0`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _check(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> tuple[np.ndarray, ...]:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise ValueError(f"expected 1-D arrays of equal length, got {y_true.shape}, {y_pred.shape}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} has class ids outside 0..{num_classes - 1}")
    return y_true.astype(np.int64), y_pred.astype(np.int64)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of positions where the prediction equals the label (0.0 for no examples)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"shapes differ: {y_true.shape} vs {y_pred.shape}")
    return _ratio(np.count_nonzero(y_true == y_pred), y_true.size)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> list[list[int]]:
    """Counts `m[actual][predicted]`: rows are the true classes, columns the predicted ones."""
    y_true, y_pred = _check(y_true, y_pred, num_classes)
    counts = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).tolist()


def classification_report(
    y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    """Every metric for class ids 0..len(labels)-1, named by `labels`.

    Returns {"examples", "accuracy", "macro_f1", "per_class": {name: {"precision", "recall",
    "f1", "support"}}, "labels", "confusion_matrix"} where confusion_matrix[actual][predicted]
    (rows = true class, columns = predicted class, both in `labels` order). macro_f1 is the
    unweighted mean of every listed class's F1, including classes with no support.
    """
    if len(set(labels)) != len(labels):
        raise ValueError(f"class names must be distinct, got {list(labels)}")
    matrix = np.array(confusion_matrix(y_true, y_pred, len(labels)), dtype=np.int64)
    hits = np.diag(matrix)  # (K,) true positives
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)  # per true / predicted class
    per_class = {}
    for k, name in enumerate(labels):
        precision = _ratio(hits[k], predicted[k])
        recall = _ratio(hits[k], support[k])
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "support": int(support[k]),
        }
    return {
        "examples": int(matrix.sum()),
        "accuracy": _ratio(hits.sum(), matrix.sum()),
        "macro_f1": float(np.mean([c["f1"] for c in per_class.values()])) if labels else 0.0,
        "per_class": per_class,
        "labels": list(labels),
        "confusion_matrix": matrix.tolist(),
    }
