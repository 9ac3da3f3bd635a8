"""Tests for the hf_bert route's model side (bertpipe.hf_model, routes, the finetune stage on it).

The tiny Hub-layout BERT (`tiny_hf_bert`) is fine-tuned by the real finetune stage on SNLI pairs
that the real make_snli stage encoded with its tokenizer. Shown: the fine-tuned classifier,
after a checkpoint round trip and run on length-bucketed batches padded to their longest pair,
gives the logits of transformers' own `BertForSequenceClassification` holding the same weights,
run on each pair alone as the tokenizer encodes it (no padding); the stage gives the same bytes
twice; a run killed mid-training resumes to the bytes of one that was not; folders that do not
fit are refused in one line; and the other routes never import `transformers`.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_resume import ENV, kill_after_checkpoint
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel

from bertpipe import __main__ as cli_main
from bertpipe import artifacts, batches, checkpoints, hf_bert, hf_model, routes, synthetic, use
from bertpipe.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"train": 240, "dev": 24, "test": 40}
MAX_LEN = 24  # short enough that some generated pairs are truncated
PARAMS = {
    "make_snli": {"max_len": MAX_LEN},
    # dropout on (the tiny BERT's config: 0.1); 15 steps per epoch
    "finetune": {"pretrained": "hf_bert/tiny", "batch_size": 16, "lr": 1.0e-3, "num_epochs": 3,
                 "seed": 0, "warmup_fraction": 0.1, "lr_schedule": "linear",
                 "weight_decay": 0.01, "grad_clip": 1.0, "precision": "fp32"},
}  # fmt: skip
STEPS_PER_EPOCH = SIZES["train"] // 16
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
WALL_CLOCK = {"examples_per_sec", "train_seconds", "threads_mean"}


def pairs_of(rows: list[list[str]]) -> list[tuple[str, str]]:
    """The labelled (sentence1, sentence2) pairs of SNLI rows, in file order: make_snli's."""
    return [(r[5], r[6]) for r in rows[1:] if r[0] != "-"]


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_hf_bert, stage) -> Path:
    """params.yaml, SNLI tables, and make_snli's output for the tiny BERT's tokenizer."""
    root = tmp_path_factory.mktemp("hf_route")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    tables = root / "tables"
    tables.mkdir()
    for k, (split, n) in enumerate(SIZES.items()):
        rows = synthetic.snli_rows(n, seed=100 * (k + 1))
        (tables / f"snli_1.0_{split}.txt").write_text("".join("\t".join(r) + "\n" for r in rows))
    stage("make_snli").main([
        "--params", str(root / "params.yaml"), "--tables", str(tables),
        "--pretrained", str(tiny_hf_bert), "--out", str(root / "make_snli"),
        "--metrics", str(root / "make_snli.json"), "--workers", "0",
    ])  # fmt: skip
    return root


def finetune_argv(work: Path, pretrained: Path, run: Path) -> list[str]:
    return [
        "--params", str(work / "params.yaml"), "--pretrained", str(pretrained),
        "--snli", str(work / "make_snli"), "--out", str(run / "finetune"),
        "--metrics", str(run / "finetune.json"), "--live", str(run / "finetune_live"),
        "--device", "cpu", "--threads", "1",
    ]  # fmt: skip


def results(run: Path) -> dict:
    """What a run wrote: the weights' bytes, the metrics but wall-clock, every DVCLive file."""
    metrics = json.loads((run / "finetune.json").read_text())
    live = run / "finetune_live"
    return {
        "model": (run / "finetune" / "model.safetensors").read_bytes(),
        "metrics": {k: v for k, v in metrics.items() if k not in WALL_CLOCK},
        "live": {str(p.relative_to(live)): p.read_bytes() for p in sorted(live.rglob("*"))
                 if p.is_file()},
    }  # fmt: skip


@pytest.fixture(scope="module")
def finetuned(work, tiny_hf_bert, stage) -> Path:
    """One uninterrupted fine-tuning run on the hf_bert route; its folder."""
    run = work / "run"
    stage("finetune").main(finetune_argv(work, tiny_hf_bert, run))
    return run


