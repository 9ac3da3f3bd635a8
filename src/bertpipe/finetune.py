"""The finetune stage's logic: d2l's `train_ch13` for the SNLI classifier.

Per epoch: one pass over the training pairs in length-bucketed batches (shuffled by a seeded
generator), then the accuracy on each held-out split: dev, the split to compare configurations
by, and test, the one d2l reports. The metrics are the last epoch's, as d2l prints them: the
mean loss per example and the accuracy of the training forward passes (dropout on, weights
changing), and the held-out accuracies. Evaluating draws no random numbers (eval mode, batches
sorted by length), so the trained weights are the same with or without a dev split. The
gradient is that of the batch mean (d2l back-propagates the batch sum; Adam is invariant to the
scale apart from its eps).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertpipe import config
from bertpipe.batches import Arrays, Batch, collate_snli, length_buckets, snli_lengths
from bertpipe.inference import evaluate_accuracy
from bertpipe.loop import Trainer
from bertpipe.losses import exact_sum
from bertpipe.resume import Resume
from bertpipe.runtime import Runtime, autocast, prepare

log = logging.getLogger(__name__)

CURVES = ["train/batch_loss", "train/batch_accuracy"]


def step(net: nn.Module, b: Batch, rt: Runtime) -> tuple[Tensor, Tensor]:
    """(loss to back-propagate, this rank's share of the batch's [mean loss, accuracy])."""
    with autocast(rt):
        logits = net(b["tokens"], b["segments"], b["valid_lens"])  # (B, C)
    w = b["weights"]  # (B,)
    loss = exact_sum(F.cross_entropy(logits.float(), b["labels"], reduction="none") * w)
    loss = loss / b["num_examples"]
    hits = (logits.detach().argmax(-1) == b["labels"]).float()  # (B,)
    accuracy = exact_sum(hits * w) / b["num_examples"]
    return loss * rt.world_size, torch.stack([loss, accuracy])


def accuracies(
    model: nn.Module, held_out: dict[str, Arrays], batch_size: int, rt: Runtime
) -> dict[str, float]:
    """`<name>_accuracy` of every held-out split, rounded as the metrics are."""
    return {
        f"{name}_accuracy": round(evaluate_accuracy(model, arrays, batch_size, rt), 4)
        for name, arrays in held_out.items()
    }


def finetune(
    model: nn.Module,
    train: Arrays,
    held_out: dict[str, Arrays],
    cfg: config.FinetuneConfig,
    rt: Runtime,
    live: Any = None,
    resume: Resume | None = None,
) -> dict[str, Any]:
    """d2l's train_ch13 on length-bucketed batches; after every epoch, `<name>_accuracy` on
    each split of `held_out` (name -> arrays: dev and test)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed + rt.rank)  # dropout: reproducible, different on every rank
    lengths = snli_lengths(train)
    # every epoch's batches, drawn up front: the schedule needs the number of steps
    plans = [length_buckets(lengths, cfg.batch_size, gen) for _ in range(cfg.num_epochs)]
    total = sum(map(len, plans))
    trainer = Trainer(model, prepare(model, rt), cfg, total, rt, live, CURVES, resume)
    evaluated = ", ".join(f"{name} ({len(a['labels'])} pairs)" for name, a in held_out.items())
    log.info("fine-tuning: %d epochs over %d pairs, batches of %d; accuracy on %s",
             cfg.num_epochs, len(lengths), cfg.batch_size, evaluated)  # fmt: skip
    first = 0
    for epoch, plan in enumerate(plans, start=1):
        model.train()
        desc = f"finetune {epoch}/{len(plans)}"
        steps = trainer.run(step, train, plan, collate_snli, first, desc)  # (batches, 2)
        first += len(plan)
        if len(trainer.state.epochs) < epoch:  # not done before a resume
            sizes = np.array([len(b) for b in plan], dtype=np.float64)  # (batches,)
            result = {
                "loss": round(float(steps[:, 0] @ sizes / sizes.sum()), 4),  # mean per example
                "train_accuracy": round(float(steps[:, 1] @ sizes / sizes.sum()), 4),
                **accuracies(model, held_out, cfg.batch_size, rt),
            }
            trainer.log_epoch(result)
            log.info("epoch %d: %s", epoch, result)
    return {**trainer.state.epochs[-1][1], "num_epochs": cfg.num_epochs, "num_steps": total,
            "precision": rt.precision, "examples_per_sec": trainer.speed.rate(),
            "train_seconds": round(trainer.speed.seconds, 2), **rt.knobs()}  # fmt: skip
