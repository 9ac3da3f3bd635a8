"""The whole pipeline through real DVC, on generated archives served from a loopback HTTP server.

One scratch copy of the repository runs `dvc repro` once (module fixture); the tests then read
what DVC reports and check that caching, invalidation, the run cache, resuming a killed stage
and a remote behave as a DVC user expects. A test that changes params takes `restored`, which
puts them back and reruns `dvc repro` (DVC's run cache restores the outputs): every test starts
from the fixture's state, whatever ran before it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from bertpipe import artifacts, routes, scratch, small, synthetic
from bertpipe.config import ModelConfig

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

DATA_STAGES = ["download_wikitext", "download_snli", "tokenize_wikitext", "make_examples",
               "make_snli"]  # fmt: skip
ALL_STAGES = [*DATA_STAGES, "pretrain", "finetune", "evaluate", "baseline"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """What `python -m bertpipe.small` leaves: the whole pipeline run once on small params, in
    a scratch copy of the repository (CI's end-to-end run is this fixture)."""
    workdir = tmp_path_factory.mktemp("workspace")
    with pytest.MonkeyPatch.context() as env:
        # the stages' torch on one thread: 8x faster than two on this project's busy 2-core
        # machine; every DVC run of the module gets the same, so they can be compared
        env.setenv("OMP_NUM_THREADS", "1")
        small.main(["--workdir", str(workdir), "--repo", str(REPO)])
        yield workdir


@pytest.fixture
def restored(workspace):
    """The workspace, brought back to the fixture's state after the test changed params."""
    params = (workspace / "params.yaml").read_text(encoding="utf-8")
    yield workspace
    (workspace / "params.yaml").write_text(params, encoding="utf-8")
    scratch.dvc(workspace, "repro", capture=True)


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def set_param(workdir: Path, section: str, key: str, value: object) -> None:
    path = workdir / "params.yaml"
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def metrics(workdir: Path) -> dict:
    shown = json.loads(scratch.dvc(workdir, "metrics", "show", "--json", capture=True))
    (workspace_metrics,) = shown.values()
    return workspace_metrics["data"]


def test_every_stage_reports_its_metrics(workspace):
    data = metrics(workspace)
    assert sorted(Path(f).stem for f in data) == sorted(ALL_STAGES)
    tokenized = data["metrics/tokenize_wikitext.json"]["data"]
    assert tokenized["num_paragraphs"] > 0 and tokenized["vocab_size"] > 5
    assert data["metrics/make_examples.json"]["data"]["num_examples"] > 0
    assert data["metrics/make_snli.json"]["data"]["test"]["num_pairs"] > 0


def test_learning_happens(workspace):
    data = metrics(workspace)
    pretrain = data["metrics/pretrain.json"]["data"]
    assert pretrain["mlm_loss_last"] < pretrain["mlm_loss"]  # the last step beats the mean
    evaluate = data["metrics/evaluate.json"]["data"]
    assert evaluate["accuracy"] >= 0.6  # three balanced classes: chance is 1/3


def test_plots_come_from_the_training_curves(workspace):
    shown = json.loads(scratch.dvc(workspace, "plots", "show", "--json", capture=True))["data"]
    assert "metrics/pretrain_live/plots/metrics/train/mlm_loss.tsv" in shown
    for split in ("dev", "test"):
        assert f"metrics/finetune_live/plots/metrics/epoch/{split}_accuracy.tsv" in shown
    (confusion,) = shown["confusion"]
    values = confusion["content"]["data"]["values"]
    assert {"actual", "predicted"} <= set(values[0])


def test_a_second_repro_reruns_nothing(workspace):
    assert stages_run(scratch.dvc(workspace, "repro", capture=True)) == []


def snapshot(workdir: Path) -> dict[str, str]:
    """SHA-1 of dvc.lock and of every file under data/ and metrics/."""
    files = [workdir / "dvc.lock"]
    for folder in ("data", "metrics"):
        files += sorted(p for p in (workdir / folder).rglob("*") if p.is_file())
    return {str(p.relative_to(workdir)): hashlib.sha1(p.read_bytes()).hexdigest() for p in files}


def test_a_param_change_reruns_downstream_and_going_back_is_restored_from_the_run_cache(restored):
    """pretrain.seed 0 -> 1 reruns exactly the stages downstream of it (make_snli too: it reads
    the model's folder, for the route's tokenizer, and writes the same bytes); 1 -> 0 runs none:
    DVC's run cache restores the fixture's outputs, byte for byte."""
    workspace = restored
    first = snapshot(workspace)
    model = "data/pretrain/model.safetensors"
    set_param(workspace, "pretrain", "seed", 1)
    diff = json.loads(scratch.dvc(workspace, "params", "diff", "--json", capture=True))
    change = diff["params.yaml"]["pretrain.seed"]
    assert (change["old"], change["new"]) == (0, 1)
    ran = stages_run(scratch.dvc(workspace, "repro", capture=True))
    assert ran == ["pretrain", "make_snli", "finetune", "evaluate"]
    second = snapshot(workspace)
    assert second[model] != first[model]
    snli = [path for path in first if path.startswith("data/make_snli/")]
    assert snli and all(second[path] == first[path] for path in snli)

    set_param(workspace, "pretrain", "seed", 0)  # back to the fixture's run: DVC saved it
    output = scratch.dvc(workspace, "repro", capture=True)
    assert stages_run(output) == []
    for name in ("pretrain", "make_snli", "finetune", "evaluate"):
        assert f"Stage '{name}' is cached - skipping run, checking out outputs" in output
    assert snapshot(workspace) == first  # dvc.lock, outputs, metrics and curves as first run


DVC = [sys.executable, "-m", "dvc"]
SAVED = re.compile(r"saved a resume checkpoint at step (\d+)")
RESUMED = re.compile(r"resuming from step (\d+)")


def dvc_logged(workdir: Path, *args: str) -> tuple[str, str]:
    """Run `dvc <args>`; return (DVC's output, the stages' log), failing with both."""
    env = scratch.dvc_env(workdir)
    done = subprocess.run([*DVC, *args], cwd=workdir, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return done.stdout, done.stderr


def repro_and_kill(workdir: Path, stage: str, at: int) -> int:
    """`dvc repro <stage>`; SIGKILL the stage's process once it saved a checkpoint at step `at`
    or later. Returns the step of the checkpoint left on disk."""
    proc = subprocess.Popen([*DVC, "repro", stage], cwd=workdir, env=scratch.dvc_env(workdir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    killed = []
    for line in proc.stderr:  # the stage's stderr: DVC hands it its own
        saved = SAVED.search(line)
        if saved and int(saved[1]) >= at:
            for child in psutil.Process(proc.pid).children(recursive=True):
                try:
                    command = child.cmdline()
                except psutil.Error:  # a process that has just ended
                    continue
                if f"stages/{stage}.py" in command:  # not the shell that DVC runs it in
                    os.kill(child.pid, signal.SIGKILL)
                    killed.append(child.pid)
            break
    output, log = proc.communicate(timeout=120)
    assert len(killed) == 1, f"the {stage} stage ended before step {at}"
    assert proc.returncode != 0 and f"failed to reproduce '{stage}'" in output + log
    blob = torch.load(workdir / f"data/.{stage}.resume/rank0.pt", weights_only=True)
    return int(blob["step"])


def test_a_killed_repro_resumes_and_locks_what_an_uninterrupted_one_does(restored, monkeypatch):
    workspace = restored
    monkeypatch.setenv("BERTPIPE_CHECKPOINT_EVERY", "2")  # read by the stage, through DVC
    set_param(workspace, "pretrain", "seed", 2)  # a configuration never run: no run cache entry
    set_param(workspace, "pretrain", "num_steps", 60)
    kill_at = random.Random(8).randrange(2, 30, 2)  # of 60 steps
    step = repro_and_kill(workspace, "pretrain", kill_at)
    assert kill_at <= step < 60
    assert not (workspace / "data/pretrain").exists()  # DVC removed it before running the stage

    output, log = dvc_logged(workspace, "repro", "pretrain")
    assert stages_run(output) == ["pretrain"]
    assert [int(k) for k in RESUMED.findall(log)] == [step]
    assert not (workspace / "data/.pretrain.resume").exists()
    resumed = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]["pretrain"]

    output, log = dvc_logged(workspace, "repro", "--force", "--single-item", "pretrain")
    assert stages_run(output) == ["pretrain"] and "resuming" not in log
    uninterrupted = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]["pretrain"]
    # the same deps, params and outputs, curves included; the metrics differ in throughput only
    wall_clock = "metrics/pretrain.json"
    for lock in (resumed, uninterrupted):
        lock["outs"] = [out for out in lock["outs"] if out["path"] != wall_clock]
    assert resumed == uninterrupted


def test_a_clone_pulls_every_output_from_a_remote_and_has_nothing_to_run(workspace, tmp_path):
    store, clone = tmp_path / "store", tmp_path / "clone"
    scratch.dvc(workspace, "remote", "add", "-d", "store", str(store))
    try:
        scratch.dvc(workspace, "push", capture=True)
        git = ["git", "-c", "user.name=bertpipe", "-c", "user.email=bertpipe@localhost"]
        for command in (["add", "-A"], ["commit", "-qm", "results"]):  # dvc.lock, metrics, remote
            subprocess.run(git + command, cwd=workspace, check=True, capture_output=True)
        subprocess.run(["git", "clone", "-q", str(workspace), str(clone)], check=True)
        assert not (clone / "data").exists()  # git holds no output of a cached stage

        scratch.dvc(clone, "pull", capture=True)
        assert json.loads(scratch.dvc(clone, "status", "--json", capture=True)) == {}
        assert stages_run(scratch.dvc(clone, "repro", capture=True)) == []
        assert snapshot(clone) == snapshot(workspace)  # dvc.lock, every output, the metrics
    finally:
        scratch.dvc(workspace, "remote", "remove", "store")


def test_switching_to_d2ls_weights_reruns_exactly_that_route(restored, tmp_path):
    """finetune.pretrained: d2l_bert/<name> puts d2l_bert@<name> in the DAG; the repro runs it,
    make_snli (d2l's vocabulary), finetune and evaluate, and nothing else."""
    workspace = restored
    tokens = json.loads((workspace / "data/tokenize_wikitext/vocab.json").read_text())
    archive = tmp_path / "bert.small.torch.zip"
    synthetic.write_d2l_bert_archive(archive, tokens, ModelConfig(24, 48, 2, 2, 0.0, 64))
    entry = {"mirrors": [str(archive)], "sha1": artifacts.sha1_of_file(archive),
             "num_heads": 2, "dropout": 0.1}  # fmt: skip
    set_param(workspace, "finetune", "pretrained", "d2l_bert/tiny")
    params = yaml.safe_load((workspace / "params.yaml").read_text(encoding="utf-8"))
    params["d2l_bert"] = {"tiny": entry}
    (workspace / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    assert "d2l_bert@tiny" in scratch.dvc(workspace, "dag", capture=True)
    ran = stages_run(scratch.dvc(workspace, "repro", capture=True))
    assert sorted(ran) == ["d2l_bert@tiny", "evaluate", "finetune", "make_snli"]
    snli_meta = json.loads((workspace / "data/make_snli/meta.json").read_text())
    assert snli_meta["pad_id"] == sorted(tokens).index("<pad>") != 1
    _, meta = routes.load_classifier(workspace / "data/finetune/model.safetensors")
    assert meta["vocab_sha1"] == artifacts.sha1_of_file(workspace / "data/d2l_bert/tiny/vocab.json")
    assert metrics(workspace)["metrics/evaluate.json"]["data"]["accuracy"] >= 0.6  # chance: 1/3


def locked(workdir: Path) -> dict:
    """dvc.lock's entry for each stage."""
    return yaml.safe_load((workdir / "dvc.lock").read_text(encoding="utf-8"))["stages"]


def test_switching_to_a_hugging_face_bert_reruns_exactly_that_route(restored, tiny_hf_bert):
    """finetune.pretrained: hf_bert/<name> with a local folder puts hf_bert@<name> -> make_snli
    -> finetune -> evaluate in the DAG; the repro runs those four and nothing else, and going
    back to `pretrain` runs nothing: DVC's run cache restores that route's outputs."""
    from bertpipe import hf_bert

    workspace = restored
    before, before_lock = snapshot(workspace), locked(workspace)
    names = [p.name for p in tiny_hf_bert.iterdir()]
    entry = {"source": str(tiny_hf_bert), "revision": None,
             "sha256": hf_bert.folder_sha256(tiny_hf_bert, names)}  # fmt: skip
    params = yaml.safe_load((workspace / "params.yaml").read_text(encoding="utf-8"))
    pretrain_route = yaml.safe_dump(params)
    params["hf_bert"] = {"tiny": entry}
    params["finetune"].update(pretrained="hf_bert/tiny", num_epochs=1)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    edges = re.findall(r'"(\S+)" -> "(\S+)"', scratch.dvc(workspace, "dag", "--dot", capture=True))
    for edge in [("hf_bert@tiny", "make_snli"), ("make_snli", "finetune"),
                 ("finetune", "evaluate")]:  # fmt: skip
        assert edge in edges
    ran = stages_run(scratch.dvc(workspace, "repro", capture=True))
    assert sorted(ran) == ["evaluate", "finetune", "hf_bert@tiny", "make_snli"]
    snli_meta = json.loads((workspace / "data/make_snli/meta.json").read_text())
    assert snli_meta["vocab_sha1"] == hf_bert.tokenizer_sha1(tiny_hf_bert)
    assert "accuracy" in json.loads((workspace / "metrics/evaluate.json").read_text())

    (workspace / "params.yaml").write_text(pretrain_route, encoding="utf-8")
    assert stages_run(scratch.dvc(workspace, "repro", capture=True)) == []
    lock = locked(workspace)
    assert lock.pop("hf_bert@tiny") and lock == before_lock  # DVC keeps the entry it ran
    now = {k: v for k, v in snapshot(workspace).items() if "hf_bert" not in k}
    assert now.pop("dvc.lock") and before.pop("dvc.lock") and now == before
