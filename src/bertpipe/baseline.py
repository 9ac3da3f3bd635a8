"""The baseline stage's logic: a bag-of-words + word-overlap logistic regression for SNLI.

The yardstick for the fine-tuned BERT: trained and scored on the same splits, from the same
cleaned, lower-cased text that make_snli encodes (`snli.read_snli`). Deterministic (a convex
problem solved from zeros), numpy + torch only, seconds on a CPU.

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
   - 1 if H has a negation (no, not, n't, never, nobody, nothing, none, nowhere, cannot),
     1 if P has one, and the XOR of the two,
   - 1 if every H type occurs in P, len H - len P.
   Dense features are standardised with the training mean/std.

Model: multinomial logistic regression (3 classes, with bias), L2 penalty `l2` on the weights
(not the bias), fit full-batch with L-BFGS (strong Wolfe line search) in float64 from zeros: the
optimum is unique, so nothing random is drawn.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter

import numpy as np
import torch

from bertpipe.snli import LABELS, Pairs

NEGATIONS = frozenset(
    ["no", "not", "n't", "never", "nobody", "nothing", "none", "nowhere", "cannot", "neither"]
)
NUM_DENSE = 13


def _bigrams(tokens: list[str]) -> set[str]:
    return {f"{a}_{b}" for a, b in itertools.pairwise(tokens)}


def _pair_features(premise: str, hypothesis: str) -> tuple[list[str], list[float]]:
    p, h = premise.split(), hypothesis.split()
    sp, sh = set(p), set(h)
    bp, bh = _bigrams(p), _bigrams(h)
    sparse = [f"h:{w}" for w in sh]
    sparse += [f"hb:{b}" for b in bh]
    sparse += [f"new:{w}" for w in sh - sp]
    sparse += [f"same:{w}" for w in sh & sp]
    sparse += [f"p:{w}" for w in sp]
    new = len(sh - sp)
    neg_h, neg_p = float(bool(sh & NEGATIONS)), float(bool(sp & NEGATIONS))
    dense = [
        len(sh & sp) / max(len(sh), 1),
        len(sh & sp) / max(len(sp), 1),
        float(new),
        float(np.log1p(new)),
        len(bh & bp) / max(len(bh), 1),
        float(np.log1p(len(h))),
        float(np.log1p(len(p))),
        len(h) / max(len(p), 1),
        neg_h,
        neg_p,
        float(neg_h != neg_p),
        float(new == 0),
        float(len(h) - len(p)),
    ]
    return sparse, dense


def _featurize(premises: list[str], hypotheses: list[str]) -> list:
    return [_pair_features(p, h) for p, h in zip(premises, hypotheses, strict=True)]


def _matrix(feats, index: dict[str, int], mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """Sparse (n, F) float64 matrix: indicator columns, then the standardised dense features."""
    rows, cols, vals = [], [], []
    base = len(index)
    for i, (sparse, dense) in enumerate(feats):
        hit = sorted({index[f] for f in sparse if f in index})
        rows += [i] * (len(hit) + NUM_DENSE)
        cols += hit + list(range(base, base + NUM_DENSE))
        vals += [1.0] * len(hit) + ((np.asarray(dense) - mean) / std).tolist()
    indices = torch.tensor([rows, cols], dtype=torch.int64)
    values = torch.tensor(vals, dtype=torch.float64)
    shape = (len(feats), base + NUM_DENSE)
    return torch.sparse_coo_tensor(indices, values, shape, check_invariants=True).coalesce()


def _fit(X: torch.Tensor, y: torch.Tensor, l2: float, num_classes: int) -> torch.Tensor:
    W = torch.zeros(X.shape[1] + 1, num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [W], lr=1.0, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
        history_size=20, line_search_fn="strong_wolfe",
    )  # fmt: skip
    n = len(y)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = torch.sparse.mm(X, W[:-1]) + W[-1]
        loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum") / n
        loss = loss + 0.5 * l2 * (W[:-1] ** 2).sum()
        loss.backward()
        return loss

    for _ in range(4):  # a few restarts of L-BFGS' iteration budget, until it converges
        opt.step(closure)
    return W.detach()


def _predict(X: torch.Tensor, W: torch.Tensor) -> np.ndarray:
    return (torch.sparse.mm(X, W[:-1]) + W[-1]).argmax(1).numpy()


def bow_baseline(
    train: Pairs, test: Pairs, l2: float, min_count: int
) -> tuple[dict[str, float], np.ndarray]:
    """Fit on `train`, score `test`: (metrics, test predictions (N,) int64)."""
    start = time.perf_counter()
    tr = _featurize(train.premises, train.hypotheses)
    te = _featurize(test.premises, test.hypotheses)
    counts = Counter(f for sparse, _ in tr for f in set(sparse))
    names = sorted(f for f, c in counts.items() if c >= min_count)
    index = {f: i for i, f in enumerate(names)}
    dense = np.array([d for _, d in tr], dtype=np.float64).reshape(len(tr), NUM_DENSE)
    mean, std = dense.mean(0), dense.std(0)
    std[std == 0] = 1.0
    Xtr, Xte = _matrix(tr, index, mean, std), _matrix(te, index, mean, std)
    ytr = torch.as_tensor(np.asarray(train.labels, dtype=np.int64))
    W = _fit(Xtr, ytr, l2, len(LABELS))
    predicted = _predict(Xte, W)
    metrics = {
        "train_accuracy": round(float((_predict(Xtr, W) == ytr.numpy()).mean()), 4),
        "num_features": len(index) + NUM_DENSE,
        "num_train_pairs": len(ytr),
        "seconds": round(time.perf_counter() - start, 2),
    }
    return metrics, predicted
