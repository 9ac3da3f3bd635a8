"""Tests for bertpipe.finetune and bertpipe.inference: learning a toy NLI task, predictions."""

from __future__ import annotations

import numpy as np
import pytest

from bertpipe import batches, checkpoints, config
from bertpipe.finetune import finetune
from bertpipe.inference import predict
from bertpipe.model import BERTClassifier
from bertpipe.runtime import CPU


def test_finetuning_learns_a_toy_nli_task(tmp_path, fake):
    snli = fake.snli(tmp_path / "snli", {"train": 600, "test": 150})
    train, test = (batches.load_snli_split(snli, s) for s in ("train", "test"))
    model = BERTClassifier(checkpoints.load_bert(fake.bert(tmp_path / "bert.safetensors"))[0])
    cfg = config.FinetuneConfig(batch_size=32, lr=3e-3, num_epochs=3, seed=0)
    metrics = finetune(model, train, test, cfg, CPU)
    assert metrics["test_accuracy"] > 0.8  # chance is 1/3
    assert metrics["num_steps"] == 3 * 19 and metrics["examples_per_sec"] > 0
    predicted = predict(model, test, 64, CPU)
    accuracy = (predicted == np.asarray(test["labels"])).mean()
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-4)
