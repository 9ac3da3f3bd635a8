"""End-to-end tests of the pretrain, finetune and evaluate stage scripts on generated data."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import training_params

from bertpipe import artifacts, batches, checkpoints, config, finetune, pretrain, routes, runtime
from bertpipe.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
# 12 pretraining steps, 2 fine-tuning epochs, the README's training controls on
PARAMS = {**training_params(pretrain_steps=12, finetune_epochs=2),
          "evaluate": {"batch_size": 16, "split": "dev"}}  # fmt: skip


@pytest.fixture
def work(tmp_path, monkeypatch, fake) -> Path:
    """A folder (outside any git repository) with params.yaml and both stages' inputs."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    fake.examples(tmp_path / "data" / "make_examples", n=200)
    fake.corpus(tmp_path / "data" / "tokenize_wikitext")
    fake.snli(tmp_path / "data" / "make_snli", {"train": 200, "test": 40, "dev": 30})
    return tmp_path


def pretrain_args(root: Path) -> list[str]:
    return [
        "--params", str(root / "params.yaml"), "--examples", str(root / "data/make_examples"),
        "--corpus", str(root / "data/tokenize_wikitext"),
        "--out", str(root / "data/pretrain"), "--metrics", str(root / "metrics/pretrain.json"),
        "--live", str(root / "metrics/pretrain_live"), "--device", "cpu",
    ]  # fmt: skip


def finetune_args(root: Path, pretrained: Path) -> list[str]:
    return [
        "--pretrained", str(pretrained), "--snli", str(root / "data/make_snli"),
        "--out", str(root / "data/finetune"), "--metrics", str(root / "metrics/finetune.json"),
        "--live", str(root / "metrics/finetune_live"), "--device", "cpu",
    ]  # fmt: skip


