"""Resume after kill -9: a training stage killed mid-run and run again ends with the same bytes.

Each stage script runs as a real subprocess with dropout on (and pretraining with dynamic MLM
masks) and a resume checkpoint every 2 steps. The test reads its log and sends SIGKILL once it
has saved a checkpoint at or after a kill step drawn by a seeded generator; the rerun must say
where it resumes from and finish with the weights, metrics (wall-clock figures aside) and
DVCLive files of an uninterrupted run. A leftover checkpoint of other params must be ignored,
not resumed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import training_params

from bertpipe import config
from bertpipe.resume import Resume, TrainState
from bertpipe.runtime import CPU

ROOT = Path(__file__).resolve().parents[1]
EVERY = 2  # --checkpoint-every
# speed: differ from run to run
WALL_CLOCK = {"pairs_per_sec", "examples_per_sec", "train_seconds", "eval_seconds", "threads_mean"}
SAVED = re.compile(r"saved a resume checkpoint at step (\d+)")
RESUMED = re.compile(r"resuming from step (\d+)")
# dropout on, controls on; MLM masks drawn anew each epoch (30 epochs of 4 steps)
PARAMS = training_params(pretrain_steps=120, finetune_epochs=4)
PARAMS["pretrain"]["masking"] = "dynamic"
TRAIN_PAIRS = 900  # 29 fine-tuning steps per epoch (28 of 32 pairs, then 4)
STEPS_PER_EPOCH = -(-TRAIN_PAIRS // PARAMS["finetune"]["batch_size"])
# Kill steps, drawn once from a seeded generator: pretraining in its first third, fine-tuning in
# its second epoch of four, after the first epoch's results are in (an epoch's last step never
# checkpoints: its results are not logged yet). Both leave 70+ steps for the kill to land.
DRAW = random.Random(8)
KILL = {
    "pretrain": DRAW.randrange(EVERY, 40, EVERY),
    "finetune": DRAW.randrange(STEPS_PER_EPOCH + 1, STEPS_PER_EPOCH + 16, EVERY),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, fake) -> Path:
    """Both stages' inputs: examples, corpus, SNLI and a BERT with dropout, outside any run."""
    folder = tmp_path_factory.mktemp("inputs")
    fake.examples(folder / "make_examples", n=200)
    fake.corpus(folder / "tokenize_wikitext")
    fake.snli(folder / "make_snli", {"train": TRAIN_PAIRS, "test": 60, "dev": 60})
    bert = config.ModelConfig(**PARAMS["model"])
    fake.bert(folder / "bert/model.safetensors", cfg=bert)
    return folder


def command(stage: str, inputs: Path, run: Path) -> list[str]:
    """The stage script's command line: inputs shared by all runs, outputs inside `run`."""
    if stage == "pretrain":
        reads = ["--examples", str(inputs / "make_examples"), "--corpus",
                 str(inputs / "tokenize_wikitext")]  # fmt: skip
    else:
        reads = ["--pretrained", str(inputs / "bert"), "--snli",
                 str(inputs / "make_snli")]  # fmt: skip
    return [
        sys.executable, str(ROOT / "stages" / f"{stage}.py"), "--params", str(run / "params.yaml"),
        *reads, "--out", str(run / "data" / stage), "--metrics", str(run / f"{stage}.json"),
        "--live", str(run / f"{stage}_live"), "--device", "cpu", "--workers", "0",
        "--checkpoint-every", str(EVERY),
    ]  # fmt: skip


