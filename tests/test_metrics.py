"""Classification metrics against hand-computed values, including zero-division cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertpipe.metrics import accuracy, classification_report, confusion_matrix

LABELS = ["entailment", "contradiction", "neutral"]


def scores(precision: float, recall: float, f1: float, support: int) -> dict:
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def test_hand_computed_case():
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2, 2, 0, 2])
    report = classification_report(y_true, y_pred, LABELS)
    # rows = actual, columns = predicted
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    assert report["accuracy"] == pytest.approx(6 / 9)
    entail, contra, neutral = (report["per_class"][name] for name in LABELS)
    assert entail == pytest.approx(scores(2 / 3, 2 / 3, 2 / 3, 3))
    assert contra == pytest.approx(scores(1 / 2, 1 / 2, 1 / 2, 2))
    assert neutral == pytest.approx(scores(3 / 4, 3 / 4, 3 / 4, 4))
    assert report["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
    assert report["examples"] == 9 and report["labels"] == LABELS


def test_precision_and_recall_differ():
    # class 0: predicted 4 times, 2 right, 3 actual -> P 1/2, R 2/3, F1 4/7
    report = classification_report(np.array([0, 0, 0, 1, 1]), np.array([0, 0, 1, 0, 0]), ["a", "b"])
    assert report["per_class"]["a"] == pytest.approx(scores(0.5, 2 / 3, 4 / 7, 3))
    assert report["per_class"]["b"] == scores(0.0, 0.0, 0.0, 2)


def test_perfect_predictions():
    y = np.array([2, 0, 1, 1, 2, 0, 0])
    report = classification_report(y, y.copy(), LABELS)
    assert report["accuracy"] == 1.0 and report["macro_f1"] == 1.0
    assert all(c == scores(1.0, 1.0, 1.0, c["support"]) for c in report["per_class"].values())
    assert report["confusion_matrix"] == [[3, 0, 0], [0, 2, 0], [0, 0, 2]]


def test_class_never_predicted_and_never_present_give_zero():
    y_true = np.array([0, 1, 1, 0])
    y_pred = np.array([0, 0, 0, 0])  # class 1 never predicted, class 2 never anywhere
    report = classification_report(y_true, y_pred, LABELS)
    contra, neutral = report["per_class"]["contradiction"], report["per_class"]["neutral"]
    assert contra == scores(0.0, 0.0, 0.0, 2)
    assert neutral == scores(0.0, 0.0, 0.0, 0)
    assert report["per_class"]["entailment"]["precision"] == 0.5
    assert report["macro_f1"] == pytest.approx((2 / 3) / 3)


def test_confusion_matrix_orientation():
    # three examples of true class 2 all predicted as class 0: row 2, column 0
    matrix = confusion_matrix(np.array([2, 2, 2]), np.array([0, 0, 0]), num_classes=3)
    assert matrix == [[0, 0, 0], [0, 0, 0], [3, 0, 0]]


def test_report_is_json_ready_and_accepts_small_dtypes():
    y_true = np.array([0, 1, 2, 2], dtype=np.uint8)
    y_pred = np.array([0, 2, 2, 1], dtype=np.int64)
    report = classification_report(y_true, y_pred, LABELS)
    assert json.loads(json.dumps(report)) == report
    assert isinstance(report["per_class"]["neutral"]["support"], int)


def test_no_examples():
    empty = np.array([], dtype=np.int64)
    assert accuracy(empty, empty) == 0.0
    report = classification_report(empty, empty, LABELS)
    assert report["accuracy"] == 0.0 and report["macro_f1"] == 0.0 and report["examples"] == 0


def test_accuracy():
    assert accuracy(np.array([1, 2, 3, 4]), np.array([1, 0, 3, 0])) == 0.5


@pytest.mark.parametrize(
    ("y_true", "y_pred", "message"),
    [
        ([0, 1], [0], "arrays of equal length"),
        ([0, 3], [0, 1], "outside 0..2"),
        ([0, 1], [-1, 1], "outside 0..2"),
    ],
)
def test_bad_input(y_true, y_pred, message):
    with pytest.raises(ValueError, match=message):
        classification_report(np.array(y_true), np.array(y_pred), LABELS)
