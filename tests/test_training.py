"""Tests for bertpipe.training: losses, batching, and short learning runs on generated data.

The helpers `write_examples` and `write_snli` write make_examples / make_snli folders in the
formats spec.md fixes; tests/test_train_stages.py uses them too.
"""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bertpipe import artifacts, config, training
from bertpipe.cli import UserError
from bertpipe.model import BERTClassifier, BERTModel

VOCAB = 37  # 5 special ids, then 32 content ids
CONTENT = np.arange(5, VOCAB)
SHA = "0123456789abcdef0123456789abcdef01234567"
LABELS = ["entailment", "contradiction", "neutral"]
TINY = config.ModelConfig(
    num_hiddens=24, ffn_num_hiddens=48, num_heads=2, num_blks=2, dropout=0.0, max_position=40
)
CPU = training.Runtime(torch.device("cpu"), compile=False, workers=0)


def _run(start: int, n: int) -> list[int]:
    """n consecutive content ids from `start` (wrapping): each is predictable from a neighbour."""
    return [int(CONTENT[(start + i) % len(CONTENT)]) for i in range(n)]


def write_examples(folder: Path, n: int = 384, max_len: int = 20, seed: int = 0) -> Path:
    """A learnable make_examples folder: MLM from neighbours, NSP from continuity."""
    rng = np.random.default_rng(seed)
    P = round(0.15 * max_len)
    arrays = {
        "token_ids": np.full((n, max_len), 1, np.uint16),
        "segments": np.zeros((n, max_len), np.uint8),
        "valid_lens": np.zeros(n, np.int16),
        "pred_positions": np.zeros((n, P), np.int16),
        "mlm_labels": np.zeros((n, P), np.uint16),
        "mlm_weights": np.zeros((n, P), np.uint8),
        "nsp_labels": rng.integers(0, 2, n).astype(np.uint8),
    }
    for i in range(n):
        la, lb = rng.integers(2, 8, size=2)
        start = int(rng.integers(len(CONTENT)))
        b_start = start + la if arrays["nsp_labels"][i] else start + la + int(rng.integers(4, 28))
        tokens = [3, *_run(start, la), 4, *_run(b_start, lb), 4]
        L = len(tokens)
        candidates = [j for j in range(1, L) if tokens[j] != 4]
        k = max(1, min(P, round(0.15 * L)))
        chosen = np.sort(rng.choice(candidates, size=k, replace=False))
        arrays["mlm_labels"][i, :k] = [tokens[j] for j in chosen]
        arrays["pred_positions"][i, :k] = chosen
        arrays["mlm_weights"][i, :k] = 1
        for j in chosen:
            tokens[j] = 2  # <mask>
        arrays["token_ids"][i, :L] = tokens
        arrays["segments"][i, la + 2 : L] = 1
        arrays["valid_lens"][i] = L
    folder.mkdir(parents=True)
    artifacts.save_arrays(folder, arrays)
    meta = {
        "num_examples": n, "max_len": max_len, "max_num_mlm_preds": P, "vocab_size": VOCAB,
        "vocab_sha1": SHA, "pad_id": 1, "mask_id": 2, "cls_id": 3, "sep_id": 4,
        "id_dtype": "uint16",
    }  # fmt: skip
    artifacts.write_json(folder / "meta.json", meta)
    return folder


def snli_arrays(pairs: list[tuple[list[int], list[int]]], labels: np.ndarray) -> dict:
    """make_snli's arrays for (premise ids, hypothesis ids) pairs: `<cls> p <sep> h <sep>`."""
    ids, offsets, starts = [], [0], []
    for p, h in pairs:
        ids += [3, *p, 4, *h, 4]
        offsets.append(len(ids))
        starts.append(len(p) + 2)
    return {
        "token_ids": np.asarray(ids, np.uint16),
        "offsets": np.asarray(offsets, np.int64),
        "segment_starts": np.asarray(starts, np.int16),
        "labels": labels,
    }


