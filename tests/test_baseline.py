"""Tests for the baseline stage: a bag-of-words logistic regression on the SNLI splits."""

from __future__ import annotations

import itertools
import math
import tracemalloc
from collections import Counter

import numpy as np
import pytest
import yaml
from scipy import sparse
from threadpoolctl import threadpool_limits

from bertpipe import artifacts, baseline, snli, synthetic
from bertpipe.errors import UserError


@pytest.fixture
def tables(tmp_path):
    """A download_snli folder of generated pairs (the small profile's NLI task)."""
    folder = tmp_path / "download_snli"
    folder.mkdir()
    for split, n in (("train", 600), ("test", 200), ("dev", 50)):
        rows = synthetic.snli_rows(n, seed=len(split))
        text = "".join("\t".join(row) + "\n" for row in rows)
        (folder / f"snli_1.0_{split}.txt").write_text(text, encoding="utf-8")
    return folder


def run_baseline(stage, tmp_path, tables, split="test", name="baseline.json") -> dict:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "baseline": {"l2": 3.0e-3, "min_count": 2}, "evaluate": {"batch_size": 8, "split": split},
    }))  # fmt: skip
    out = tmp_path / name
    stage("baseline").main(
        ["--params", str(params), "--tables", str(tables), "--metrics", str(out)]
    )
    return artifacts.read_json(out)


def test_the_baseline_learns_the_task_and_is_deterministic(stage, tmp_path, tables):
    first = run_baseline(stage, tmp_path, tables)
    assert first["split"] == "test" and first["num_train_pairs"] > 500
    assert first["accuracy"] > 0.6  # chance is 1/3; the generated task is lexical
    assert first["train_accuracy"] >= first["accuracy"] and 0 < first["macro_f1"] <= 1
    again = run_baseline(stage, tmp_path, tables, name="again.json")
    assert {k: v for k, v in again.items() if k != "seconds"} == {
        k: v for k, v in first.items() if k != "seconds"
    }


def test_the_split_comes_from_evaluate_and_must_exist(stage, tmp_path, tables):
    assert run_baseline(stage, tmp_path, tables, split="dev")["split"] == "dev"
    (tables / "snli_1.0_dev.txt").unlink()
    with pytest.raises(UserError, match=r"no 'dev' split for evaluate\.split"):
        run_baseline(stage, tmp_path, tables, split="dev")


def pairs(premises: list[str], hypotheses: list[str], labels) -> snli.Pairs:
    return snli.Pairs(premises, hypotheses, np.asarray(labels, dtype=np.uint8), 0, 0, 0)


def reference(premise: str, hypothesis: str) -> tuple[set, list[float]]:
    """The module docstring's features of one pair, written out pair by pair with sets."""
    p, h = premise.split(), hypothesis.split()
    sp, sh = set(p), set(h)
    bp, bh = set(itertools.pairwise(p)), set(itertools.pairwise(h))
    names = {("h", w) for w in sh} | {("hb", b) for b in bh} | {("p", w) for w in sp}
    names |= {("new", w) for w in sh - sp} | {("same", w) for w in sh & sp}
    new, neg_h, neg_p = len(sh - sp), bool(sh & NEGATIONS), bool(sp & NEGATIONS)
    dense = [len(sh & sp) / max(len(sh), 1), len(sh & sp) / max(len(sp), 1), new,
             math.log1p(new), len(bh & bp) / max(len(bh), 1), math.log1p(len(h)),
             math.log1p(len(p)), len(h) / max(len(p), 1), neg_h, neg_p, neg_h != neg_p,
             new == 0, len(h) - len(p)]  # fmt: skip
    return names, dense


NEGATIONS = {"no", "not", "n't", "never", "nobody", "nothing", "none", "nowhere", "cannot",
             "neither"}  # fmt: skip