def test_the_classifier_gives_bert_for_sequence_classifications_logits_on_each_pair_alone(
    work, finetuned, tiny_hf_bert
):
    model, meta = routes.load_classifier(finetuned / "finetune" / "model.safetensors")
    assert isinstance(model, hf_model.HFClassifier)
    assert checkpoints.is_transformers(meta) and meta["max_len"] == MAX_LEN
    assert meta["vocab_sha1"] == hf_bert.tokenizer_sha1(tiny_hf_bert)
    assert meta["labels"] == list(batches.load_snli(work / "make_snli")["labels"])
    model.eval()
    pretrained = BertModel.from_pretrained(tiny_hf_bert).state_dict()
    tuned = model.bert.state_dict()
    assert not torch.equal(tuned["pooler.dense.weight"], pretrained["pooler.dense.weight"])

    # ours: the test split in length-bucketed batches, each padded to its longest pair
    test = batches.load_snli_split(work / "make_snli", "test")
    lengths = batches.snli_lengths(test)
    plan = batches.length_buckets(lengths, 8, torch.Generator().manual_seed(0))
    assert any(len(set(lengths[idx])) > 1 for idx in plan)  # some pairs are padded
    ours = torch.empty(len(lengths), 3)
    with torch.no_grad():
        for idx in plan:
            b = batches.collate_snli(test, idx)
            ours[b["index"]] = model(b["tokens"], b["segments"], b["valid_lens"])

    # transformers': the same weights in BertForSequenceClassification, one pair at a time
    reference = BertForSequenceClassification(BertConfig(**meta["model"], num_labels=3)).eval()
    reference.bert.load_state_dict(tuned)
    reference.classifier.load_state_dict(model.output.state_dict())
    tokenizer = hf_bert.load_tokenizer(tiny_hf_bert)
    rows = synthetic.snli_rows(SIZES["test"], seed=300)
    pairs = pairs_of(rows)
    assert len(pairs) == len(lengths)
    with torch.no_grad():
        for i, (premise, hypothesis) in enumerate(pairs):
            alone = tokenizer(premise, hypothesis, truncation="longest_first",
                              max_length=MAX_LEN, return_tensors="pt")  # fmt: skip
            assert alone["input_ids"].shape[1] == lengths[i]
            expected = reference(**alone).logits[0]
            assert torch.allclose(ours[i], expected, atol=1e-5), (i, ours[i], expected)
    assert (lengths == MAX_LEN).any()  # some were truncated


def test_the_hf_route_gives_the_same_bytes_twice_and_auto_keeps_one_thread_count(
    work, finetuned, tiny_hf_bert, stage
):
    """transformers' kernels give other bits at 1 and 2 threads (README), so on this route
    `--threads auto` runs at the count it starts with (1 here, `one_thread`), never switching:
    the bytes of `--threads 1`."""
    again = work / "again"
    stage("finetune").main([*finetune_argv(work, tiny_hf_bert, again), "--threads", "auto"])
    first, second = results(finetuned), results(again)
    assert first == second and second["metrics"]["threads"] == 1
    assert first["metrics"]["num_steps"] == 3 * STEPS_PER_EPOCH
    assert "plots/metrics/epoch/dev_accuracy.tsv" in first["live"]


def test_a_killed_run_on_the_hf_route_resumes_to_the_bytes_of_an_uninterrupted_one(
    work, finetuned, tiny_hf_bert, stage, caplog
):
    """Killed (SIGKILL) in a process of its own; resumed in this one, at the same 1 thread."""
    run = work / "killed"
    argv = [*finetune_argv(work, tiny_hf_bert, run), "--checkpoint-every", "2"]
    script = [sys.executable, str(ROOT / "stages" / "finetune.py")]
    kill_after_checkpoint([*script, *argv], STEPS_PER_EPOCH + 3)  # epoch 2: epoch 1's results in
    assert not (run / "finetune").exists()

    with caplog.at_level(logging.INFO, logger="bertpipe.resume"):
        stage("finetune").main(argv)
    assert "resuming from step" in caplog.text
    assert results(run) == results(finetuned)


