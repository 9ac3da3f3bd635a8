"""BERT pretraining examples: NSP sentence pairs, MLM masking (80/10/10) and padding.

The rules are d2l's (`_WikiTextDataset`), computed once (static masking, as in d2l):

- NSP: paragraphs in a shuffled order; every adjacent sentence pair (a, b) keeps the true next b
  with probability `next_sentence_prob`, else b becomes a random sentence of a random paragraph
  (uniform paragraph, then uniform sentence in it; it may coincide with the true one). A pair
  whose `<cls> a <sep> b <sep>` is longer than `max_len` is dropped, never truncated.
- MLM: among the positions that are not `<cls>`/`<sep>`, `max(1, round(len * mask_rate))`
  distinct ones (Python's half-to-even `round`) are predicted; each becomes `<mask>` (80%), stays
  (10%) or becomes a uniformly random id of the whole vocabulary, specials included (10%).
- Padding: tokens to `max_len` with `<pad>`, predictions to `round(max_len * mask_rate)` slots
  with position 0, label 0 and weight 0.

d2l draws from Python's global `random`, one call per pair and per masked token; here every draw
comes in bulk from one seeded `numpy.random.default_rng(seed)` (coin flips for all pairs at once,
the masked positions of every example from an argsort of random keys), so the same params give
the same bytes and WikiText-2 takes well under a second. The RNG sequence is not d2l's.
"""

from __future__ import annotations

import numpy as np

from bertpipe import artifacts
from bertpipe.config import MakeExamplesConfig
from bertpipe.vocab import CLS_ID, MASK_ID, PAD_ID, SEP_ID
from bertpipe.wikitext import Corpus

MASK_BELOW, KEEP_BELOW = 0.8, 0.9  # a uniform draw below 0.8 masks, below 0.9 keeps, else random


def num_mlm_preds(lengths: np.ndarray, mask_rate: float) -> np.ndarray:
    """max(1, round(length * mask_rate)) per length; np.round is half-to-even like Python's."""
    return np.maximum(1, np.round(np.asarray(lengths, dtype=np.int64) * mask_rate)).astype(np.int64)


def max_num_mlm_preds(max_len: int, mask_rate: float) -> int:
    """Prediction slots per example after padding: round(max_len * mask_rate), as d2l."""
    return round(max_len * mask_rate)