def prepared(run: Path, params: dict = PARAMS) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "params.yaml").write_text(yaml.safe_dump(params))
    return run


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_to_end(stage: str, inputs: Path, run: Path) -> str:
    """Run the stage to completion; return its log (stderr)."""
    done = subprocess.run(command(stage, inputs, run), env=ENV, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def run_and_kill(stage: str, inputs: Path, run: Path, at: int) -> int:
    """Start the stage; SIGKILL it once it logs a checkpoint at step `at` or later.

    Returns the step of the checkpoint left on disk (a save may finish between the log line and
    the kill landing, so it is read from the file).
    """
    kill_after_checkpoint(command(stage, inputs, run), at)
    assert not (run / "data" / stage).exists()  # killed before writing its output
    blob = torch.load(resume_folder(run, stage) / "rank0.pt", map_location="cpu",
                      weights_only=True)  # fmt: skip
    return int(blob["step"])


def kill_after_checkpoint(argv: list[str], at: int) -> None:
    """Run a training stage's command line; SIGKILL it once it logs a checkpoint at step `at` or
    later (the hf_bert route's test uses it too)."""
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        for line in proc.stderr:
            saved = SAVED.search(line)
            if saved and int(saved[1]) >= at:
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.stderr.close()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"{argv[1]} ended before step {at}"


def resume_folder(run: Path, stage: str) -> Path:
    return run / "data" / f".{stage}.resume"


def results(run: Path, stage: str) -> dict:
    """What a run wrote: the weights' bytes, the metrics but wall-clock, every DVCLive file."""
    metrics = json.loads((run / f"{stage}.json").read_text())
    live = run / f"{stage}_live"
    files = sorted(p for p in live.rglob("*") if p.is_file())
    return {
        "model": (run / "data" / stage / "model.safetensors").read_bytes(),
        "metrics": {k: v for k, v in metrics.items() if k not in WALL_CLOCK},
        "live": {str(p.relative_to(live)): p.read_bytes() for p in files},
    }


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory) -> dict:
    """Each stage run once to the end with PARAMS, never killed: what every test must match."""
    found = {}
    for stage in ("pretrain", "finetune"):
        run = prepared(tmp_path_factory.mktemp(f"uninterrupted_{stage}"))
        log = run_to_end(stage, inputs, run)
        assert "resuming" not in log and not resume_folder(run, stage).exists()
        found[stage] = results(run, stage)
    return found


def assert_same(result: dict, expected: dict) -> None:
    assert result["metrics"] == expected["metrics"]
    assert result["live"].keys() == expected["live"].keys()
    for name, data in expected["live"].items():
        assert result["live"][name] == data, name
    assert result["model"] == expected["model"]  # byte for byte


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_a_run_killed_mid_training_resumes_to_the_bytes_of_an_uninterrupted_one(
    stage, inputs, uninterrupted, tmp_path
):
    run = prepared(tmp_path)
    kill_at = KILL[stage]
    step = run_and_kill(stage, inputs, run, kill_at)
    epochs = PARAMS["finetune"]["num_epochs"]
    total = PARAMS["pretrain"]["num_steps"] if stage == "pretrain" else epochs * STEPS_PER_EPOCH
    assert kill_at <= step < total and step % EVERY == 0
    if stage == "finetune":
        assert step > STEPS_PER_EPOCH  # the first epoch's results come from the checkpoint
        assert "plots/metrics/epoch/dev_accuracy.tsv" in uninterrupted[stage]["live"]
    else:  # so do the held-out figures of the evaluations before the kill
        assert step > PARAMS["pretrain"]["eval_every"]
        assert "plots/metrics/heldout/mlm_loss.tsv" in uninterrupted[stage]["live"]

    log = run_to_end(stage, inputs, run)
    assert [int(k) for k in RESUMED.findall(log)] == [step], log[-3000:]
    assert_same(results(run, stage), uninterrupted[stage])
    assert not resume_folder(run, stage).exists()  # removed once the outputs are written


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_a_checkpoint_of_other_params_is_not_resumed(stage, inputs, uninterrupted, tmp_path):
    other = {**PARAMS, stage: {**PARAMS[stage], "lr": PARAMS[stage]["lr"] / 2}}
    run = prepared(tmp_path, other)
    run_and_kill(stage, inputs, run, KILL[stage])

    prepared(run, PARAMS)  # the params change; the other params' checkpoint is still there
    log = run_to_end(stage, inputs, run)
    assert "starting afresh" in log and "resuming" not in log
    assert_same(results(run, stage), uninterrupted[stage])
    assert not resume_folder(run, stage).exists()


def test_a_checkpoint_of_another_number_of_processes_is_not_resumed(tmp_path, caplog):
    """Dropout masks differ per rank: rank 0 of a torchrun job must not hand on to one process."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    resume = Resume(tmp_path / ".pretrain.resume", "f" * 40, EVERY)
    state = TrainState(step=4, history=[[1.0, 2.0]] * 4)
    caplog.set_level(logging.INFO, logger="bertpipe.resume")

    resume.save(state, model, opt, schedule, CPU)  # one process: resumed by one process
    assert resume.load(model, opt, schedule, CPU) == state
    # rank 0 of two (saving takes no collective), then one process
    resume.save(state, model, opt, schedule, dataclasses.replace(CPU, world_size=2))
    assert resume.load(model, opt, schedule, CPU) is None
    assert "this run has 1: starting afresh" in caplog.text
    assert not (resume.folder / "rank0.pt").exists()
