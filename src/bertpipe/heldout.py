"""Pretraining judged on held-out text: MLM and NSP figures, their references, and collapse.

Training losses cannot tell a model that learns the language from one that memorises its
statically masked examples or collapses. These figures are computed on examples built from text
the model never trains on (make_examples' `valid/` split), in eval mode (no dropout) and without
gradients. They draw no random numbers, so evaluating changes no bit of what training computes.

- MLM over the real prediction slots: loss (mean cross-entropy), perplexity = exp(loss), top-1
  accuracy; and the same over the slots replaced by `<mask>` alone (the 10% left unchanged show
  their answer, so a model that copies its input beats word frequency there without learning);
- NSP loss and accuracy;
- the reference to read them against: the unigram model, which predicts every slot from the
  training corpus's token frequencies (add-one smoothed, so a token the corpus lacks still has a
  finite loss) and always answers the most frequent token; NSP's chance, 0.5 and ln 2;
- collapse: how much the `<cls>` vectors and the pooler's outputs vary across inputs (`spread`),
  and how saturated the pooler's Tanh is; `tell` warns when the pooler's spread is below
  COLLAPSED_BELOW.

Every figure is a mean over per-slot or per-example numbers, summed on the host in float64 in
a fixed order, so it does not depend on the thread count.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bertpipe.batches import Arrays, collate_examples, sorted_batches
from bertpipe.model import BERTModel
from bertpipe.runtime import Runtime, autocast

SLOT_CHUNK = 1024  # MLM slots whose (slots, vocabulary) logits are made at once
CURVE_EXAMPLES = 512  # at most this many held-out examples behind each point of the curves
# Below this pooler spread the encoder has collapsed. On WikiText-2 (README): d2l's lr 0.01
# leaves 4.6e-6 to 2.3e-5, a random initialisation 0.08 to 0.11 and a healthy run 0.21.
COLLAPSED_BELOW = 0.01

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldOut:
    """make_examples' held-out examples and what reading their figures takes."""

    examples: Arrays
    log_probs: np.ndarray  # (V,) the unigram model: `unigram_log_probs` of the training corpus
    mask_id: int
    unk_id: int

    @property
    def size(self) -> int:
        return len(self.examples["nsp_labels"])

    def sample(self) -> np.ndarray:
        """The examples behind each curve point: every k-th, at most CURVE_EXAMPLES of them
        (the examples come in a seeded random order, so these are spread over the text)."""
        return np.arange(0, self.size, -(-self.size // CURVE_EXAMPLES))


@dataclass(frozen=True)
class Outputs:
    """What the model computes for some held-out examples, on the host."""

    slot_ce: np.ndarray  # (S,) float64 cross-entropy of each real slot's label
    slot_hit: np.ndarray  # (S,) bool: the top-1 prediction is the label
    slot_label: np.ndarray  # (S,) int64
    slot_masked: np.ndarray  # (S,) bool: the input holds <mask> at the slot
    nsp_ce: np.ndarray  # (B,) float64
    nsp_hit: np.ndarray  # (B,) bool
    cls: np.ndarray  # (B, H) float64 the encoder's <cls> vectors
    pooled: np.ndarray  # (B, H) float64 the pooler's outputs, tanh(W cls + b)


@torch.no_grad()
def run(model: BERTModel, held: HeldOut, idx: np.ndarray, batch_size: int,
        rt: Runtime) -> Outputs:  # fmt: skip
    """The model, in eval mode, on held-out examples `idx`, in batches of similar length."""
    training = model.training
    model.eval()
    parts = []
    for batch in sorted_batches(held.examples["valid_lens"][idx], batch_size):
        b = collate_examples(held.examples, idx[batch])
        parts.append(_outputs(model, {k: v.to(rt.device) for k, v in b.items()}, held.mask_id, rt))
    model.train(training)
    return Outputs(*(np.concatenate(column) for column in zip(*parts, strict=True)))


def _outputs(model: BERTModel, b: dict, mask_id: int, rt: Runtime) -> list[np.ndarray]:
    """One packed batch's `Outputs` fields."""
    with autocast(rt):
        X = model.encoder.forward_packed(b["tokens"], b["segments"], b["packing"])  # (N, H)
        cls = X[b["cls_rows"]]  # (B, H)
        pooled = model.hidden(cls)  # (B, H)
        nsp_logits = model.nsp(pooled).float()  # (B, 2)
        features = model.mlm.transform(X[b["slot_rows"]])  # (S, H)
        ce, hit = [], []
        for f, labels in zip(features.split(SLOT_CHUNK), b["slot_labels"].split(SLOT_CHUNK),
                             strict=True):  # fmt: skip
            logits = model.mlm.decoder(f).float()  # (chunk, V)
            ce.append(F.cross_entropy(logits, labels, reduction="none"))
            hit.append(logits.argmax(-1) == labels)
    nsp = b["nsp_labels"]
    columns = [
        torch.cat(ce), torch.cat(hit), b["slot_labels"], b["tokens"][b["slot_rows"]] == mask_id,
        F.cross_entropy(nsp_logits, nsp, reduction="none"), nsp_logits.argmax(-1) == nsp,
        cls.float(), pooled.float(),
    ]  # fmt: skip
    return [(c.double() if c.is_floating_point() else c).cpu().numpy() for c in columns]


def spread(X: np.ndarray) -> float:
    """How much (B, H) vectors vary across inputs, relative to their size: the root-mean-square
    distance from their mean over their root-mean-square norm, in [0, 1]. 0: every input gives
    the same vector; near 1: the mean is small next to what varies."""
    centred = X - X.mean(axis=0)  # (B, H)
    return math.sqrt(float((centred**2).sum()) / max(float((X**2).sum()), 1e-300))


def figures(out: Outputs) -> dict[str, float]:
    """The model's figures: MLM over all real slots and over the <mask> slots, NSP, collapse."""
    masked = out.slot_masked
    return {
        **_mlm(out.slot_ce, out.slot_hit),
        **_mlm(out.slot_ce[masked], out.slot_hit[masked], "masked_"),
        "nsp_loss": float(out.nsp_ce.mean()),
        "nsp_accuracy": float(out.nsp_hit.mean()),
        "cls_spread": spread(out.cls),
        "pooler_spread": spread(out.pooled),
        "tanh_saturation": float((np.abs(out.pooled) > 0.99).mean()),
    }


def _mlm(ce: np.ndarray, hit: np.ndarray, prefix: str = "") -> dict[str, float]:
    loss = float(ce.mean())
    return {f"{prefix}mlm_loss": loss, f"{prefix}mlm_perplexity": math.exp(loss),
            f"{prefix}mlm_accuracy": float(hit.mean())}  # fmt: skip


def unigram_log_probs(token_ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """(V,) log p of every token under the training corpus's frequencies, add-one smoothed:
    (count + 1) / (tokens + V), so a token the corpus lacks (a special) has a finite loss."""
    counts = np.bincount(token_ids, minlength=vocab_size).astype(np.float64)
    return np.log(counts + 1) - math.log(counts.sum() + vocab_size)


def reference(out: Outputs, log_probs: np.ndarray) -> dict[str, float]:
    """What the model's figures are read against, on the same slots: the unigram model (its
    loss, perplexity and accuracy; it always answers the most frequent token) and NSP's chance."""
    masked = out.slot_masked
    ce = -log_probs[out.slot_label]  # (S,)
    hit = out.slot_label == np.argmax(log_probs)
    return {**_mlm(ce, hit), **_mlm(ce[masked], hit[masked], "masked_"),
            "nsp_loss": math.log(2), "nsp_accuracy": 0.5}  # fmt: skip


def report(out: Outputs, held: HeldOut) -> dict[str, Any]:
    """metrics.json's `heldout`: the model's figures, what was counted, and the reference."""
    counted = {
        "num_examples": len(out.nsp_ce),
        "num_slots": len(out.slot_ce),
        "num_masked_slots": int(out.slot_masked.sum()),
        "unk_share": float((out.slot_label == held.unk_id).mean()),  # of the slots' labels
    }
    return {**_rounded(figures(out)), **_rounded(counted),
            "reference": _rounded(reference(out, held.log_probs))}  # fmt: skip


def _rounded(figures: dict[str, Any]) -> dict[str, Any]:
    """Five significant digits: a spread of 2e-6 keeps its size."""
    return {k: v if isinstance(v, int) else float(f"{v:.5g}") for k, v in figures.items()}


def tell(figures: dict[str, Any]) -> None:
    """Log a `report` next to its reference, and one warning when the pooler's output hardly
    varies across inputs: fine-tuning would start from features alike for every pair."""
    ref = figures["reference"]
    log.info("held out: MLM perplexity %.1f (unigram %.1f), accuracy %.3f (unigram %.3f); on "
             "<mask> slots %.1f (%.1f), %.3f (%.3f); NSP accuracy %.3f; pooler spread %.3g",
             figures["mlm_perplexity"], ref["mlm_perplexity"], figures["mlm_accuracy"],
             ref["mlm_accuracy"], figures["masked_mlm_perplexity"],
             ref["masked_mlm_perplexity"], figures["masked_mlm_accuracy"],
             ref["masked_mlm_accuracy"], figures["nsp_accuracy"],
             figures["pooler_spread"])  # fmt: skip
    if figures["pooler_spread"] >= COLLAPSED_BELOW:
        return
    log.warning(
        "the encoder has collapsed: on the held-out examples the pooled <cls> vector is nearly "
        "the same for every input (pooler_spread %.2g, below %g; Tanh saturation %.0f%%), so "
        "fine-tuning will start from features that cannot tell pairs apart and is likely to "
        "predict one class for all. Pretrain with a lower pretrain.lr and a warm-up "
        "(pretrain.warmup_fraction), e.g. lr 2.0e-3 with warmup_fraction 0.1 "
        "(README: When things go wrong)",
        figures["pooler_spread"], COLLAPSED_BELOW, 100 * figures["tanh_saturation"],
    )  # fmt: skip