def nsp_pairs(
    corpus: Corpus, next_sentence_prob: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sentence indices (a, b) and is_next of every adjacent pair, paragraphs shuffled."""
    p = corpus.paragraph_offsets
    sizes = np.diff(p)  # (num_paragraphs,) sentences per paragraph, all >= 1
    order = rng.permutation(len(sizes))
    pairs_per = sizes[order] - 1  # a paragraph of k sentences has k-1 adjacent pairs
    first_pair = np.cumsum(pairs_per) - pairs_per  # index of each paragraph's first pair
    num_pairs = int(pairs_per.sum())
    a = np.repeat(p[order] - first_pair, pairs_per) + np.arange(num_pairs)  # (num_pairs,)
    is_next = rng.random(num_pairs) < next_sentence_prob
    paragraph = rng.integers(0, len(sizes), num_pairs)  # uniform over paragraphs ...
    other = p[paragraph] + rng.integers(0, sizes[paragraph])  # ... then over its sentences
    return a, np.where(is_next, a + 1, other), is_next


def pack_pairs(
    corpus: Corpus, a: np.ndarray, b: np.ndarray, max_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`<cls> a <sep> b <sep> <pad>...` as (N, L) int64 ids, (N, L) segments, (N,) lengths."""
    s = corpus.sentence_offsets
    len_a, len_b = (s[a + 1] - s[a])[:, None], (s[b + 1] - s[b])[:, None]  # (N, 1)
    valid_lens = (len_a + len_b + 3)[:, 0]  # (N,)
    col = np.arange(max_len)[None, :]  # (1, L)
    in_a = (col >= 1) & (col <= len_a)  # (N, L)
    in_b = (col >= len_a + 2) & (col < len_a + len_b + 2)
    source = np.where(in_a, s[a][:, None] + col - 1, s[b][:, None] + col - len_a - 2)
    source = np.where(in_a | in_b, source, 0)  # keep gathers in range; overwritten below
    tokens = np.where(in_a | in_b, corpus.token_ids[source], PAD_ID).astype(np.int64)
    rows = np.arange(len(a))
    tokens[:, 0] = CLS_ID
    tokens[rows, len_a[:, 0] + 1] = SEP_ID
    tokens[rows, valid_lens - 1] = SEP_ID
    segments = (col >= len_a + 2) & (col < valid_lens[:, None])  # b and its <sep>
    return tokens, segments.astype(np.uint8), valid_lens


def mask_tokens(
    tokens: np.ndarray,
    valid_lens: np.ndarray,
    vocab_size: int,
    mask_rate: float,
    num_slots: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MLM-corrupt (N, L) `tokens`; returns new tokens and (N, P) positions, labels, weights."""
    n, max_len = tokens.shape
    rows = np.arange(n)[:, None]  # (N, 1)
    candidate = np.arange(max_len) < valid_lens[:, None]  # (N, L)
    candidate &= (tokens != CLS_ID) & (tokens != SEP_ID)
    wanted = np.minimum(num_mlm_preds(valid_lens, mask_rate), candidate.sum(axis=1))  # (N,)
    # The num_preds smallest random keys among candidates are a uniform random subset of them.
    keys = np.where(candidate, rng.random((n, max_len)), 2.0)
    chosen = np.argsort(keys, axis=1)[:, :num_slots]  # (N, P)
    used = np.arange(num_slots) < wanted[:, None]  # (N, P) real slots come first
    positions = np.sort(np.where(used, chosen, max_len), axis=1)  # unused sort to the end
    positions = np.where(used, positions, 0)
    labels = np.where(used, tokens[rows, positions], 0)
    draw = rng.random((n, num_slots))
    random_ids = rng.integers(0, vocab_size, (n, num_slots))
    replacement = np.select([draw < MASK_BELOW, draw < KEEP_BELOW], [MASK_ID, labels], random_ids)
    corrupted = tokens.copy()
    corrupted[np.broadcast_to(rows, used.shape)[used], positions[used]] = replacement[used]
    return corrupted, positions, labels, used.astype(np.uint8)


def make_examples(corpus: Corpus, cfg: MakeExamplesConfig) -> dict[str, np.ndarray]:
    """All pretraining examples of `corpus`, as the arrays `make_examples` writes."""
    num_slots = max_num_mlm_preds(cfg.max_len, cfg.mask_rate)
    if num_slots < 1:
        raise ValueError(f"max_len * mask_rate = {cfg.max_len * cfg.mask_rate} rounds to 0 slots")
    rng = np.random.default_rng(cfg.seed)
    a, b, is_next = nsp_pairs(corpus, cfg.next_sentence_prob, rng)
    s = corpus.sentence_offsets
    fits = (s[a + 1] - s[a]) + (s[b + 1] - s[b]) + 3 <= cfg.max_len
    a, b, is_next = a[fits], b[fits], is_next[fits]
    tokens, segments, valid_lens = pack_pairs(corpus, a, b, cfg.max_len)
    tokens, positions, labels, weights = mask_tokens(
        tokens, valid_lens, corpus.vocab_size, cfg.mask_rate, num_slots, rng
    )
    ids = artifacts.id_dtype(corpus.vocab_size)
    return {
        "token_ids": tokens.astype(ids),  # (N, L)
        "segments": segments,  # (N, L) uint8
        "valid_lens": valid_lens.astype(np.int16),  # (N,)
        "pred_positions": positions.astype(np.int16),  # (N, P)
        "mlm_labels": labels.astype(ids),  # (N, P)
        "mlm_weights": weights,  # (N, P) uint8
        "nsp_labels": is_next.astype(np.uint8),  # (N,)
    }
