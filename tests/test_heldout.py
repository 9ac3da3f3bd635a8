"""Held-out evaluation of pretraining: the figures' definitions, their reference, the collapse
alarm, and that evaluating changes no trained bit."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import CONTROLS, example_arrays, save_examples, training_params

from bertpipe import artifacts, config, curves, heldout, losses
from bertpipe.errors import UserError
from bertpipe.heldout import HeldOut
from bertpipe.model import BERTModel
from bertpipe.pretrain import pretrain
from bertpipe.runtime import CPU

UNK, MASK = 0, 2  # the fakes' special ids


def held_out(n: int = 48, unmasked_every: int = 3) -> HeldOut:
    """Fake held-out examples in which every `unmasked_every`-th real slot keeps its token (the
    fakes mask every slot), with a unigram model that favours id 7."""
    ex = example_arrays(n, 20, np.random.default_rng(5))
    rows, slots = np.nonzero(ex["mlm_weights"])
    keep = np.arange(len(rows)) % unmasked_every == 0
    positions = ex["pred_positions"][rows[keep], slots[keep]]
    ex["token_ids"][rows[keep], positions] = ex["mlm_labels"][rows[keep], slots[keep]]
    log_probs = np.log(np.full(37, 0.5 / 36))
    log_probs[7] = np.log(0.5)
    return HeldOut(ex, log_probs, MASK, UNK)


def test_the_unigram_reference_is_a_count_by_hand():
    """Training corpus 5 5 5 6 7 over 8 ids, add-one: p(5) = 4/13, p(6) = p(7) = 2/13, and 1/13
    for each id the corpus lacks (<unk> among them); it always answers 5."""
    log_probs = heldout.unigram_log_probs(np.array([5, 5, 5, 6, 7], np.uint16), 8)
    assert np.exp(log_probs) * 13 == pytest.approx([1, 1, 1, 1, 1, 4, 2, 2])
    labels, masked = np.array([5, 6, 0]), np.array([True, False, True])
    out = heldout.Outputs(np.zeros(3), np.zeros(3, bool), labels, masked, np.zeros(2),
                          np.zeros(2, bool), np.ones((2, 4)), np.ones((2, 4)))  # fmt: skip
    ref = heldout.reference(out, log_probs)
    assert ref["mlm_loss"] == pytest.approx(-(math.log(4 / 13 * 2 / 13 * 1 / 13)) / 3)
    assert ref["mlm_perplexity"] == pytest.approx(math.exp(ref["mlm_loss"]))
    assert ref["mlm_accuracy"] == pytest.approx(1 / 3)
    assert ref["masked_mlm_loss"] == pytest.approx(-(math.log(4 / 13 * 1 / 13)) / 2)
    assert ref["masked_mlm_accuracy"] == pytest.approx(1 / 2)
    assert (ref["nsp_accuracy"], ref["nsp_loss"]) == (0.5, pytest.approx(math.log(2)))


def test_figures_are_the_weighted_losses_of_the_padded_model_in_eval_mode(fake):
    """MLM loss = losses.mlm_loss over the real slots (over the <mask> slots alone for the
    masked figures), perplexity = exp(loss), accuracies and NSP as the padded model gives them
    with dropout off, in batches of any size."""
    held = held_out()
    torch.manual_seed(0)
    model = BERTModel(fake.VOCAB, config.ModelConfig(24, 48, 2, 2, 0.5, 40))  # dropout: eval off
    everything = np.arange(held.size)
    got = heldout.figures(heldout.run(model, held, everything, 16, CPU))
    assert heldout.figures(heldout.run(model, held, everything, 48, CPU)) == pytest.approx(got)
    assert model.training  # put back as it was

    ex = {k: torch.from_numpy(v.astype(np.int64)) for k, v in held.examples.items()}
    with torch.no_grad():
        _, mlm_logits, nsp_logits = model.eval()(
            ex["token_ids"], ex["segments"], ex["valid_lens"], ex["pred_positions"]
        )  # (B, P, V), (B, 2)
    weights = ex["mlm_weights"].float()  # (B, P) 1 on real slots
    masked = weights * (ex["token_ids"].gather(1, ex["pred_positions"]) == MASK)
    assert 0 < masked.sum() < weights.sum()
    for prefix, w in (("", weights), ("masked_", masked)):
        loss = losses.mlm_loss(mlm_logits, ex["mlm_labels"], w).item()
        assert got[f"{prefix}mlm_loss"] == pytest.approx(loss, rel=1e-5)
        assert got[f"{prefix}mlm_perplexity"] == pytest.approx(math.exp(got[f"{prefix}mlm_loss"]))
        hits = losses.mlm_accuracy(mlm_logits, ex["mlm_labels"], w).item()
        assert got[f"{prefix}mlm_accuracy"] == pytest.approx(hits, abs=1e-6)
    assert got["nsp_loss"] == pytest.approx(losses.nsp_loss(nsp_logits, ex["nsp_labels"]).item())
    hits = (nsp_logits.argmax(-1) == ex["nsp_labels"]).float().mean().item()
    assert got["nsp_accuracy"] == pytest.approx(hits)


def test_spread_is_zero_for_one_vector_and_grows_with_the_differences():
    same = np.tile(np.array([[0.3, -1.0, 2.0]]), (5, 1))
    assert heldout.spread(same) == 0.0
    opposite = np.array([[1.0, 0.0], [-1.0, 0.0]])  # mean 0: all of it varies
    assert heldout.spread(opposite) == pytest.approx(1.0)
    noisy = same + np.random.default_rng(0).normal(0, 0.01, same.shape)
    assert 0 < heldout.spread(noisy) < 0.01


def train(lr: float, steps: int, controls: dict, held: HeldOut | None, fake, eval_every: int = 0,
          live=None) -> tuple[BERTModel, dict]:  # fmt: skip
    """The tiny model (dropout 0.1) pretrained on 384 fake examples."""
    ex = example_arrays(384, 20, np.random.default_rng(0))
    torch.manual_seed(0)
    model = BERTModel(fake.VOCAB, config.ModelConfig(24, 48, 2, 2, 0.1, 40))
    cfg = config.PretrainConfig(64, lr, steps, 0, eval_every=eval_every, **controls)
    return model, pretrain(model, ex, cfg, CPU, live, held=held)


def test_the_alarm_fires_once_on_a_collapsed_encoder_and_not_on_a_healthy_one(fake, caplog):
    """lr 0.3 without warm-up collapses the tiny encoder (every pooled <cls> the same, Tanh
    saturated); lr 0.01 with the README's controls does not."""
    held = held_out()
    caplog.set_level(logging.INFO, logger="bertpipe.heldout")
    _, collapsed = train(0.3, 20, {}, held, fake)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "collapsed" in warnings[0].message
    assert "pretrain.lr" in warnings[0].message and "warmup_fraction" in warnings[0].message
    assert collapsed["heldout"]["pooler_spread"] < heldout.COLLAPSED_BELOW
    assert collapsed["heldout"]["tanh_saturation"] > 0.9

    caplog.clear()
    _, healthy = train(0.01, 40, CONTROLS, held, fake)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert healthy["heldout"]["pooler_spread"] > 10 * heldout.COLLAPSED_BELOW
    assert "held out: MLM perplexity" in caplog.text