def test_the_features_are_the_docstrings_pair_by_pair(tables):
    rows = snli.read_snli(tables / "snli_1.0_train.txt")
    odd = (["a man is not sleeping", "a a a dog", "x", "", "nobody is here ."],
           ["a man is awake", "a dog a dog", "", "y", "nobody ."])  # fmt: skip
    train = pairs(rows.premises + odd[0], rows.hypotheses + odd[1], [0] * (len(rows.labels) + 5))
    test = pairs(["a man is never sleeping"], ["a cat ."], [1])
    Xtr, Xte = baseline.features(train, test, min_count=2)
    refs = [reference(p, h) for p, h in zip(train.premises, train.hypotheses, strict=True)]
    counts = Counter(name for names, _ in refs for name in names)
    kept = {name for name, c in counts.items() if c >= 2}
    # columns are unnamed: compare each column by the set of training rows that have it
    want = Counter(
        frozenset(i for i, (names, _) in enumerate(refs) if name in names) for name in kept
    )
    csc = Xtr.tocsc()
    num_indicators = Xtr.shape[1] - baseline.NUM_DENSE
    got = Counter(
        frozenset(csc.indices[csc.indptr[j] : csc.indptr[j + 1]].tolist())
        for j in range(num_indicators)
    )
    assert got == want and len(kept) == num_indicators
    assert (Xtr[:, :num_indicators].data == 1).all()
    dense = np.array([d for _, d in refs], dtype=np.float64)
    mean, std = dense.mean(0), dense.std(0)
    std[std == 0] = 1
    np.testing.assert_allclose(Xtr[:, num_indicators:].toarray(), (dense - mean) / std, atol=1e-12)
    _, test_dense = reference(test.premises[0], test.hypotheses[0])
    np.testing.assert_allclose(Xte[:, num_indicators:].toarray()[0], (test_dense - mean) / std)
    test_names = reference(test.premises[0], test.hypotheses[0])[0] & kept
    assert Xte[:, :num_indicators].nnz == len(test_names)  # unseen features are dropped


def random_problem(rows: int, columns: int, seed: int = 0):
    """A sparse 0/1 matrix and 3-class labels that depend on it (plus noise)."""
    rng = np.random.default_rng(seed)
    at = (rng.integers(0, rows, 20 * rows), rng.integers(0, columns, 20 * rows))
    X = sparse.csr_array((np.ones(20 * rows), at), shape=(rows, columns))
    X.data[:] = 1.0  # an entry drawn twice was summed
    y = (X @ rng.normal(size=(columns, 3)) + rng.gumbel(size=(rows, 3))).argmax(1)
    return X, y


def coefficients(model) -> bytes:
    return model.coef_.tobytes() + model.intercept_.tobytes()


def test_the_fit_is_the_same_bits_at_1_and_2_threads_and_run_to_run():
    # 3 x 4,001 parameters: OpenBLAS splits a dot product among threads above 10,000 entries
    X, y = random_problem(2000, 4000)
    fits = []
    for threads in (1, 2, 2):
        with threadpool_limits(limits=threads):
            fits.append(coefficients(baseline.fit(X, y, l2=3e-3)))
    assert fits[0] == fits[1] == fits[2]


def test_l2_is_the_penalty_on_the_mean_cross_entropy():
    """At the fit, the gradient of mean cross-entropy + l2/2 ||W||^2 (biases unpenalised)
    vanishes; with another l2 it does not."""
    X, y = random_problem(500, 300)
    model = baseline.fit(X, y, l2=3e-3)
    logits = X @ model.coef_.T + model.intercept_
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1  # d(cross-entropy)/d(logits)
    grad_w, grad_b = (X.T @ p).T / len(y), p.mean(0)
    # the solver stops once no gradient entry exceeds baseline.TOLERANCE (1e-5)
    assert np.abs(grad_w + 3e-3 * model.coef_).max() < 3 * baseline.TOLERANCE
    assert np.abs(grad_b).max() < 3 * baseline.TOLERANCE
    assert np.abs(grad_w + 6e-3 * model.coef_).max() > 100 * baseline.TOLERANCE


def test_memory_grows_with_the_non_zero_entries_not_pairs_times_features():
    rng = np.random.default_rng(0)
    words = np.array([f"w{i}" for i in range(8_000)])
    premises = [" ".join(s) for s in words[rng.integers(0, len(words), (8_000, 12))]]
    hypotheses = [" ".join(s) for s in words[rng.integers(0, len(words), (8_000, 6))]]
    train = pairs(premises, hypotheses, rng.integers(0, 3, 8_000))
    tracemalloc.start()  # numpy and scipy report their buffers to it
    Xtr, _ = baseline.features(train, pairs(premises[:10], hypotheses[:10], [0] * 10), 2)
    baseline.fit(Xtr, train.labels, l2=0.1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert Xtr.shape[1] > 20_000  # dense, the matrix alone would take 1.5 GB
    # CSR takes 12 bytes an entry, building it a few int64 temporaries an entry; L-BFGS keeps
    # 10 pairs of vectors of 3 x features floats: 100 B an entry and 1 kB a feature is twice
    # the peak measured
    assert peak < 100 * Xtr.nnz + 1_000 * Xtr.shape[1]
