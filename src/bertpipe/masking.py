"""BERT's MLM masking rule, for make_examples' static masks and pretraining's dynamic ones.

The rule (d2l's): among an example's positions that are not `<cls>`/`<sep>`, a given number of
distinct ones are predicted; each becomes `<mask>` (80%), stays (10%) or becomes a uniformly
random id of the whole vocabulary, specials included (10%). `mask_tokens` applies it to a block
of examples, given the random numbers it takes (`Draws`), so one piece of code serves both:

- static (d2l): make_examples draws the numbers once from its seeded generator and stores the
  corrupted examples;
- dynamic (RoBERTa): pretraining draws new numbers every epoch (`DynamicMasks`). The stored
  examples keep their original tokens (every predicted slot's label is the token it replaced),
  so each batch's originals are put back and masked anew, with each example's own slot count.

A dynamic epoch's numbers come from a generator seeded with (seed, epoch), one row per example,
so an example's masks depend on (seed, epoch, example) only: not on the batch it falls in, the
rank that collates it, or the step a resumed run started from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MASK_BELOW, KEEP_BELOW = 0.8, 0.9  # a uniform draw below 0.8 masks, below 0.9 keeps, else random
STREAM = 0x6D61736B  # "mask": keeps the epochs' generators apart from make_examples' ones


@dataclass(frozen=True)
class Specials:
    """The ids masking needs: the two it never predicts, `<mask>`, and the vocabulary size."""

    cls_id: int
    sep_id: int
    mask_id: int
    vocab_size: int

    @classmethod
    def of(cls, meta: dict[str, Any]) -> Specials:
        """From the meta of a make_examples folder."""
        return cls(meta["cls_id"], meta["sep_id"], meta["mask_id"], meta["vocab_size"])


@dataclass(frozen=True)
class Draws:
    """The random numbers that masking N examples of L positions into P slots takes."""

    keys: np.ndarray  # (N, L) uniform in [0, 1): the candidates with the smallest are predicted
    kinds: np.ndarray  # (N, P) uniform in [0, 1): <mask>, kept or random (MASK_BELOW, KEEP_BELOW)
    random_ids: np.ndarray  # (N, P) uniform over the vocabulary

    @classmethod
    def of(cls, rng: np.random.Generator, n: int, max_len: int, num_slots: int,
           vocab_size: int) -> Draws:  # fmt: skip
        return cls(rng.random((n, max_len)), rng.random((n, num_slots)),
                   rng.integers(0, vocab_size, (n, num_slots)))  # fmt: skip

    def rows(self, idx: np.ndarray) -> Draws:
        return Draws(self.keys[idx], self.kinds[idx], self.random_ids[idx])


def mask_tokens(
    tokens: np.ndarray, valid_lens: np.ndarray, num_preds: np.ndarray, ids: Specials, draws: Draws
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MLM-corrupt (N, L) `tokens` in place, predicting min(num_preds, candidates) positions of
    each; returns them and the (N, P) positions, labels and weights (real slots first)."""
    n, max_len = tokens.shape
    num_slots = draws.kinds.shape[1]
    rows = np.arange(n)[:, None]  # (N, 1)
    candidate = np.arange(max_len) < valid_lens[:, None]  # (N, L)
    candidate &= (tokens != ids.cls_id) & (tokens != ids.sep_id)
    wanted = np.minimum(num_preds, candidate.sum(axis=1))  # (N,)
    # The `wanted` smallest random keys among candidates are a uniform random subset of them.
    chosen = np.argsort(np.where(candidate, draws.keys, 2.0), axis=1)[:, :num_slots]  # (N, P)
    used = np.arange(num_slots) < wanted[:, None]  # (N, P) real slots come first
    positions = np.sort(np.where(used, chosen, max_len), axis=1)  # unused sort to the end
    positions = np.where(used, positions, 0)
    labels = np.where(used, tokens[rows, positions], 0)
    replacement = np.select([draws.kinds < MASK_BELOW, draws.kinds < KEEP_BELOW],
                            [ids.mask_id, labels], draws.random_ids)  # fmt: skip
    flat = (rows * max_len + positions)[used]  # (real slots,) flat positions in tokens
    tokens.reshape(-1)[flat] = replacement[used]
    return tokens, positions, labels, used.astype(np.uint8)


def unmasked(ex: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    """(B, L) the original tokens of examples `idx`: each real slot's label put back."""
    tokens = ex["token_ids"][idx]  # a copy (fancy indexing)
    real = ex["mlm_weights"][idx] > 0  # (B, P)
    rows = np.nonzero(real)[0]
    tokens[rows, ex["pred_positions"][idx][real]] = ex["mlm_labels"][idx][real]
    return tokens


@dataclass
class DynamicMasks:
    """New masks for every epoch of pretraining, seeded with (seed, epoch), row per example."""

    seed: int
    ids: Specials
    _epoch: int = field(default=-1, repr=False)  # the epoch whose draws are kept
    _draws: Draws | None = field(default=None, repr=False)

    def remask(self, ex: dict[str, np.ndarray], idx: np.ndarray, epoch: int) -> dict:
        """The arrays of examples `idx` (rows 0..B-1, make_examples' names) masked for `epoch`,
        with the slot count each has in `ex`."""
        tokens = unmasked(ex, idx)  # (B, L)
        valid_lens = ex["valid_lens"][idx]
        num_preds = ex["mlm_weights"][idx].sum(axis=1)  # (B,) make_examples' counts
        draws = self._epoch_draws(ex, epoch).rows(idx)
        tokens, positions, labels, weights = mask_tokens(
            tokens, valid_lens, num_preds, self.ids, draws
        )
        return {
            "token_ids": tokens,
            "segments": ex["segments"][idx],
            "valid_lens": valid_lens,
            "pred_positions": positions,
            "mlm_labels": labels,
            "mlm_weights": weights,
            "nsp_labels": ex["nsp_labels"][idx],
        }

    def _epoch_draws(self, ex: dict[str, np.ndarray], epoch: int) -> Draws:
        """All examples' numbers for `epoch`, drawn once per epoch (a batch is a few rows)."""
        if epoch != self._epoch:
            n, max_len = ex["token_ids"].shape
            rng = np.random.default_rng([STREAM, self.seed, epoch])
            num_slots = ex["pred_positions"].shape[1]
            self._draws = Draws.of(rng, n, max_len, num_slots, self.ids.vocab_size)
            self._epoch = epoch
        return self._draws
