"""Tests for bertpipe.finetune and its stage: learning a toy NLI task, the predictions agree with
the test accuracy, and the classifier's header records the max_len it was fine-tuned with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bertpipe import batches, checkpoints, config
from bertpipe.finetune import finetune
from bertpipe.inference import predict
from bertpipe.model import BERTClassifier
from bertpipe.runtime import CPU

ROOT = Path(__file__).resolve().parents[1]


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


def test_the_stage_records_the_max_len_of_the_pairs_it_fine_tuned_on(tmp_path, stage, fake):
    """`bertpipe predict` truncates new pairs to it, as make_snli truncated these."""
    snli = fake.snli(tmp_path / "snli", {"train": 40, "test": 10}, max_len=30)
    stage("finetune").main([
        "--params", str(ROOT / "params.yaml"), "--snli", str(snli),
        "--pretrained", str(fake.bert(tmp_path / "bert.safetensors")),
        "--out", str(tmp_path / "finetune"), "--metrics", str(tmp_path / "finetune.json"),
        "--live", str(tmp_path / "live"), "--device", "cpu", "--threads", "1",
    ])  # fmt: skip
    _, meta = checkpoints.load_classifier(tmp_path / "finetune" / "model.safetensors")
    assert meta.get("max_len") == 30
