"""Tests for bertpipe.pretrain: the packed objective and learning on generated data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bertpipe import artifacts, batches, config, curves, losses
from bertpipe.masking import Specials
from bertpipe.model import BERTModel
from bertpipe.pretrain import PretrainObjective, pretrain
from bertpipe.runtime import CPU


def test_pretraining_loss_falls_on_a_learnable_corpus(tmp_path, fake):
    ex, _ = batches.load_examples(fake.examples(tmp_path / "ex"))
    torch.manual_seed(0)
    model = BERTModel(fake.VOCAB, fake.TINY)
    cfg = config.PretrainConfig(batch_size=64, lr=1e-2, num_steps=80, seed=0)
    with curves.open_live(tmp_path / "live") as live:
        metrics = pretrain(model, ex, cfg, CPU, live)
    mlm = fake.curve(tmp_path / "live", "train/mlm_loss")
    nsp = fake.curve(tmp_path / "live", "train/nsp_loss")
    assert mlm[:, 0].tolist() == list(range(1, 81))  # one row per step, x = step
    assert mlm[-10:, 1].mean() < 0.5 * mlm[:10, 1].mean()
    assert nsp[-10:, 1].mean() < nsp[:10, 1].mean() - 0.1
    assert metrics["num_steps"] == 80 and metrics["mlm_accuracy"] > 0.2
    assert metrics["mlm_loss"] == pytest.approx(mlm[:, 1].mean(), abs=1e-3)


def test_pretrain_objective_equals_the_model_on_padded_batches(tmp_path, fake):
    """Packed encoder + MLM head on real slots only = d2l's padded computation: same losses,
    accuracies and gradients."""
    ex, _ = batches.load_examples(fake.examples(tmp_path / "ex", n=50))
    idx = np.random.default_rng(0).permutation(50)[:17]
    torch.manual_seed(0)
    model = BERTModel(fake.VOCAB, fake.TINY)

    def padded_way() -> tuple[list[torch.Tensor], torch.Tensor]:
        T = int(ex["valid_lens"][idx].max())
        longs = {
            k: torch.from_numpy(ex[k][idx].astype(np.int64)) for k in artifacts.EXAMPLES.arrays
        }
        weights = longs["mlm_weights"].float()
        _, mlm_logits, nsp_logits = model(
            longs["token_ids"][:, :T], longs["segments"][:, :T], longs["valid_lens"],
            longs["pred_positions"],
        )  # fmt: skip
        loss = losses.mlm_loss(mlm_logits, longs["mlm_labels"], weights)
        acc = losses.mlm_accuracy(mlm_logits, longs["mlm_labels"], weights)
        return [loss, losses.nsp_loss(nsp_logits, longs["nsp_labels"])], acc

    def packed_way() -> tuple[list[torch.Tensor], torch.Tensor]:
        b = batches.collate_examples(ex, idx)
        assert len(b["slot_rows"]) == int((ex["mlm_weights"][idx] > 0).sum())
        loss, acc, nsp_logits = PretrainObjective(model)(b)
        return [loss, losses.nsp_loss(nsp_logits, b["nsp_labels"])], acc

    results = []
    for way in (padded_way, packed_way):
        model.zero_grad()
        both, acc = way()
        sum(both).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((torch.stack(both).detach(), acc, grads))
    (l1, a1, g1), (l2, a2, g2) = results
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    assert a1.item() == pytest.approx(a2.item())
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-4, atol=1e-6, msg=name)


def test_dynamic_masking_trains_on_other_masks_than_the_static_ones(tmp_path, fake):
    ex, meta = batches.load_examples(fake.examples(tmp_path / "ex", n=96))
    weights = {}
    for masking in ("static", "dynamic"):
        torch.manual_seed(0)
        model = BERTModel(fake.VOCAB, fake.TINY)
        cfg = config.PretrainConfig(batch_size=64, lr=1e-2, num_steps=3, seed=0, masking=masking)
        pretrain(model, ex, cfg, CPU, specials=Specials.of(meta))
        weights[masking] = model.encoder.token_embedding.weight.detach().clone()
    assert not torch.equal(weights["static"], weights["dynamic"])
    with pytest.raises(ValueError, match="special ids"):
        pretrain(BERTModel(fake.VOCAB, fake.TINY), ex, cfg, CPU)