def test_pretrain_finetune_evaluate_stages_end_to_end(work, stage, fake):
    stage("pretrain").main(pretrain_args(work))
    _, meta = checkpoints.load_bert(work / "data/pretrain/model.safetensors")
    assert meta["kind"] == "bert" and meta["vocab_sha1"] == fake.SHA and meta["vocab_size"] == 37
    assert meta["model"] == PARAMS["model"]
    pretrain = artifacts.read_json(work / "metrics/pretrain.json")
    assert {"mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy", "pairs_per_sec", "device",
            "compile", "workers", "threads", "world_size"} <= set(pretrain)  # fmt: skip
    assert pretrain["num_steps"] == 12 and pretrain["num_parameters"] > 0
    assert len(fake.curve(work / "metrics/pretrain_live", "train/mlm_loss")) == 12

    stage("finetune").main(finetune_args(work, work / "data/pretrain"))
    classifier, meta = routes.load_classifier(work / "data/finetune/model.safetensors")
    assert (
        meta["kind"] == "classifier" and meta["labels"] == fake.LABELS and meta["num_classes"] == 3
    )
    assert {k.split(".")[0] for k in classifier.state_dict()} == {"encoder", "hidden", "output"}
    finetune = artifacts.read_json(work / "metrics/finetune.json")
    assert {"loss", "train_accuracy", "dev_accuracy", "test_accuracy",
            "examples_per_sec"} <= set(finetune)  # fmt: skip
    for split in ("dev", "test"):
        epochs = fake.curve(work / "metrics/finetune_live", f"epoch/{split}_accuracy")
        assert epochs[:, 0].tolist() == [7, 14]  # x = optimiser step at each epoch's end
        assert epochs[-1, 1] == finetune[f"{split}_accuracy"]  # the metrics: the last epoch's

    stage("evaluate").main([
        "--model", str(work / "data/finetune/model.safetensors"),
        "--snli", str(work / "data/make_snli"), "--metrics", str(work / "metrics/evaluate.json"),
        "--predictions", str(work / "data/evaluate/predictions.csv"), "--device", "cpu",
    ])  # fmt: skip
    report = artifacts.read_json(work / "metrics/evaluate.json")
    with open(work / "data/evaluate/predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == report["num_pairs"] == 30 and report["split"] == "dev"
    assert {r["actual"] for r in rows} | {r["predicted"] for r in rows} <= set(fake.LABELS)
    hits = sum(r["actual"] == r["predicted"] for r in rows)
    assert report["accuracy"] == pytest.approx(hits / 30)
    assert report["accuracy"] == pytest.approx(finetune["dev_accuracy"], abs=1e-4)  # same split
    assert set(report["per_class"]) == set(fake.LABELS) and len(report["confusion_matrix"]) == 3
    assert {"precision", "recall", "f1", "support"} <= set(report["per_class"]["neutral"])
    actual = [fake.LABELS.index(r["actual"]) for r in rows]
    assert actual == np.load(work / "data/make_snli/dev/labels.npy").tolist()  # file order


SPEED = ("pairs_per_sec", "examples_per_sec", "train_seconds", "eval_seconds", "threads",
         "threads_mean")  # fmt: skip


def outcome(root: Path, name: str) -> tuple[str, dict, str]:
    """(checkpoint SHA-1, metrics without the speed figures, the DVCLive metrics) of a run."""
    metrics = artifacts.read_json(root / f"metrics/{name}.json")
    live = (root / f"metrics/{name}_live/metrics.json").read_text()
    checkpoint = artifacts.sha1_of_file(root / f"data/{name}/model.safetensors")
    return checkpoint, {k: v for k, v in metrics.items() if k not in SPEED}, live


def test_pretraining_gives_the_same_bytes_twice_and_at_1_and_2_threads(work, stage, fake):
    runs = []
    for threads in ("2", "2", "1"):
        stage("pretrain").main([*pretrain_args(work), "--threads", threads])
        runs.append(outcome(work, "pretrain"))
    assert runs[0] == runs[1] == runs[2]


def test_finetuning_gives_the_same_bytes_twice_and_at_1_and_2_threads(work, stage, fake):
    """With dropout on, as `dvc repro` runs it."""
    pretrained = fake.bert(
        work / "bert/model.safetensors", cfg=config.ModelConfig(24, 48, 2, 2, 0.1, 40)
    ).parent
    runs = []
    for threads in ("2", "2", "1"):
        stage("finetune").main([*finetune_args(work, pretrained), "--threads", threads])
        runs.append(outcome(work, "finetune"))
    assert runs[0] == runs[1] == runs[2]


def test_bf16_training_gives_the_same_bytes_twice_and_evaluate_follows_its_checkpoint(
    work, stage, fake, monkeypatch, caplog
):
    """precision bf16 (allowed on any CPU here, as CI's may lack bf16 units): two runs of each
    training stage at 2 threads give the same bytes, not fp32's; the metrics and checkpoints
    record bf16, and evaluate runs the classifier in it."""
    monkeypatch.setenv(runtime.ANY_CPU_BF16, "1")
    runs = {}
    for name, precision in (("fp32", "fp32"), ("bf16", "bf16"), ("bf16 again", "bf16")):
        params = training_params(pretrain_steps=4, finetune_epochs=1, precision=precision)
        (work / "params.yaml").write_text(
            yaml.safe_dump({**params, "evaluate": PARAMS["evaluate"]})
        )
        stage("pretrain").main([*pretrain_args(work), "--threads", "2"])
        stage("finetune").main([*finetune_args(work, work / "data/pretrain"), "--threads", "2"])
        runs[name] = (outcome(work, "pretrain"), outcome(work, "finetune"))
    assert runs["bf16"] == runs["bf16 again"] and runs["bf16"][0][0] != runs["fp32"][0][0]
    assert runs["bf16"][0][1]["precision"] == runs["bf16"][1][1]["precision"] == "bf16"
    assert runs["fp32"][1][1]["precision"] == "fp32"
    model_path = work / "data/finetune/model.safetensors"
    assert routes.load_classifier(model_path)[1]["precision"] == "bf16"
    caplog.clear()
    with caplog.at_level("INFO"):
        stage("evaluate").main([
            "--model", str(model_path), "--snli", str(work / "data/make_snli"),
            "--metrics", str(work / "metrics/evaluate.json"),
            "--predictions", str(work / "data/evaluate/predictions.csv"), "--device", "cpu",
        ])  # fmt: skip
    assert any("running on cpu in bf16" in r.getMessage() for r in caplog.records)


def test_auto_threads_beside_a_busy_process_change_no_bit(work, stage, fake, busy_core,
                                                           monkeypatch):  # fmt: skip
    """auto drops to 1 thread while another process keeps a core busy: the same outputs as a
    fixed count (1 thread, which runs at full speed beside the busy core; the byte tests above
    show that 1 and 2 threads agree)."""
    params = {**PARAMS, "pretrain": {**PARAMS["pretrain"], "num_steps": 40}}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setattr(runtime.Threads, "WINDOW", 0.05)
    torch.set_num_threads(2)  # the one_thread fixture restores its own count
    stage("pretrain").main([*pretrain_args(work), "--threads", "auto"])
    auto = artifacts.read_json(work / "metrics/pretrain.json")
    assert auto["threads"] == "auto" and auto["threads_mean"] < 1.5
    first = outcome(work, "pretrain")
    stage("pretrain").main([*pretrain_args(work), "--threads", "1"])
    assert outcome(work, "pretrain") == first


def test_pretrain_refuses_examples_longer_than_the_positional_embedding(work, stage, fake):
    params = {**PARAMS, "model": {**PARAMS["model"], "max_position": 16}}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(UserError, match=r"raise model\.max_position"):
        stage("pretrain").main(pretrain_args(work))
    assert not (work / "data/pretrain").exists()


def test_finetune_refuses_snli_from_another_vocabulary(work, stage, fake):
    ckpt = fake.bert(work / "bert/model.safetensors", sha="f" * 40).parent
    with pytest.raises(UserError, match="vocabulary"):
        stage("finetune").main(finetune_args(work, ckpt))
    assert not (work / "data/finetune").exists() and not (work / "metrics").exists()


def test_finetune_refuses_pairs_longer_than_the_positional_embedding(work, stage, fake):
    cfg = config.ModelConfig(24, 48, 2, 2, 0.1, max_position=16)
    ckpt = fake.bert(work / "bert/model.safetensors", cfg=cfg).parent
    with pytest.raises(UserError, match="exceeds the positional embedding"):
        stage("finetune").main(finetune_args(work, ckpt))


def torchrun(root: Path, script: str, args: list[str]) -> str:
    """Run a stage in two gloo processes; return its stderr."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
        str(ROOT / "stages" / script), *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


# Attention's key bias adds the same q·b to every score of a query, which the softmax ignores:
# its gradient is 0 but for rounding, and Adam, which divides by the gradient's size, turns the
# rounding into steps of up to lr. Its values are noise in both runs, and change no output.
ROUNDING_ONLY = "attention.W_k.bias"


def encodings(checkpoint: Path, examples: Path) -> torch.Tensor:
    """What a saved model's encoder computes for every example of a make_examples folder."""
    ex, _ = batches.load_examples(examples)
    inputs = [torch.from_numpy(ex[k].astype(np.int64)) for k in ("token_ids", "segments",
                                                                 "valid_lens")]  # fmt: skip
    _, meta = artifacts.load_checkpoint(checkpoint)
    load = checkpoints.load_bert if meta["kind"] == "bert" else routes.load_classifier
    model, _ = load(checkpoint)
    with torch.no_grad():
        return model.eval().encoder(*inputs)  # (B, T, H)


def assert_same_training(one: Path, two: Path, stage: str, curves: list[str], fake) -> None:
    """One process and two ranks: same steps, losses and figures (1e-5 relative), same weights."""
    single = artifacts.read_json(one / f"metrics/{stage}.json")
    double = artifacts.read_json(two / f"metrics/{stage}.json")
    assert (single["world_size"], double["world_size"]) == (1, 2)
    assert single["num_steps"] == double["num_steps"]
    for name in curves:  # every step's (or epoch's) figures, summed over the ranks
        a = fake.curve(one / f"metrics/{stage}_live", name)
        b = fake.curve(two / f"metrics/{stage}_live", name)
        assert a[:, 0].tolist() == b[:, 0].tolist(), name  # the same steps
        np.testing.assert_allclose(b[:, 1], a[:, 1], rtol=1e-5, atol=1e-7, err_msg=name)
    saved = one / f"data/{stage}/model.safetensors", two / f"data/{stage}/model.safetensors"
    (weights, _), (shared, _) = map(artifacts.load_checkpoint, saved)
    assert weights.keys() == shared.keys()
    for key, value in weights.items():
        if not key.endswith(ROUNDING_ONLY):
            torch.testing.assert_close(shared[key], value, rtol=1e-5, atol=1e-5, msg=key)
    a, b = (encodings(path, one / "data/make_examples") for path in saved)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)  # key biases included


