"""BERT pretraining examples: NSP sentence pairs, MLM masking (80/10/10) and padding.

The rules are d2l's (`_WikiTextDataset`), computed once (static masking, as in d2l):

- NSP: paragraphs in a shuffled order; every adjacent sentence pair (a, b) keeps the true next b
  with probability `next_sentence_prob`, else b becomes a random sentence of a random paragraph
  (uniform paragraph, then uniform sentence in it; it may coincide with the true one). A pair
  whose `<cls> a <sep> b <sep>` is longer than `max_len` is dropped, never truncated.
- MLM: among the positions that are not `<cls>`/`<sep>`, `max(1, round(len * mask_rate))`
  distinct ones (Python's half-to-even `round`) are predicted; each becomes `<mask>` (80%), stays
  (10%) or becomes a uniformly random id of the whole vocabulary, specials included (10%)
  (`masking.mask_tokens`, which `pretrain.masking: dynamic` also uses to draw new masks every
  epoch from these examples, whose labels keep the tokens the masks replaced).
- Padding: tokens to `max_len` with `<pad>`, predictions to `round(max_len * mask_rate)` slots
  with position 0, label 0 and weight 0.

d2l draws from Python's global `random`, one call per pair and per masked token; here every draw
comes in bulk from one seeded `numpy.random.default_rng(seed)` (coin flips for all pairs at once,
the masked positions of every example from an argsort of random keys), so the same params give
the same bytes and WikiText-2 takes well under a second. The RNG sequence is not d2l's.
"""

from __future__ import annotations

import numpy as np

from bertpipe import artifacts, masking
from bertpipe.config import MakeExamplesConfig
from bertpipe.errors import UserError
from bertpipe.vocab import Vocab
from bertpipe.wikitext import Corpus


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
    corpus: Corpus, vocab: Vocab, a: np.ndarray, b: np.ndarray, max_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`<cls> a <sep> b <sep> <pad>...` as (N, L) ids (id dtype), (N, L) segments, (N,) lengths.

    Only the real tokens are gathered (ragged index arrays, no (N, L) int64 temporaries): on a
    fresh process the page faults of big temporaries cost more than the arithmetic.
    """
    s = corpus.sentence_offsets
    n = len(a)
    len_a, len_b = s[a + 1] - s[a], s[b + 1] - s[b]  # (N,)
    valid_lens = len_a + len_b + 3  # (N,)
    tokens = np.full((n, max_len), vocab.pad_id, dtype=corpus.token_ids.dtype)
    flat = tokens.reshape(-1)
    row_start = np.arange(n) * max_len  # (N,) flat index of each row's position 0
    flat[row_start] = vocab.cls_id
    flat[_ranges(row_start + 1, len_a)] = corpus.token_ids[_ranges(s[a], len_a)]
    flat[row_start + len_a + 1] = vocab.sep_id
    flat[_ranges(row_start + len_a + 2, len_b)] = corpus.token_ids[_ranges(s[b], len_b)]
    flat[row_start + valid_lens - 1] = vocab.sep_id
    col = np.arange(max_len, dtype=np.int16)[None, :]  # (1, L)
    segments = (col >= (len_a + 2)[:, None]) & (col < valid_lens[:, None])  # b and its <sep>
    return tokens, segments.view(np.uint8), valid_lens


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of range(s, s + n) for each (s, n)."""
    offsets = np.cumsum(lengths) - lengths  # where each range starts in the result
    return np.repeat(starts - offsets, lengths) + np.arange(lengths.sum())


def make_examples(corpus: Corpus, vocab: Vocab, cfg: MakeExamplesConfig,
                  held_out: bool = False) -> dict[str, np.ndarray]:  # fmt: skip
    """All pretraining examples of `corpus`, as the arrays `make_examples` writes; `vocab` (the
    corpus's) gives the special ids. Held-out examples draw from a generator of their own,
    seeded with (seed, 1), so that making them changes no draw of the training examples.

    Raises UserError when no paragraph has two sentences: NSP then has no pair to start from.
    """
    if len(vocab) != corpus.vocab_size:
        raise ValueError(f"vocabulary of {len(vocab)} tokens for a corpus of {corpus.vocab_size}")
    num_slots = max_num_mlm_preds(cfg.max_len, cfg.mask_rate)  # >= 1: config checks it
    if corpus.num_adjacent_pairs == 0:
        raise UserError(
            f"no paragraph of the corpus has two sentences (its {corpus.num_paragraphs} "
            "paragraphs have one each), so next-sentence prediction has no sentence pairs; "
            "a paragraph is a line, and its sentences are separated by ' . ': use a corpus "
            "with lines of several sentences, like WikiText's .tokens files"
        )
    rng = np.random.default_rng([cfg.seed, 1] if held_out else cfg.seed)
    a, b, is_next = nsp_pairs(corpus, cfg.next_sentence_prob, rng)
    s = corpus.sentence_offsets
    fits = (s[a + 1] - s[a]) + (s[b + 1] - s[b]) + 3 <= cfg.max_len
    a, b, is_next = a[fits], b[fits], is_next[fits]
    tokens, segments, valid_lens = pack_pairs(corpus, vocab, a, b, cfg.max_len)
    draws = masking.Draws.of(rng, len(tokens), cfg.max_len, num_slots, len(vocab))
    specials = masking.Specials(vocab.cls_id, vocab.sep_id, vocab.mask_id, len(vocab))
    num_preds = num_mlm_preds(valid_lens, cfg.mask_rate)  # (N,)
    tokens, positions, labels, weights = masking.mask_tokens(
        tokens, valid_lens, num_preds, specials, draws
    )
    ids = artifacts.id_dtype(corpus.vocab_size)
    return {
        "token_ids": tokens.astype(ids, copy=False),  # (N, L)
        "segments": segments,  # (N, L) uint8
        "valid_lens": valid_lens.astype(np.int16),  # (N,)
        "pred_positions": positions.astype(np.int16),  # (N, P)
        "mlm_labels": labels.astype(ids),  # (N, P)
        "mlm_weights": weights,  # (N, P) uint8
        "nsp_labels": is_next.astype(np.uint8),  # (N,)
    }
