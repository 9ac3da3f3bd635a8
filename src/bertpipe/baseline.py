"""The baseline stage's logic: a bag-of-words + word-overlap logistic regression for SNLI.

The yardstick for the fine-tuned BERT: trained and scored on the same splits, from the same
cleaned, lower-cased text that make_snli encodes (`snli.read_snli`).

Features of a pair (premise P, hypothesis H, whitespace tokens; "types" = distinct tokens):

1. `h:w`      1 if token type w occurs in H                   (hypothesis bag of words)
2. `hb:w1_w2` 1 if the bigram w1 w2 occurs in H               (hypothesis bag of bigrams)
3. `new:w`    1 if w occurs in H but not in P                 (lexicalised non-overlap)
4. `same:w`   1 if w occurs in both H and P                   (lexicalised overlap)
5. `p:w`      1 if w occurs in P                              (premise bag of words)
   Indicator features 1-5 are kept only if they occur in >= `min_count` training pairs.
6. Dense overlap features (always present):
   - share of H's types that occur in P, share of P's types that occur in H,
   - number of H types not in P, log(1 + that), share of H bigrams that occur in P,
   - log(1 + len H), log(1 + len P), len H / len P,
   - 1 if H has a negation (no, not, n't, never, nobody, nothing, none, nowhere, cannot,
     neither), 1 if P has one, and the XOR of the two,
   - 1 if every H type occurs in P, len H - len P.
   Dense features are standardised with the training mean/std.

The features are computed with numpy over word ids for all pairs at once (no string per
feature) and stored as one scipy CSR matrix: memory grows with the non-zero entries (about 36
indicators + 13 dense values a pair on SNLI), not with pairs x features. At SNLI's size
(550,690 training pairs, 33k features) the stage took 34 s and peaked at 1.1 GB on 2 cores,
1.0 GB of it reading the file; 550,000 generated pairs with 313k features took 46 s and 1.1 GB
(BENCHMARKS.md, "The baseline at SNLI's size").

Model: scikit-learn's multinomial `LogisticRegression` (3 classes, with a bias), which
minimises C·Σᵢ lossᵢ + ½‖W‖² with the biases unpenalised. `baseline.l2` keeps the meaning it
had with the earlier hand-written solver, mean cross-entropy + ½·l2·‖W‖² (biases unpenalised):
dividing that by l2 gives sklearn's form with C = 1 / (l2 · n) for n training pairs. The
solver is L-BFGS from zeros on a convex problem, so nothing random is drawn; BLAS runs on one
thread during the fit, so that its dot products (which OpenBLAS splits among threads) round
the same way whatever the machine's thread count, and sklearn's own OpenMP loops compute one
value per pair, so the result is the same bits at any thread count.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from bertpipe.snli import Pairs

log = logging.getLogger(__name__)

NEGATIONS = ("no", "not", "n't", "never", "nobody", "nothing", "none", "nowhere", "cannot",
             "neither")  # fmt: skip
NUM_DENSE = 13
TOLERANCE = 1e-5  # L-BFGS stops when no gradient entry exceeds this (mean-loss scale)
MAX_ITER = 2000


@dataclass(frozen=True)
class _Side:
    """The premises or the hypotheses of every pair, as word ids."""

    words: np.ndarray  # (tokens,) int32 word id of each token, sentence after sentence
    rows: np.ndarray  # (tokens,) int32 the pair each token belongs to
    lengths: np.ndarray  # (pairs,) int64 tokens per sentence


@dataclass(frozen=True)
class _Types:
    """One set per pair (word types or bigram types of one side), as (pair, id) entries."""

    rows: np.ndarray  # (entries,) int32 pair, ascending
    ids: np.ndarray  # (entries,) int32 word or bigram id
    in_premise: np.ndarray  # (entries,) bool: the type occurs in the pair's premise


Kinds = list[tuple[np.ndarray, np.ndarray]]  # per indicator kind: (rows ascending, codes)


def _side(sentences: list[str], vocab: dict[str, int]) -> _Side:
    """Word ids of `sentences`; `vocab` gains the words it lacks."""
    lengths = np.fromiter((len(s.split()) for s in sentences), np.int64, len(sentences))
    words = np.fromiter(
        (vocab.setdefault(w, len(vocab)) for s in sentences for w in s.split()),
        np.int32, int(lengths.sum()),
    )  # fmt: skip
    rows = np.repeat(np.arange(len(sentences), dtype=np.int32), lengths)
    return _Side(words, rows, lengths)


def _distinct(keys: np.ndarray) -> np.ndarray:
    """np.unique(keys), sorted: numpy 2.4's np.unique took 9.6 s on 8.4 M such keys, this 0.1 s."""
    keys = np.sort(keys)
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])]