def test_folders_that_do_not_fit_are_refused_in_one_line(tmp_path, tiny_hf_bert):
    """No pooler (BertForMaskedLM's weights): no fine-tuning; no MLM head: no fill-mask; weights
    of other shapes than the config, or no safetensors: neither."""
    mlm_only = tmp_path / "mlm_only"
    BertForMaskedLM.from_pretrained(tiny_hf_bert).save_pretrained(mlm_only)
    with pytest.raises(UserError, match=r"lack pooler\.dense\.bias, pooler\.dense\.weight;"):
        hf_model.load_bert(mlm_only)
    hf_model.load_mlm(mlm_only)  # what it has: encoder and MLM head

    encoder_only = tmp_path / "encoder_only"
    BertModel.from_pretrained(tiny_hf_bert).save_pretrained(encoder_only)
    with pytest.raises(UserError, match="has no MLM head"):
        hf_model.load_mlm(encoder_only)

    config = json.loads((encoder_only / "config.json").read_text())
    (encoder_only / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    with pytest.raises(UserError, match=r"other shapes than its config.json says \(encoder"):
        hf_model.load_bert(encoder_only)

    (encoder_only / "model.safetensors").unlink()
    with pytest.raises(UserError, match="safetensors weights only"):
        hf_model.load_bert(encoder_only)
    with pytest.raises(UserError, match="a file; pass the folder of the model"):
        routes.load_pretrained(mlm_only / "model.safetensors")


def test_the_other_routes_never_import_transformers(tmp_path, fake):
    """Our own model through every module the finetune and evaluate stages and `bertpipe` use,
    loaded by `routes`, and `bertpipe predict` (a classifier fine-tuned from it), `encode` and
    `fill-mask` on it: `transformers` stays out of sys.modules."""
    ckpt = fake.bert(tmp_path / "pretrain" / "model.safetensors")
    vocab = fake.vocab(ckpt.parent / "vocab.json")
    classifier = tmp_path / "finetune" / "model.safetensors"
    classifier.parent.mkdir()
    code = f"""
import sys, runpy
from bertpipe import __main__, checkpoints, evaluate, finetune, routes, use
for name in ("finetune", "evaluate"):
    runpy.run_path({str(ROOT / "stages")!r} + f"/{{name}}.py", run_name="not_main")
bert, meta = routes.load_pretrained({str(ckpt.parent)!r})
model = routes.new_classifier(bert, meta, 3)
header = checkpoints.classifier_meta(meta, {fake.LABELS!r}, 12, "fp32")
checkpoints.save({str(classifier)!r}, model, header)
__main__.main(["predict", "--model", {str(classifier)!r}, "--vocab", {str(vocab)!r}, "w5 w6", "w7"])
__main__.main(["encode", "--model", {str(ckpt.parent)!r}, "w5 w6"])
__main__.main(["fill-mask", "--model", {str(ckpt.parent)!r}, "w5 <mask>"])
print(sorted(m for m in sys.modules if m.split(".")[0] == "transformers"))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "[]" and "<mask> at position 2:" in done.stdout
    assert "w5 w6 | w7" in done.stdout  # predict's table ran


def test_a_path_meant_as_an_hf_bert_folder_says_what_to_pass_or_run(tmp_path, tiny_hf_bert):
    """Not this pipeline's checkpoint errors ('no such checkpoint; run the pretrain stage',
    "expected a 'bert' checkpoint, found 'None'"): an unbuilt data/hf_bert/<name>, given as the
    folder fine-tuning starts from or to encode / fill-mask, and a file inside a built one."""
    unbuilt = tmp_path / "data" / "hf_bert" / "tiny"
    complaint = r"hf_bert/tiny: no hf_bert model there \(no config\.json\); dvc repro hf_bert@tiny"
    with pytest.raises(UserError, match=complaint):
        routes.load_pretrained(unbuilt)
    for model in (unbuilt, unbuilt / "model.safetensors"):
        with pytest.raises(UserError, match=complaint):
            use.pretrained_paths(model, None)
    weights = tiny_hf_bert / "model.safetensors"
    with pytest.raises(UserError, match=r"a file of an hf_bert folder; pass the folder, .*/tiny$"):
        use.pretrained_paths(weights, None)


def test_checkpoint_headers_rebuild_the_classifier_without_the_folder(finetuned, tmp_path):
    """The header holds the BertConfig (not where the folder was), so the checkpoint alone
    rebuilds the model: here from a copy elsewhere."""
    copy = tmp_path / "elsewhere.safetensors"
    copy.write_bytes((finetuned / "finetune" / "model.safetensors").read_bytes())
    _, meta = artifacts.load_checkpoint(copy)
    assert "_name_or_path" not in meta["model"] and meta["model"]["model_type"] == "bert"
    model, _ = routes.load_classifier(copy)
    assert model.bert.config.max_position_embeddings == checkpoints.max_position(meta) == 128


def bertpipe(capsys, *argv: str | Path) -> str:
    """`bertpipe ...`'s standard output."""
    cli_main.main([str(a) for a in argv])
    return capsys.readouterr().out