def write_snli(folder: Path, sizes: dict[str, int], max_len: int = 24, sha: str = SHA) -> Path:
    """A learnable make_snli folder: the label is which of three marker ids opens the hypothesis."""
    rng = np.random.default_rng(1)
    for split, n in sizes.items():
        labels = rng.integers(0, 3, n).astype(np.uint8)
        pairs = [
            (
                rng.choice(CONTENT[3:], size=int(rng.integers(2, 9))).tolist(),
                [5 + int(label), *rng.choice(CONTENT[3:], size=int(rng.integers(1, 6)))],
            )
            for label in labels
        ]
        arrays = snli_arrays(pairs, labels)
        (folder / split).mkdir(parents=True)
        artifacts.save_arrays(folder / split, arrays)
        counts = {name: int((labels == k).sum()) for k, name in enumerate(LABELS)}
        artifacts.write_json(folder / split / "meta.json", {
            "num_pairs": n, "dropped_no_label": 0, "truncated": 0, "label_counts": counts,
            "max_valid_len": int(np.diff(arrays["offsets"]).max()),
        })  # fmt: skip
    artifacts.write_json(folder / "meta.json", {
        "vocab_size": VOCAB, "vocab_sha1": sha, "max_len": max_len, "splits": list(sizes),
        "labels": LABELS, "id_dtype": "uint16",
    })  # fmt: skip
    return folder


def write_bert(path: Path, cfg: config.ModelConfig = TINY, sha: str = SHA) -> Path:
    """A freshly initialised BERT checkpoint, as the pretrain stage would write it."""
    torch.manual_seed(0)
    model = BERTModel(VOCAB, cfg)
    artifacts.save_checkpoint(path, model.state_dict(), training.bert_meta(cfg, VOCAB, sha))
    return path


def read_curve(live: Path, name: str) -> np.ndarray:
    """(steps, value) rows of a DVCLive TSV."""
    with open(live / "plots" / "metrics" / f"{name}.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    key = name.rsplit("/", 1)[-1]
    return np.array([[float(r["step"]), float(r[key])] for r in rows])


# ----------------------------------------------------------------------------------------------
# Losses


def test_mlm_loss_is_the_weighted_mean_over_real_slots_only():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 11, generator=g)
    labels = torch.randint(0, 11, (3, 4), generator=g)
    weights = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)
    by_hand = [
        -torch.log_softmax(logits[b, p], -1)[labels[b, p]]
        for b in range(3) for p in range(4) if weights[b, p]
    ]  # fmt: skip
    loss = training.mlm_loss(logits, labels, weights)
    torch.testing.assert_close(loss, torch.stack(by_hand).mean(), rtol=1e-6, atol=1e-6)

    pad = weights == 0
    noisy_logits = torch.where(pad[..., None], torch.randn(3, 4, 11, generator=g) * 50, logits)
    noisy_logits[0, 3, 0] = float("inf")  # even a non-finite padding slot changes nothing
    noisy_labels = torch.where(pad, torch.randint(0, 11, (3, 4), generator=g), labels)
    assert training.mlm_loss(noisy_logits, noisy_labels, weights).item() == loss.item()


@pytest.mark.parametrize("block", [3, 8, 1024])  # vocabulary columns per block of logits
def test_linear_cross_entropy_equals_mlm_loss_accuracy_and_their_gradients(monkeypatch, block):
    monkeypatch.setattr(training, "LOGIT_BLOCK", block)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 6, generator=g)
    layer = torch.nn.Linear(6, 11)
    labels = torch.randint(0, 11, (9,), generator=g)
    labels[:3] = torch.tensor([0, 10, 7])  # the first and last columns, inside a block
    weights = torch.rand(9, generator=g) + 0.5  # real slots; any positive weight
    results = []
    for fused in (False, True):
        xg = x.clone().requires_grad_()
        layer.zero_grad()
        if fused:
            loss, acc = training.linear_cross_entropy(xg, layer, labels, weights)
        else:
            logits = layer(xg)
            loss = training.mlm_loss(logits, labels, weights)
            acc = training.mlm_accuracy(logits, labels, weights)
        (3.0 * loss).backward()  # an upstream gradient other than 1
        results.append([loss.detach(), acc, xg.grad, layer.weight.grad, layer.bias.grad])
    for plain, fused in zip(*results, strict=True):
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


