"""Tests for bertpipe.finetune and its stage: learning a toy NLI task, the predictions agree with
the dev and test accuracies, evaluating changes no trained bit, and the classifier's header
records the max_len it was fine-tuned with."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from bertpipe import batches, checkpoints, config, routes
from bertpipe.finetune import finetune
from bertpipe.inference import predict
from bertpipe.model import BERTClassifier
from bertpipe.runtime import CPU

ROOT = Path(__file__).resolve().parents[1]


def test_finetuning_learns_a_toy_nli_task(tmp_path, fake):
    """Dev is the test pairs with every label moved by one: a model that learnt the task gets
    them wrong, so the dev figure cannot be the test figure under another name."""
    snli = fake.snli(tmp_path / "snli", {"train": 600, "test": 150})
    train, test = (batches.load_snli_split(snli, s) for s in ("train", "test"))
    dev = {**test, "labels": (np.asarray(test["labels"]) + 1) % 3}
    model = BERTClassifier(checkpoints.load_bert(fake.bert(tmp_path / "bert.safetensors"))[0])
    cfg = config.FinetuneConfig(batch_size=32, lr=3e-3, num_epochs=3, seed=0)
    metrics = finetune(model, train, {"dev": dev, "test": test}, cfg, CPU)
    assert metrics["test_accuracy"] > 0.8 and metrics["dev_accuracy"] < 0.2  # chance is 1/3
    assert metrics["num_steps"] == 3 * 19 and metrics["examples_per_sec"] > 0
    predicted = predict(model, test, 64, CPU)
    for name, split in (("dev", dev), ("test", test)):
        accuracy = (predicted == np.asarray(split["labels"])).mean()
        assert accuracy == pytest.approx(metrics[f"{name}_accuracy"], abs=1e-4)


def test_evaluating_on_dev_changes_no_trained_bit(tmp_path, fake):
    """With dropout on, an evaluation that drew random numbers would move every later mask."""
    snli = fake.snli(tmp_path / "snli", {"train": 96, "test": 40, "dev": 40})
    train, test, dev = (batches.load_snli_split(snli, s) for s in ("train", "test", "dev"))
    bert = fake.bert(tmp_path / "bert.safetensors", cfg=dataclasses.replace(fake.TINY, dropout=0.1))
    cfg = config.FinetuneConfig(batch_size=32, lr=3e-3, num_epochs=2, seed=0)
    weights = []
    for held_out in ({"test": test}, {"dev": dev, "test": test}):
        torch.manual_seed(0)  # the new head's initialisation, as the stage seeds it
        model = BERTClassifier(checkpoints.load_bert(bert)[0])
        finetune(model, train, held_out, cfg, CPU)
        weights.append(model.state_dict())
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_stage_records_the_max_len_of_the_pairs_it_fine_tuned_on(tmp_path, stage, fake):
    """`bertpipe predict` truncates new pairs to it, as make_snli truncated these."""
    snli = fake.snli(tmp_path / "snli", {"train": 40, "test": 10}, max_len=30)
    stage("finetune").main([
        "--params", str(ROOT / "params.yaml"), "--snli", str(snli),
        "--pretrained", str(fake.bert(tmp_path / "bert/model.safetensors").parent),
        "--out", str(tmp_path / "finetune"), "--metrics", str(tmp_path / "finetune.json"),
        "--live", str(tmp_path / "live"), "--device", "cpu", "--threads", "1",
    ])  # fmt: skip
    _, meta = routes.load_classifier(tmp_path / "finetune" / "model.safetensors")
    assert meta.get("max_len") == 30


def test_the_stage_reports_dev_when_make_snli_wrote_one_and_says_so_when_not(
    tmp_path, stage, fake, caplog
):
    with_dev = fake.snli(tmp_path / "with", {"train": 4, "test": 3, "dev": 2})
    found = stage("finetune").held_out_splits(str(with_dev), ["train", "test", "dev"])
    assert {name: len(s["labels"]) for name, s in found.items()} == {"dev": 2, "test": 3}
    assert "no dev split" not in caplog.text

    without = fake.snli(tmp_path / "without", {"train": 4, "test": 3})
    with caplog.at_level(logging.WARNING):
        found = stage("finetune").held_out_splits(str(without), ["train", "test"])
    assert list(found) == ["test"] and "has no dev split" in caplog.text
