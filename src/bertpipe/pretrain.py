"""The pretrain stage's logic: d2l's `train_bert`, MLM + NSP on packed batches.

d2l runs `num_steps` Adam steps over shuffled epochs of the examples with the model in train
mode, and reports the mean of each loss over all steps (not the last). So do we, with seeded
shuffling; the MLM loss is the weighted mean over real prediction slots (d2l's PyTorch code
averages over padding slots too: d2l issue #2582). Speed: the encoder sees only the real
positions of a batch and the MLM head only the real prediction slots (`PretrainObjective`).

Given held-out examples, the model is also judged on them (`heldout`): on a sample every
`eval_every` steps and after the last (the `heldout/...` curves), and on all of them at the end
(the metrics' `heldout`), on rank 0 only; the evaluation draws no random numbers, so the weights
are the same bytes with it or without it.

`masking: dynamic` (RoBERTa's) trains on new masks every epoch instead of make_examples' static
ones (`masking.DynamicMasks`); the held-out examples keep theirs, so every configuration is
judged on the same slots.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertpipe import config, heldout
from bertpipe.batches import (
    Arrays,
    Batch,
    EpochBatch,
    Part,
    collate_examples,
    pretraining_plan,
)
from bertpipe.heldout import HeldOut
from bertpipe.loop import Evaluation, Trainer
from bertpipe.losses import exact_sum, linear_cross_entropy
from bertpipe.masking import DynamicMasks, Specials
from bertpipe.model import BERTModel
from bertpipe.resume import Resume
from bertpipe.runtime import Runtime, autocast, prepare

log = logging.getLogger(__name__)

CURVES = ["train/mlm_loss", "train/nsp_loss", "train/mlm_accuracy", "train/nsp_accuracy"]


class PretrainObjective(nn.Module):
    """BERTModel's pretraining losses for a packed batch, computed only where they look.

    d2l runs the encoder on padding positions and the MLM head on padding slots (then weights
    their loss by 0). Here the encoder sees only the real positions of the batch and the MLM
    head only the real prediction slots (`collate_examples` lists both), which leaves the losses
    as they were and saves about a third of the work at d2l's shapes. `bert` stays the module
    whose state_dict is saved.
    """

    def __init__(self, bert: BERTModel, compiled: bool = False):
        super().__init__()
        self.bert = bert
        # Under torch.compile the fused MLM loss runs eagerly: its autograd.Function works in
        # place. Only then: torch.compiler.disable imports dynamo, a second of every start.
        self.mlm_loss = (
            torch.compiler.disable(linear_cross_entropy) if compiled else linear_cross_entropy
        )

    def forward(self, b: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """This rank's share of the MLM loss and accuracy, and the NSP logits (B, 2)."""
        bert = self.bert
        X = bert.encoder.forward_packed(b["tokens"], b["segments"], b["packing"])  # (N, H)
        nsp_logits = bert.nsp(bert.hidden(X[b["cls_rows"]]))  # (B, 2)
        features = bert.mlm.transform(X[b["slot_rows"]])  # (S, H)
        mlm, mlm_acc = self.mlm_loss(
            features, bert.mlm.decoder, b["slot_labels"], b["slot_weights"], b["num_slots"]
        )
        return mlm, mlm_acc, nsp_logits


@dataclass(frozen=True)
class Collate:
    """This rank's part of a pretraining batch, with make_examples' masks or, given `dynamic`,
    with the epoch's own."""

    dynamic: DynamicMasks | None

    def __call__(self, ex: Arrays, batch: EpochBatch, part: Part) -> Batch:
        if self.dynamic is None:
            return collate_examples(ex, batch.idx, part)
        masked = self.dynamic.remask(ex, batch.idx, batch.epoch)  # (B, ...) rows in batch order
        return collate_examples(masked, np.arange(len(batch)), part)


def step(net: nn.Module, b: Batch, rt: Runtime) -> tuple[Tensor, Tensor]:
    """(loss to back-propagate, this rank's share of [mlm, nsp, mlm_acc, nsp_acc])."""
    with autocast(rt):
        mlm, mlm_acc, nsp_logits = net(b)  # (), (), (B, 2)
    w = b["nsp_weights"]  # (B,)
    ce = F.cross_entropy(nsp_logits.float(), b["nsp_labels"], reduction="none")  # (B,)
    nsp = exact_sum(ce * w) / b["num_examples"]
    with torch.no_grad():
        hits = (nsp_logits.argmax(-1) == b["nsp_labels"]).float()
        nsp_acc = exact_sum(hits * w) / b["num_examples"]
    return (mlm + nsp) * rt.world_size, torch.stack([mlm, nsp, mlm_acc, nsp_acc])


def pretrain(model: BERTModel, examples: Arrays, cfg: config.PretrainConfig, rt: Runtime,
             live: Any = None, resume: Resume | None = None, held: HeldOut | None = None,
             specials: Specials | None = None) -> dict[str, Any]:  # fmt: skip
    """d2l's train_bert: `cfg.num_steps` optimiser steps on MLM + NSP; returns the metrics
    (with `held`, on rank 0, also the figures on those held-out examples). Dynamic masking
    takes the examples' `specials`."""
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(examples["nsp_labels"])
    plan = pretraining_plan(n, cfg.batch_size, cfg.num_steps, gen)
    dynamic = None
    if cfg.masking == "dynamic":
        if specials is None:
            raise ValueError("dynamic masking needs the examples' special ids")
        dynamic = DynamicMasks(cfg.seed, specials)
    torch.manual_seed(cfg.seed + rt.rank)  # dropout: reproducible, different on every rank
    model.train()
    objective = prepare(PretrainObjective(model, rt.compile), rt)
    evaluation = None
    if held is not None and rt.is_main:
        sample = held.sample()
        evaluation = Evaluation(cfg.eval_every, lambda: heldout.figures(
            heldout.run(model, held, sample, cfg.batch_size, rt)), "heldout")  # fmt: skip
    trainer = Trainer(model, objective, cfg, len(plan), rt, live, CURVES, resume, evaluation)
    log.info("pretraining: %d steps of %d pairs on %s", len(plan), cfg.batch_size, rt.device)
    steps = trainer.run(step, examples, plan, Collate(dynamic), 0, "pretrain")  # (num_steps, 4)
    mean, last = steps.mean(axis=0), steps[-1]
    metrics = {
        "mlm_loss": round(float(mean[0]), 4),  # mean over all steps, as d2l prints
        "nsp_loss": round(float(mean[1]), 4),
        "mlm_loss_last": round(float(last[0]), 4),
        "nsp_loss_last": round(float(last[1]), 4),
        "mlm_accuracy": round(float(mean[2]), 4),
        "nsp_accuracy": round(float(mean[3]), 4),
        "num_steps": len(steps),
        "precision": rt.precision,
        "pairs_per_sec": trainer.speed.rate(),
        "train_seconds": round(trainer.speed.seconds, 2),
        **rt.knobs(),
    }
    log.info("pretraining done: MLM loss %.3f, NSP loss %.3f, %s pairs/s",
             metrics["mlm_loss"], metrics["nsp_loss"], metrics["pairs_per_sec"])  # fmt: skip
    if evaluation is not None:
        start = time.perf_counter()
        whole = heldout.run(model, held, np.arange(held.size), cfg.batch_size, rt)
        metrics["heldout"] = heldout.report(whole, held)
        metrics["eval_seconds"] = round(trainer.eval_seconds + time.perf_counter() - start, 2)
        heldout.tell(metrics["heldout"])
    return metrics