def test_two_gloo_processes_train_as_one_process_does(tmp_path, monkeypatch, stage, fake):
    """torchrun with 2 ranks computes what one process computes (dropout 0, so no masks differ;
    the MLM masks are dynamic: each rank masks its members as one process does).

    The last batch of every epoch has one member: rank 1 stands in with weight 0, and the batch
    still counts (the losses are means over the whole batch, summed over the ranks).
    """
    dynamic = {"num_steps": 9, "masking": "dynamic"}
    params = {**PARAMS, "model": {**PARAMS["model"], "dropout": 0.0},
              "pretrain": {**PARAMS["pretrain"], **dynamic}}  # fmt: skip
    bert = fake.bert(tmp_path / "bert/model.safetensors").parent  # dropout 0
    one, two = tmp_path / "one", tmp_path / "two"
    for root in (one, two):
        fake.examples(root / "data/make_examples", n=129)  # batches of 64, 64, 1: three epochs
        fake.corpus(root / "data/tokenize_wikitext")
        # train: 32, 32, 32, 1 per epoch; dev: 32, 1 (rank 1 stands in for the last pair)
        fake.snli(root / "data/make_snli", {"train": 97, "test": 40, "dev": 33})
        (root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(one)

    stage("pretrain").main(pretrain_args(one))
    log = torchrun(two, "pretrain.py", pretrain_args(two))
    assert log.count("wrote ") == 1  # only rank 0 writes
    saved = one, two
    assert artifacts.read_json(two / "metrics/pretrain.json")["num_steps"] == 9
    held_out = ["heldout/mlm_loss", "heldout/masked_mlm_accuracy", "heldout/nsp_loss"]
    assert_same_training(one, two, "pretrain", [*pretrain.CURVES, *held_out], fake)
    single, double = (artifacts.read_json(r / "metrics/pretrain.json")["heldout"] for r in saved)
    assert double.pop("reference") == single.pop("reference")  # rank 0 evaluates, on all of them
    assert double == pytest.approx(single, rel=1e-5)

    stage("finetune").main(finetune_args(one, bert))
    log = torchrun(two, "finetune.py", finetune_args(two, bert))
    assert log.count("wrote ") == 1
    assert artifacts.read_json(two / "metrics/finetune.json")["num_steps"] == 2 * 4
    epochs = [f"epoch/{k}" for k in ("loss", "train_accuracy", "dev_accuracy", "test_accuracy")]
    assert_same_training(one, two, "finetune", [*finetune.CURVES, *epochs], fake)
    routes.load_classifier(two / "data/finetune/model.safetensors")
    assert sorted(p.name for p in (two / "data").iterdir()) == [
        "finetune", "make_examples", "make_snli", "pretrain", "tokenize_wikitext",
    ]  # fmt: skip