def test_evaluating_changes_no_trained_bit(fake, tmp_path):
    """Evaluated after every step, or not at all: the same weights (dropout on), and one curve
    point per step."""
    with curves.open_live(tmp_path / "live") as live:
        evaluated, metrics = train(0.01, 6, CONTROLS, held_out(), fake, eval_every=1, live=live)
    alone, _ = train(0.01, 6, CONTROLS, None, fake)
    assert "heldout" in metrics and metrics["eval_seconds"] >= 0
    assert evaluated.state_dict().keys() == alone.state_dict().keys()
    for key, value in alone.state_dict().items():
        assert torch.equal(evaluated.state_dict()[key], value), key
    curve = fake.curve(tmp_path / "live", "heldout/masked_mlm_accuracy")
    assert curve[:, 0].tolist() == [1, 2, 3, 4, 5, 6]


def pretrain_argv(root: Path, fake) -> list[str]:
    """The pretrain stage on `root / "examples"` and a fake corpus, for 4 steps."""
    (root / "params.yaml").write_text(yaml.safe_dump(training_params(4, 1)))
    return ["--params", str(root / "params.yaml"), "--examples", str(root / "examples"),
            "--corpus", str(fake.corpus(root / "corpus")), "--out", str(root / "out"),
            "--metrics", str(root / "m.json"), "--live", str(root / "live"),
            "--device", "cpu"]  # fmt: skip


def test_the_stage_judges_the_held_out_examples_only(tmp_path, stage, fake):
    """Every held-out target is <unk> and none of the training ones: any training example in
    the figures would bring the <unk> share below 1 and change the counts."""
    save_examples(tmp_path / "examples", example_arrays(200, 20, np.random.default_rng(0)))
    held = example_arrays(40, 20, np.random.default_rng(9))
    held["mlm_labels"][held["mlm_weights"] > 0] = UNK
    save_examples(tmp_path / "examples/valid", held)
    stage("pretrain").main(pretrain_argv(tmp_path, fake))
    figures = artifacts.read_json(tmp_path / "m.json")["heldout"]
    assert figures["unk_share"] == 1.0
    assert figures["num_examples"] == 40 and figures["num_slots"] == int(held["mlm_weights"].sum())
    assert figures["reference"]["mlm_accuracy"] == 0.0  # the fake corpus has no <unk>
    assert len(fake.curve(tmp_path / "live", "heldout/mlm_loss")) == 1  # eval_every 5 > 4 steps


def test_the_stage_refuses_missing_or_foreign_held_out_examples(tmp_path, stage, fake):
    examples = fake.examples(tmp_path / "examples", n=100)
    argv = pretrain_argv(tmp_path, fake)
    meta = artifacts.read_json(examples / "valid/meta.json")
    artifacts.write_json(examples / "valid/meta.json", {**meta, "vocab_sha1": "f" * 40})
    with pytest.raises(UserError, match=r"examples/valid: not from the vocabulary of"):
        stage("pretrain").main(argv)
    (examples / "valid/meta.json").unlink()
    with pytest.raises(UserError, match=r"examples/valid: no make_examples output here"):
        stage("pretrain").main(argv)
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.json").exists()