def test_linear_cross_entropy_under_autocast_matches_f_linear():
    """Matmuls in the autocast dtype (as F.linear's would be), softmax in float32."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 8, generator=g, requires_grad=True)
    layer = torch.nn.Linear(8, 30)
    labels = torch.randint(0, 30, (16,), generator=g)
    weights = torch.ones(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = training.linear_cross_entropy(x, layer, labels, weights)
        expected = training.mlm_loss(layer(x), labels, weights)
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == torch.float32
    assert layer.weight.grad.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=2e-2)


def test_nsp_loss_and_accuracies():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0]])
    labels = torch.tensor([0, 0, 0])
    by_hand = -torch.log_softmax(logits, -1)[:, 0].mean()
    torch.testing.assert_close(training.nsp_loss(logits, labels), by_hand)
    mlm_logits = F.one_hot(torch.tensor([[1, 2, 0]]), 3).float()  # argmax = 1, 2, 0
    acc = training.mlm_accuracy(mlm_logits, torch.tensor([[1, 0, 2]]), torch.tensor([[1, 1, 0.0]]))
    assert acc.item() == pytest.approx(0.5)  # slot 3 is padding


# ----------------------------------------------------------------------------------------------
# Batching


def test_collate_examples_packs_real_positions_in_order_of_length(tmp_path):
    ex, _ = training.load_examples(write_examples(tmp_path / "ex", n=40, max_len=20))
    idx = np.array([7, 3, 30, 12, 5, 21])
    b = training.collate_examples(ex, idx)
    lens = ex["valid_lens"][idx].astype(int)
    order = np.argsort(lens, kind="stable")
    sorted_idx, sorted_lens = idx[order], lens[order]
    assert b["tokens"].dtype == torch.int64 and b["slot_weights"].dtype == torch.float32
    # every real position once, example by example (shortest first), and nothing else
    pairs = list(zip(sorted_idx, sorted_lens, strict=True))
    tokens = np.concatenate([ex["token_ids"][i, :n] for i, n in pairs])
    segments = np.concatenate([ex["segments"][i, :n] for i, n in pairs])
    assert b["tokens"].tolist() == tokens.tolist() and b["segments"].tolist() == segments.tolist()
    assert b["packing"].valid_lens.tolist() == sorted_lens.tolist()
    assert b["nsp_labels"].tolist() == ex["nsp_labels"][sorted_idx].tolist()
    starts = np.cumsum(sorted_lens) - sorted_lens
    assert b["cls_rows"].tolist() == starts.tolist()
    assert (b["tokens"][b["cls_rows"]] == 3).all()  # <cls>
    # the real slots, in order: their rows hold the predicted positions of their examples
    slots = [(int(s + p), int(y), float(w))
             for i, s in zip(sorted_idx, starts, strict=True)
             for p, y, w in zip(ex["pred_positions"][i], ex["mlm_labels"][i], ex["mlm_weights"][i],
                                strict=True)
             if w > 0]  # fmt: skip
    got = [b["slot_rows"].tolist(), b["slot_labels"].tolist(), b["slot_weights"].tolist()]
    assert list(zip(*got, strict=True)) == slots
    assert len(slots) < ex["mlm_weights"][idx].size  # some slots were padding


def test_collate_snli_builds_cls_p_sep_h_sep_with_segments_and_padding(tmp_path):
    pairs = [([7, 8, 9], [10, 11]), ([12], [13, 14, 15, 16]), ([17, 18], [19])]
    snli = snli_arrays(pairs, np.array([2, 0, 1], np.uint8))
    b = training.collate_snli(snli, np.array([2, 0]))
    assert b["tokens"].tolist() == [[3, 17, 18, 4, 19, 4, 1, 1], [3, 7, 8, 9, 4, 10, 11, 4]]
    assert b["segments"].tolist() == [[0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1]]
    assert b["valid_lens"].tolist() == [6, 8] and b["labels"].tolist() == [1, 2]
    assert b["index"].tolist() == [2, 0] and b["tokens"].dtype == torch.int64


def test_padding_a_batch_to_its_longest_member_does_not_change_predictions(tmp_path):
    snli = training.load_snli_split(write_snli(tmp_path / "snli", {"test": 20}), "test")
    model = BERTClassifier(training.load_bert(write_bert(tmp_path / "bert.safetensors"))[0]).eval()

    def logits(idx: np.ndarray) -> torch.Tensor:
        b = training.collate_snli(snli, idx)
        return model(b["tokens"], b["segments"], b["valid_lens"])

    together = logits(np.arange(20))  # padded to the longest of the 20
    alone = torch.cat([logits(np.array([i])) for i in range(20)])  # no padding at all
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_length_buckets_cover_every_example_once_seeded_and_reshuffled():
    lengths = np.random.default_rng(0).integers(5, 60, 1037)

    def epochs(seed: int) -> list[list[np.ndarray]]:
        gen = torch.Generator().manual_seed(seed)
        return [training.length_buckets(lengths, 16, gen) for _ in range(2)]

    first, second = epochs(3)
    for epoch in (first, second):
        assert np.array_equal(np.sort(np.concatenate(epoch)), np.arange(1037))
        assert sum(len(b) < 16 for b in epoch) == 1  # only one short batch
    assert [b.tolist() for b in epochs(3)[0]] == [b.tolist() for b in first]
    assert [b.tolist() for b in first] != [b.tolist() for b in second]
    spread = np.mean([np.ptp(lengths[b]) for b in first])
    assert spread < 0.25 * np.ptp(lengths)  # similar lengths share a batch: little padding


def test_pretraining_plan_cycles_through_shuffled_epochs():
    plan = training.pretraining_plan(10, 4, 7, torch.Generator().manual_seed(0))
    assert [len(b) for b in plan] == [4, 4, 2, 4, 4, 2, 4]
    assert np.array_equal(np.sort(np.concatenate(plan[:3])), np.arange(10))
    assert np.array_equal(np.sort(np.concatenate(plan[3:6])), np.arange(10))
    assert not np.array_equal(np.concatenate(plan[:3]), np.concatenate(plan[3:6]))


def test_ranks_take_disjoint_slices_of_every_batch():
    plan = [np.arange(8), np.arange(8, 11), np.array([11])]
    rt = [training.Runtime(torch.device("cpu"), False, 0, rank=r, world_size=2) for r in (0, 1)]
    (kept, mine0), (_, mine1) = (training.split_for_rank(plan, r) for r in rt)
    assert len(kept) == 2  # the 1-member batch cannot feed two ranks
    for whole, a, b in zip(kept, mine0, mine1, strict=True):
        assert sorted([*a, *b]) == whole.tolist() and not set(a) & set(b)


def test_dvclive_curves_work_in_a_git_repository_without_commits(tmp_path, monkeypatch):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)  # dvclive 3.49 fails here
    monkeypatch.chdir(tmp_path)
    with training.open_live(tmp_path / "live") as live:
        live.step = 3
        live.log_metric("train/loss", 0.5)
    assert read_curve(tmp_path / "live", "train/loss").tolist() == [[3.0, 0.5]]
    assert not (tmp_path / "dvc.yaml").exists()  # DVCLive never writes a dvc.yaml


# ----------------------------------------------------------------------------------------------
# Learning


def test_pretraining_loss_falls_on_a_learnable_corpus(tmp_path):
    ex, _ = training.load_examples(write_examples(tmp_path / "ex"))
    torch.manual_seed(0)
    model = BERTModel(VOCAB, TINY)
    cfg = config.PretrainConfig(batch_size=64, lr=1e-2, num_steps=80, seed=0)
    with training.open_live(tmp_path / "live") as live:
        metrics = training.pretrain(model, ex, cfg, CPU, live)
    mlm = read_curve(tmp_path / "live", "train/mlm_loss")
    nsp = read_curve(tmp_path / "live", "train/nsp_loss")
    assert mlm[:, 0].tolist() == list(range(1, 81))  # one row per step, x = step
    assert mlm[-10:, 1].mean() < 0.5 * mlm[:10, 1].mean()
    assert nsp[-10:, 1].mean() < nsp[:10, 1].mean() - 0.1
    assert metrics["steps"] == 80 and metrics["mlm_accuracy"] > 0.2
    assert metrics["mlm_loss"] == pytest.approx(mlm[:, 1].mean(), abs=1e-3)


def test_pretrain_objective_equals_the_model_on_padded_batches(tmp_path):
    """Packed encoder + MLM head on real slots only = d2l's padded computation: same losses,
    accuracies and gradients."""
    ex, _ = training.load_examples(write_examples(tmp_path / "ex", n=50))
    idx = np.random.default_rng(0).permutation(50)[:17]
    torch.manual_seed(0)
    model = BERTModel(VOCAB, TINY)

    def padded_way() -> tuple[list[torch.Tensor], torch.Tensor]:
        T = int(ex["valid_lens"][idx].max())
        longs = {k: torch.from_numpy(ex[k][idx].astype(np.int64)) for k in training.EXAMPLE_ARRAYS}
        weights = longs["mlm_weights"].float()
        _, mlm_logits, nsp_logits = model(
            longs["token_ids"][:, :T], longs["segments"][:, :T], longs["valid_lens"],
            longs["pred_positions"],
        )  # fmt: skip
        loss = training.mlm_loss(mlm_logits, longs["mlm_labels"], weights)
        acc = training.mlm_accuracy(mlm_logits, longs["mlm_labels"], weights)
        return [loss, training.nsp_loss(nsp_logits, longs["nsp_labels"])], acc

    def packed_way() -> tuple[list[torch.Tensor], torch.Tensor]:
        b = training.collate_examples(ex, idx)
        assert len(b["slot_rows"]) == int((ex["mlm_weights"][idx] > 0).sum())
        loss, acc, nsp_logits = training.PretrainObjective(model)(b)
        return [loss, training.nsp_loss(nsp_logits, b["nsp_labels"])], acc

    results = []
    for way in (padded_way, packed_way):
        model.zero_grad()
        losses, acc = way()
        sum(losses).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((torch.stack(losses).detach(), acc, grads))
    (l1, a1, g1), (l2, a2, g2) = results
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    assert a1.item() == pytest.approx(a2.item())
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-4, atol=1e-6, msg=name)


def test_finetuning_learns_a_toy_nli_task(tmp_path):
    snli = write_snli(tmp_path / "snli", {"train": 600, "test": 150})
    train, test = (training.load_snli_split(snli, s) for s in ("train", "test"))
    model = BERTClassifier(training.load_bert(write_bert(tmp_path / "bert.safetensors"))[0])
    cfg = config.FinetuneConfig(batch_size=32, lr=3e-3, num_epochs=3, seed=0)
    metrics = training.finetune(model, train, test, cfg, CPU)
    assert metrics["test_accuracy"] > 0.8  # chance is 1/3
    assert metrics["steps"] == 3 * 19 and metrics["examples_per_sec"] > 0
    predicted = training.predict(model, test, 64, CPU)
    accuracy = (predicted == np.asarray(test["labels"])).mean()
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-4)


def test_checkpoint_checks_name_the_problem(tmp_path):
    _, meta = training.load_bert(write_bert(tmp_path / "bert.safetensors"))
    good = artifacts.read_json(write_snli(tmp_path / "a", {"train": 3}) / "meta.json")
    training.check_snli_fits(good, "snli", meta, "ckpt")
    with pytest.raises(UserError, match="vocabulary"):
        training.check_snli_fits({**good, "vocab_sha1": "f" * 40}, "snli", meta, "ckpt")
    with pytest.raises(UserError, match="max_len 41 exceeds"):
        training.check_snli_fits({**good, "max_len": 41}, "snli", meta, "ckpt")
    with pytest.raises(UserError, match="expected a 'classifier' checkpoint"):
        training.load_classifier(tmp_path / "bert.safetensors")
    with pytest.raises(UserError, match="no such checkpoint"):
        training.load_bert(tmp_path / "missing.safetensors")
