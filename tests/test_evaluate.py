"""Tests for bertpipe.evaluate: a checkpoint and an SNLI folder that do not belong together are
refused, and the report and the CSV rows are the classifier's predictions in the split's order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bertpipe import checkpoints, evaluate, inference
from bertpipe.errors import UserError
from bertpipe.model import BERTClassifier
from bertpipe.runtime import CPU


def write_classifier(folder: Path, fake, labels: list[str]) -> Path:
    """A classifier on the fake BERT, as finetune writes it, with these label names."""
    folder.mkdir()
    bert, meta = checkpoints.load_bert(fake.bert(folder / "bert.safetensors"))
    torch.manual_seed(0)
    path = folder / "model.safetensors"
    header = checkpoints.classifier_meta(meta, labels, 24, "fp32")  # fake.snli's max_len
    checkpoints.save(path, BERTClassifier(bert), header)
    return path


def test_a_missing_split_and_other_labels_are_refused(tmp_path, fake):
    snli = fake.snli(tmp_path / "snli", {"train": 4, "test": 5})
    model_path = write_classifier(tmp_path / "ours", fake, fake.LABELS)
    _, data, meta = evaluate.load(model_path, snli, "test", "params.yaml")
    assert meta["labels"] == fake.LABELS and len(data["labels"]) == 5
    with pytest.raises(UserError, match=r"params.yaml: evaluate.split 'dev' .* \(has train, test"):
        evaluate.load(model_path, snli, "dev", "params.yaml")
    other = write_classifier(tmp_path / "other", fake, fake.LABELS[::-1])
    with pytest.raises(UserError, match=r"labels .* differ from .*; re-run finetune"):
        evaluate.load(other, snli, "test", "params.yaml")


def test_the_report_and_the_csv_rows_are_the_predictions_in_file_order(tmp_path, fake):
    snli = fake.snli(tmp_path / "snli", {"test": 50})
    model_path = write_classifier(tmp_path / "ours", fake, fake.LABELS)
    model, data, meta = evaluate.load(model_path, snli, "test", "params.yaml")
    labels = meta["labels"]
    report, csv = evaluate.evaluate(model, data, labels, 8, CPU)  # batches sorted by length
    predicted = inference.predict(model, data, 50, CPU)
    actual = np.asarray(data["labels"])
    header, *rows = csv.splitlines()
    assert header == "actual,predicted" and csv.endswith("\n")
    assert rows == [f"{labels[a]},{labels[p]}" for a, p in zip(actual, predicted, strict=True)]
    assert report["num_pairs"] == 50 and "examples" not in report
    assert report["accuracy"] == pytest.approx((predicted == actual).mean())