def _isin(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """np.isin(keys, sorted_keys) by binary search: no copy of either array is made."""
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[at] == keys if len(sorted_keys) else np.zeros(len(keys), bool)


def _types(
    h_rows: np.ndarray, h_ids: np.ndarray, p_rows: np.ndarray, p_ids: np.ndarray, size: int
) -> tuple[_Types, _Types]:
    """The distinct ids (< size) of each pair's hypothesis and premise."""
    # (row, id) as one key row * size + id: the sets of all pairs are then one sort
    h_keys = _distinct(h_rows.astype(np.int64) * size + h_ids)
    p_keys = _distinct(p_rows.astype(np.int64) * size + p_ids)
    rows, ids = (h_keys // size).astype(np.int32), (h_keys % size).astype(np.int32)
    hypothesis = _Types(rows, ids, _isin(h_keys, p_keys))
    p_rows, p_ids = (p_keys // size).astype(np.int32), (p_keys % size).astype(np.int32)
    return hypothesis, _Types(p_rows, p_ids, np.ones(len(p_keys), bool))


def _bigrams(side: _Side, num_words: int) -> tuple[np.ndarray, np.ndarray]:
    """(pair, w1 * num_words + w2) of every bigram within one sentence."""
    within = side.rows[1:] == side.rows[:-1]
    codes = side.words[:-1][within].astype(np.int64) * num_words + side.words[1:][within]
    return side.rows[1:][within], codes


def _bigram_types(p: _Side, h: _Side, num_words: int) -> _Types:
    """The bigram types of each hypothesis, numbered 0.. over the hypotheses' bigrams."""
    h_rows, h_codes = _bigrams(h, num_words)
    # codes span num_words², too many to combine with rows: renumber them first; premise
    # bigrams that no hypothesis has cannot be shared with one, and are left out
    codes, h_ids = np.unique(h_codes, return_inverse=True)
    p_rows, p_codes = _bigrams(p, num_words)
    shared = _isin(p_codes, codes)
    p_ids = np.searchsorted(codes, p_codes[shared])
    return _types(h_rows, h_ids, p_rows[shared], p_ids, len(codes))[0]


def _per_pair(rows: np.ndarray, num_pairs: int) -> np.ndarray:
    return np.bincount(rows, minlength=num_pairs).astype(np.float64)


def _dense(
    p: _Side, h: _Side, words: _Types, premise: _Types, bigrams: _Types, negations: np.ndarray
) -> np.ndarray:
    """(pairs, NUM_DENSE) float64: the overlap features of the module docstring, unscaled."""
    n = len(h.lengths)
    h_types, p_types = _per_pair(words.rows, n), _per_pair(premise.rows, n)
    shared = _per_pair(words.rows[words.in_premise], n)
    new = h_types - shared
    h_bigrams = _per_pair(bigrams.rows, n)
    shared_bigrams = _per_pair(bigrams.rows[bigrams.in_premise], n)
    neg_h = _per_pair(words.rows[np.isin(words.ids, negations)], n) > 0
    neg_p = _per_pair(premise.rows[np.isin(premise.ids, negations)], n) > 0
    len_h, len_p = h.lengths.astype(np.float64), p.lengths.astype(np.float64)
    return np.stack([
        shared / np.maximum(h_types, 1), shared / np.maximum(p_types, 1), new, np.log1p(new),
        shared_bigrams / np.maximum(h_bigrams, 1), np.log1p(len_h), np.log1p(len_p),
        len_h / np.maximum(len_p, 1), neg_h, neg_p, neg_h != neg_p, new == 0, len_h - len_p,
    ], axis=1)  # fmt: skip


def _indicators(words: _Types, premise: _Types, bigrams: _Types, num_words: int) -> Kinds:
    """(rows, feature codes) of each indicator kind: h, new, same, p over word ids in blocks of
    num_words, then hb over bigram ids."""
    new = ~words.in_premise
    # int64 codes: four blocks of words and the bigrams may not fit in 32 bits
    base = np.int64(num_words)
    return [
        (words.rows, words.ids.astype(np.int64)),
        (words.rows[new], base + words.ids[new]),
        (words.rows[~new], 2 * base + words.ids[~new]),
        (premise.rows, 3 * base + premise.ids),
        (bigrams.rows, 4 * base + bigrams.ids),
    ]


def _pair_features(premises: list[str], hypotheses: list[str]) -> tuple[Kinds, np.ndarray]:
    """The indicators of every pair as codes, and its dense features (unscaled)."""
    vocab: dict[str, int] = {}
    p, h = _side(premises, vocab), _side(hypotheses, vocab)
    words, premise = _types(h.rows, h.words, p.rows, p.words, len(vocab))
    bigrams = _bigram_types(p, h, len(vocab))
    negations = np.array([vocab[w] for w in NEGATIONS if w in vocab], dtype=np.int32)
    dense = _dense(p, h, words, premise, bigrams, negations)
    return _indicators(words, premise, bigrams, len(vocab)), dense


def _keep_frequent(kinds: Kinds, num_train: int, min_count: int) -> tuple[Kinds, int]:
    """The entries of features seen in >= min_count training pairs, renumbered 0..F-1 (int32);
    F. Consumes `kinds` (each kind's codes are freed once renumbered)."""
    num_codes = max(int(codes.max(initial=-1)) for _, codes in kinds) + 1
    # a pair holds each feature at most once, so counting entries counts pairs
    seen = sum(np.bincount(codes[rows < num_train], minlength=num_codes) for rows, codes in kinds)
    kept = seen >= min_count
    column = (np.cumsum(kept) - 1).astype(np.int32)
    out = []
    while kinds:
        rows, codes = kinds.pop(0)
        mask = kept[codes]
        out.append((rows[mask], column[codes[mask]]))
    return out, int(kept.sum())


def _csr(kinds: Kinds, dense: np.ndarray, num_indicators: int) -> sparse.csr_array:
    """The (pairs, indicators + NUM_DENSE) matrix, filled row by row in place: no copy of the
    entries in COO form is made."""
    n = len(dense)
    counts = sum(np.bincount(rows, minlength=n) for rows, _ in kinds) + NUM_DENSE
    # 32-bit offsets while they fit: scipy would widen the indices to match 64-bit ones
    index_type = np.int32 if counts.sum() < 2**31 else np.int64
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(index_type)
    indices = np.empty(indptr[-1], dtype=index_type)
    data = np.ones(indptr[-1], dtype=np.float64)
    fill = indptr[:-1].astype(np.int64)  # (pairs,) next free slot of each row
    for rows, columns in kinds:
        # entry i of this kind goes to its row's next free slot plus its place in its row's
        # run (rows ascending): i - where the run starts
        slot = np.arange(len(rows))
        slot += (fill - np.searchsorted(rows, np.arange(n)))[rows]
        indices[slot] = columns
        fill += np.bincount(rows, minlength=n)
    slots = fill[:, None] + np.arange(NUM_DENSE)
    indices[slots] = num_indicators + np.arange(NUM_DENSE)
    data[slots] = dense
    return sparse.csr_array((data, indices, indptr), shape=(n, num_indicators + NUM_DENSE))


def _rows(X: sparse.csr_array, start: int, stop: int) -> sparse.csr_array:
    """Rows start..stop as a view of X's arrays (scipy's slicing would copy them)."""
    lo, hi = X.indptr[start], X.indptr[stop]
    indptr = X.indptr[start : stop + 1] - lo
    shape = (stop - start, X.shape[1])
    return sparse.csr_array((X.data[lo:hi], X.indices[lo:hi], indptr), shape=shape)


def features(
    train: Pairs, test: Pairs, min_count: int
) -> tuple[sparse.csr_array, sparse.csr_array]:
    """The (train, test) feature matrices; columns: kept indicators, then the dense features."""
    num_train = len(train.labels)
    kinds, dense = _pair_features(
        train.premises + test.premises, train.hypotheses + test.hypotheses
    )
    mean, std = dense[:num_train].mean(0), dense[:num_train].std(0)
    std[std == 0] = 1.0
    kinds, num_indicators = _keep_frequent(kinds, num_train, min_count)
    X = _csr(kinds, (dense - mean) / std, num_indicators)
    return _rows(X, 0, num_train), _rows(X, num_train, X.shape[0])


def fit(X: sparse.csr_array, y: np.ndarray, l2: float) -> LogisticRegression:
    """The L2-penalised multinomial logistic regression (see the module docstring for C)."""
    model = LogisticRegression(C=1.0 / (l2 * X.shape[0]), tol=TOLERANCE, max_iter=MAX_ITER)
    with threadpool_limits(limits=1, user_api="blas"):
        model.fit(X, y)
    return model


def bow_baseline(
    train: Pairs, test: Pairs, l2: float, min_count: int
) -> tuple[dict[str, float], np.ndarray]:
    """Fit on `train`, score `test`: (metrics, test predictions (N,) int64)."""
    start = time.perf_counter()
    Xtr, Xte = features(train, test, min_count)
    built = time.perf_counter()
    y = np.asarray(train.labels, dtype=np.int64)
    model = fit(Xtr, y, l2)
    log.info("features %.1f s (%d non-zero), fit %.1f s (%d L-BFGS iterations)",
             built - start, Xtr.nnz, time.perf_counter() - built, model.n_iter_[0])  # fmt: skip
    metrics = {
        "train_accuracy": round(float((model.predict(Xtr) == y).mean()), 4),
        "num_features": Xtr.shape[1],
        "num_train_pairs": len(y),
        "iterations": int(model.n_iter_[0]),
        "seconds": round(time.perf_counter() - start, 2),
    }
    return metrics, model.predict(Xte).astype(np.int64)