def test_predict_gives_the_classifiers_probabilities_with_the_folders_tokenizer(
    work, finetuned, tiny_hf_bert, tmp_path, capsys
):
    """Raw text through the tokenizer, truncated to the recorded max_len, as make_snli did."""
    ckpt = finetuned / "finetune" / "model.safetensors"
    model, meta = routes.load_classifier(ckpt)
    pairs = pairs_of(synthetic.snli_rows(SIZES["test"], seed=300))[:4]
    lines = [json.dumps({"premise": p, "hypothesis": h}) for p, h in pairs]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    out = bertpipe(capsys, "predict", "--model", ckpt, "--vocab", tiny_hf_bert,
                   "--file", tmp_path / "pairs.jsonl", "--format", "jsonl")  # fmt: skip
    tokenizer = hf_bert.load_tokenizer(tiny_hf_bert)
    for line, (premise, hypothesis) in zip(out.splitlines(), pairs, strict=True):
        alone = tokenizer(premise, hypothesis, truncation="longest_first", max_length=MAX_LEN,
                          return_tensors="pt")  # fmt: skip
        with torch.no_grad():
            logits = model.eval()(alone["input_ids"], alone["token_type_ids"],
                                  torch.tensor([alone["input_ids"].shape[1]]))  # fmt: skip
        shown = json.loads(line)["probabilities"]
        assert list(shown) == meta["labels"]
        assert list(shown.values()) == pytest.approx(logits.softmax(-1)[0].tolist(), abs=2e-6)

    other = tmp_path / "other"  # another tokenizer: its ids would mean other tokens
    shutil.copytree(tiny_hf_bert, other)
    (other / "tokenizer.json").write_text((other / "tokenizer.json").read_text() + "\n")
    for vocab, complaint in (
        (other, "not the tokenizer"),
        (other / "tokenizer.json", "not a folder"),
    ):
        with pytest.raises(SystemExit):
            cli_main.main(["predict", "--model", str(ckpt), "--vocab", str(vocab), "a", "b"])
        assert complaint in capsys.readouterr().err


def test_encode_gives_the_hub_berts_vectors_for_its_own_tokens(tiny_hf_bert, capsys):
    out = bertpipe(capsys, "encode", "--model", tiny_hf_bert, "A crane", "is flying", "--dims", "4")
    first, *rows = out.splitlines()
    tokenizer = hf_bert.load_tokenizer(tiny_hf_bert)
    enc = tokenizer("A crane", "is flying", return_tensors="pt")
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    assert [row.split()[1] for row in rows] == tokens and tokens[1] == "a"  # lower-cased
    with torch.no_grad():
        expected = BertModel.from_pretrained(tiny_hf_bert).eval()(**enc).last_hidden_state[0]
    for row, vector in zip(rows, expected, strict=True):
        shown = [float(v) for v in row.rsplit("[", 1)[1].rstrip("]").split(",")]
        assert shown == pytest.approx(vector[:4].tolist(), abs=1e-4)
    assert first == f"encoded shape (1, {len(tokens)}, 32); first 4 of 32 features per token"
    assert "cosine similarity of the two 'crane' vectors" in bertpipe(
        capsys, "encode", "--model", tiny_hf_bert
    )


