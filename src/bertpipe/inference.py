"""The classifier's inference over make_snli arrays: accuracy, class probabilities, predictions.

Used by finetune (the dev and test accuracies after every epoch), the evaluate stage and `bertpipe
predict`. Batches are sorted by length (least padding) and the model runs in eval mode (no
dropout), so the predictions are a function of the weights and the data only. Under torchrun the
ranks share every batch and agree on the accuracy with one all-reduce.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from bertpipe.batches import Arrays, Batch, batches, collate_snli, snli_lengths, sorted_batches
from bertpipe.runtime import Runtime, autocast, reduce_sum


@torch.no_grad()
def _logits(model: nn.Module, snli: Arrays, batch_size: int, rt: Runtime) -> Iterator:
    """(batch, logits (B, C)) for every batch of the split, model in eval mode."""
    was_training = model.training
    model.eval()
    plan = sorted_batches(snli_lengths(snli), batch_size)
    for b in batches(snli, plan, collate_snli, rt):
        rt.threads.adjust()
        with autocast(rt):
            logits: Tensor = model(b["tokens"], b["segments"], b["valid_lens"])
        yield b, logits.float()
    model.train(was_training)


def evaluate_accuracy(model: nn.Module, snli: Arrays, batch_size: int, rt: Runtime) -> float:
    """Plain accuracy over every pair of `snli`; ranks share the batches."""
    correct = torch.zeros((), device=rt.device)
    for b, logits in _logits(model, snli, batch_size, rt):
        correct += ((logits.argmax(-1) == b["labels"]).float() * b["weights"]).sum()
    return reduce_sum(correct, rt).item() / max(len(snli["labels"]), 1)


def probabilities(model: nn.Module, snli: Arrays, batch_size: int, rt: Runtime) -> np.ndarray:
    """Class probabilities of every pair of `snli`, in its order: (N, C) float32. One process."""
    model.to(rt.device)
    found: list[tuple[Batch, Tensor]] = list(_logits(model, snli, batch_size, rt))
    if not found:
        return np.zeros((0, 1), dtype=np.float32)
    index = torch.cat([b["index"] for b, _ in found]).cpu().numpy()
    out = np.empty((len(index), found[0][1].shape[1]), dtype=np.float32)
    out[index] = torch.cat([p.softmax(-1) for _, p in found]).cpu().numpy()
    return out


def predict(model: nn.Module, snli: Arrays, batch_size: int, rt: Runtime) -> np.ndarray:
    """Predicted class of every pair of `snli`, in its order: (N,) int64."""
    return probabilities(model, snli, batch_size, rt).argmax(-1).astype(np.int64)