def test_fill_mask_ranks_first_the_token_a_tiny_hub_bert_was_trained_to_put_there(
    tiny_hf_bert, tmp_path, capsys
):
    """The folder's own MLM head (BertForPreTraining's weights), trained for a few steps to
    put one word at the [MASK] of the demo sentence, then saved as a Hub folder is."""
    tokenizer = hf_bert.load_tokenizer(tiny_hf_bert)
    # a word the generated vocabulary keeps whole (builds can differ: asked, not assumed)
    target = next(w for w in ("man", "dog", "park", "is", "a") if len(tokenizer.tokenize(w)) == 1)
    enc = tokenizer(use.JIM_HENSON, return_tensors="pt")
    labels = torch.where(enc["input_ids"] == tokenizer.mask_token_id,
                         tokenizer.convert_tokens_to_ids(target), -100)  # fmt: skip
    torch.manual_seed(0)
    mlm = hf_model.load_mlm(tiny_hf_bert)
    assert use.fill_mask_hf(mlm, tokenizer, use.JIM_HENSON, 1).guesses[0][0][0] != target
    opt = torch.optim.Adam(mlm.parameters(), lr=1e-2)
    for _ in range(20):
        loss = mlm.train()(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    folder = tmp_path / "trained"
    mlm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    out = bertpipe(capsys, "fill-mask", "--model", folder, "--top-k", "2")  # the default sentence
    sentence, where, *guesses = out.splitlines()
    assert sentence.split() == tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    assert where.startswith("[MASK] at position") and len(guesses) == 2
    assert guesses[0].split()[1] == target
    same = bertpipe(capsys, "fill-mask", "--model", folder, "--top-k", "2",
                    use.JIM_HENSON.replace("[MASK]", "<mask>"))  # fmt: skip
    assert same == out


def test_two_gloo_processes_fine_tune_as_one_process_does(work, tiny_hf_bert, tmp_path, stage):
    """torchrun with 2 ranks on the hf_bert route: the same steps, losses and weights as one
    process (dropout 0 in the folder's config, so no masks differ between the two)."""
    folder = tmp_path / "no_dropout"
    shutil.copytree(tiny_hf_bert, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(cfg))
    params = {**PARAMS, "finetune": {**PARAMS["finetune"], "num_epochs": 1}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    argv = {name: finetune_argv(work, folder, tmp_path / name) for name in ("one", "two")}
    for name in argv:
        argv[name][1] = str(tmp_path / "params.yaml")  # after --params
    stage("finetune").main(argv["one"])  # this process, 1 thread (`one_thread`)
    command = [*TORCHRUN, str(ROOT / "stages/finetune.py"), *argv["two"]]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {n: json.loads((tmp_path / n / "finetune.json").read_text()) for n in argv}
    assert (runs["one"]["world_size"], runs["two"]["world_size"]) == (1, 2)
    for key in ("loss", "train_accuracy", "dev_accuracy", "test_accuracy", "num_steps"):
        assert runs["two"][key] == pytest.approx(runs["one"][key], rel=1e-4), key
    (one, _), (two, _) = (artifacts.load_checkpoint(tmp_path / n / "finetune" / "model.safetensors")
                          for n in ("one", "two"))  # fmt: skip
    assert one.keys() == two.keys()
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-5, atol=1e-5, msg=key)


def test_evaluate_scores_the_hf_classifier_as_finetune_did(work, finetuned, stage):
    """The evaluate stage loads the checkpoint through `routes` and checks it against SNLI's
    tokenizer identity; its test accuracy is the one fine-tuning reported after its last epoch."""
    params = {**PARAMS, "evaluate": {"batch_size": 7, "split": "test"}}
    (work / "evaluate.yaml").write_text(yaml.safe_dump(params))
    stage("evaluate").main([
        "--params", str(work / "evaluate.yaml"), "--snli", str(work / "make_snli"),
        "--model", str(finetuned / "finetune" / "model.safetensors"),
        "--metrics", str(work / "evaluate.json"), "--predictions", str(work / "predictions.csv"),
        "--device", "cpu", "--threads", "1",
    ])  # fmt: skip
    scored = json.loads((work / "evaluate.json").read_text())
    tuned = json.loads((finetuned / "finetune.json").read_text())
    assert scored["num_pairs"] == len(pairs_of(synthetic.snli_rows(SIZES["test"], seed=300)))
    assert scored["accuracy"] == pytest.approx(tuned["test_accuracy"], abs=1e-4)
