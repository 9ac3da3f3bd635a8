"""Pretraining examples: NSP pairing, MLM masking counts and shares, padding, determinism."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bertpipe import make_examples, wikitext
from bertpipe.config import MakeExamplesConfig
from bertpipe.errors import UserError
from bertpipe.vocab import SPECIALS, Vocab
from bertpipe.wikitext import Corpus

V = 37  # vocabulary size of the generated corpora; content ids are 5..36 (no specials)
VOCAB = Vocab([*SPECIALS, *(f"w{i}" for i in range(5, V))])  # the specials at ids 0-4, as ours
CLS_ID, MASK_ID, PAD_ID, SEP_ID = VOCAB.cls_id, VOCAB.mask_id, VOCAB.pad_id, VOCAB.sep_id
ARRAYS = ["token_ids", "segments", "valid_lens", "pred_positions", "mlm_labels", "mlm_weights"]


def corpus_of(ids, sentence_lens, paragraph_sizes) -> Corpus:
    return Corpus(
        token_ids=np.asarray(ids, dtype=np.uint16),
        sentence_offsets=np.concatenate([[0], np.cumsum(sentence_lens)]).astype(np.int64),
        paragraph_offsets=np.concatenate([[0], np.cumsum(paragraph_sizes)]).astype(np.int64),
        vocab_size=V,
        vocab_sha1="0" * 40,
    )


def random_corpus(seed=0, paragraphs=601, longest=40) -> Corpus:
    """About 3,000 sentences of 1..`longest` random content ids in paragraphs of 1..9."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 10, paragraphs)
    lens = rng.integers(1, longest + 1, sizes.sum())
    return corpus_of(rng.integers(5, V, lens.sum()), lens, sizes)


def cfg(max_len=37, mask_rate=0.15, next_sentence_prob=0.5, seed=1) -> MakeExamplesConfig:
    return MakeExamplesConfig(max_len, mask_rate, next_sentence_prob, seed)


def restored(ex: dict) -> np.ndarray:
    """(N, L) tokens with the original ids put back at the prediction positions."""
    tokens = ex["token_ids"].astype(np.int64)
    rows, slots = np.nonzero(ex["mlm_weights"])
    tokens[rows, ex["pred_positions"][rows, slots]] = ex["mlm_labels"][rows, slots]
    return tokens


def predicted(ex: dict) -> tuple[np.ndarray, np.ndarray]:
    """(corrupted id, label) of every real prediction slot."""
    w = ex["mlm_weights"].astype(bool)
    got = np.take_along_axis(ex["token_ids"].astype(np.int64), ex["pred_positions"].astype(int), 1)
    return got[w], ex["mlm_labels"][w].astype(np.int64)


# Python's round of n * 0.15 (banker's on the float product), from the reference table.
ROUND_TABLE = {range(1, 10): 1, range(10, 17): 2, range(17, 24): 3, range(24, 31): 4,
               range(31, 37): 5, range(37, 44): 6, range(44, 50): 7, range(50, 57): 8,
               range(57, 64): 9, range(64, 65): 10}  # fmt: skip


def test_num_mlm_preds_table_for_015():
    n = np.arange(1, 65)
    expected = [v for r, v in ROUND_TABLE.items() for _ in r]
    assert make_examples.num_mlm_preds(n, 0.15).tolist() == expected
    assert make_examples.num_mlm_preds(np.array([10, 30, 50]), 0.15).tolist() == [2, 4, 8]


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.15, 0.25, 0.3, 0.35, 0.45, 0.5, 0.7])
def test_num_mlm_preds_is_pythons_round(rate):
    n = np.arange(1, 801)
    assert make_examples.num_mlm_preds(n, rate).tolist() == [max(1, round(k * rate)) for k in n]


def test_max_num_mlm_preds():
    assert make_examples.max_num_mlm_preds(64, 0.15) == 10
    assert make_examples.max_num_mlm_preds(128, 0.15) == 19
    assert make_examples.max_num_mlm_preds(37, 0.15) == 6  # 5.55


def test_layout_dtypes_and_padding():
    corpus = random_corpus()
    ex = make_examples.make_examples(corpus, VOCAB, cfg())
    n = len(ex["nsp_labels"])
    assert n > 500
    shapes = {k: v.shape for k, v in ex.items()}
    assert shapes == {"token_ids": (n, 37), "segments": (n, 37), "valid_lens": (n,),
                      "pred_positions": (n, 6), "mlm_labels": (n, 6), "mlm_weights": (n, 6),
                      "nsp_labels": (n,)}  # fmt: skip
    dtypes = {k: v.dtype.name for k, v in ex.items()}
    assert dtypes == {"token_ids": "uint16", "segments": "uint8", "valid_lens": "int16",
                      "pred_positions": "int16", "mlm_labels": "uint16", "mlm_weights": "uint8",
                      "nsp_labels": "uint8"}  # fmt: skip
    tokens, valid = restored(ex), ex["valid_lens"].astype(int)
    col = np.arange(37)
    assert valid.max() <= 37 and valid.min() >= 5
    assert np.all(ex["token_ids"][col >= valid[:, None]] == PAD_ID)  # padding is never touched
    assert np.all(tokens[:, 0] == CLS_ID)
    assert np.all(tokens[np.arange(n), valid - 1] == SEP_ID)
    len_a = (ex["segments"] == 0).sum(axis=1) - (37 - valid) - 2
    assert np.all(tokens[np.arange(n), len_a + 1] == SEP_ID)
    expected_segments = (col >= len_a[:, None] + 2) & (col < valid[:, None])
    assert np.array_equal(ex["segments"], expected_segments.astype(np.uint8))
    # Real slots first, weights 1; padding slots point at position 0 with label 0, weight 0.
    w = ex["mlm_weights"].astype(bool)
    assert np.all(w[:, :-1] >= w[:, 1:])
    pos = ex["pred_positions"].astype(int)
    assert np.all(pos[~w] == 0) and np.all(ex["mlm_labels"][~w] == 0)
    assert np.all(np.diff(np.where(w, pos, 99), axis=1)[w[:, 1:]] > 0)  # strictly ascending
    assert np.all((pos[w] >= 1) & (pos[w] < np.broadcast_to(valid[:, None], w.shape)[w]))


def test_pairs_are_corpus_sentences_and_true_next_when_labelled():
    corpus = random_corpus(seed=5)
    ex = make_examples.make_examples(corpus, VOCAB, cfg(next_sentence_prob=0.4))
    s, p = corpus.sentence_offsets, corpus.paragraph_offsets
    where = defaultdict(list)  # sentence content -> its indices
    for i in range(corpus.num_sentences):
        where[tuple(corpus.token_ids[s[i] : s[i + 1]].tolist())].append(i)
    last = set((p[1:] - 1).tolist())  # last sentence of each paragraph has no true next
    tokens, valid = restored(ex), ex["valid_lens"]
    len_a = (ex["segments"][:, :] == 0).sum(axis=1) - (37 - valid) - 2
    for row, la, vl, is_next in zip(tokens, len_a, valid, ex["nsp_labels"], strict=True):
        a, b = tuple(row[1 : la + 1].tolist()), tuple(row[la + 2 : vl - 1].tolist())
        assert a in where and b in where
        if is_next:
            assert any(i not in last and i + 1 in where[b] for i in where[a])


def test_number_of_predictions_and_labels():
    ex = make_examples.make_examples(random_corpus(seed=2), VOCAB, cfg(mask_rate=0.2))
    valid = ex["valid_lens"].astype(int)
    expected = np.maximum(1, [round(v * 0.2) for v in valid])
    assert np.array_equal(ex["mlm_weights"].sum(axis=1), expected)
    _, labels = predicted(ex)
    assert np.all((labels >= 5) & (labels < V))  # real content ids, never <cls>/<sep>/<pad>
    # Outside the prediction slots nothing changed.
    original = restored(ex)
    changed = original != ex["token_ids"]
    rows, cols = np.nonzero(changed)
    chosen = set(zip(*np.nonzero(ex["mlm_weights"]), strict=True))
    slot_of = {(r, int(ex["pred_positions"][r, k])) for r, k in chosen}
    assert {(int(r), int(c)) for r, c in zip(rows, cols, strict=True)} <= slot_of


def test_mask_keep_random_shares():
    corpus = random_corpus(seed=3, paragraphs=2001, longest=20)
    ex = make_examples.make_examples(corpus, VOCAB, cfg(max_len=43, seed=4))
    got, labels = predicted(ex)
    assert len(got) > 20000
    masked, kept = got == MASK_ID, got == labels
    # A random replacement can itself be <mask> or the original id (1/37 each).
    assert masked.mean() == pytest.approx(0.8 + 0.1 / V, abs=0.012)
    assert kept.mean() == pytest.approx(0.1 + 0.1 / V, abs=0.01)
    replaced = got[~masked & ~kept]
    assert len(replaced) / len(got) == pytest.approx(0.1 * (V - 2) / V, abs=0.01)
    assert set(replaced.tolist()) == set(range(V)) - {MASK_ID}  # whole vocabulary, specials too


def test_positions_are_uniform_over_candidates():
    # 3,001 paragraphs of two 10-token sentences, always the true next: every example is
    # <cls> 10 <sep> 10 <sep> (length 23, 20 candidates, round(3.45) = 3 predictions).
    sizes, lens = np.full(3001, 2), np.full(6002, 10)
    ids = np.random.default_rng(0).integers(5, V, 60020)
    ex = make_examples.make_examples(
        corpus_of(ids, lens, sizes), VOCAB, cfg(64, next_sentence_prob=1.0)
    )
    assert np.all(ex["valid_lens"] == 23) and np.all(ex["mlm_weights"].sum(axis=1) == 3)
    pos = ex["pred_positions"][:, :3].ravel()
    counts = np.bincount(pos, minlength=23)
    assert counts[0] == counts[11] == counts[22] == 0  # <cls> and both <sep>s
    assert np.all(np.abs(counts[np.r_[1:11, 12:22]] / (3001 * 3 / 20) - 1) < 0.2)


def test_literal_specials_in_the_text_are_never_predicted():
    # Short sentences of ids 3..6: half the content is a literal "<cls>" or "<sep>" (ids 3, 4),
    # which d2l never predicts; some pairs then have fewer candidates than wanted (even none).
    rng = np.random.default_rng(6)
    sizes = rng.integers(1, 6, 701)
    lens = rng.integers(1, 7, sizes.sum())
    corpus = corpus_of(rng.integers(3, 7, lens.sum()), lens, sizes)
    ex = make_examples.make_examples(corpus, VOCAB, cfg(max_len=41))
    _, labels = predicted(ex)
    assert len(labels) > 1000 and not np.isin(labels, [CLS_ID, SEP_ID]).any()
    original = restored(ex)
    col = np.arange(41)
    candidates = ((col < ex["valid_lens"][:, None]) & ~np.isin(original, [CLS_ID, SEP_ID])).sum(1)
    wanted = np.maximum(1, np.round(ex["valid_lens"] * 0.15)).astype(int)
    assert np.any(candidates == 0) and np.any(candidates < wanted)  # the cap below matters
    assert np.array_equal(ex["mlm_weights"].sum(axis=1), np.minimum(wanted, candidates))


def test_nsp_positive_rate_and_pairs():
    corpus = random_corpus(seed=7, longest=20)
    a, b, is_next = make_examples.nsp_pairs(corpus, 0.3, np.random.default_rng(0))
    p = corpus.paragraph_offsets
    adjacent = np.setdiff1d(np.arange(corpus.num_sentences), p[1:] - 1)
    assert np.array_equal(np.sort(a), adjacent)  # every adjacent pair exactly once
    assert np.all(b[is_next] == a[is_next] + 1)
    assert is_next.mean() == pytest.approx(0.3, abs=0.03)
    ex = make_examples.make_examples(corpus, VOCAB, cfg(max_len=43, next_sentence_prob=0.3))
    assert len(ex["nsp_labels"]) == len(adjacent)  # 20 + 20 + 3 <= 43: nothing dropped
    assert ex["nsp_labels"].mean() == pytest.approx(0.3, abs=0.03)


def test_negative_next_sentence_is_paragraph_uniform():
    # 50 one-sentence and 50 nine-sentence paragraphs, alternating: a uniform paragraph is a
    # one-sentence one half the time; a uniform sentence would be one only 50/500 of the time.
    sizes = np.tile([1, 9], 50)
    corpus = corpus_of(np.arange(500) % 30 + 5, np.ones(500, int), sizes)
    a, b, is_next = make_examples.nsp_pairs(corpus, 0.0, np.random.default_rng(1))
    assert len(a) == 400 and not is_next.any()
    paragraph_of = np.repeat(np.arange(100), sizes)
    singles = np.isin(b, corpus.paragraph_offsets[:-1][sizes == 1])
    assert singles.mean() == pytest.approx(0.5, abs=0.1)
    in_nines = b[~singles] - corpus.paragraph_offsets[paragraph_of[b[~singles]]]
    assert set(in_nines.tolist()) == set(range(9))  # any sentence of the paragraph


def test_overlong_pairs_are_dropped_after_substitution():
    # 100 paragraphs of two 2-token sentences, then 100 of one 50-token sentence.
    sizes = np.r_[np.full(100, 2), np.full(100, 1)]
    lens = np.r_[np.full(200, 2), np.full(100, 50)]
    corpus = corpus_of(np.full(lens.sum(), 9), lens, sizes)
    true_next = make_examples.make_examples(corpus, VOCAB, cfg(max_len=20, next_sentence_prob=1.0))
    assert len(true_next["nsp_labels"]) == 100
    random_next = make_examples.make_examples(
        corpus, VOCAB, cfg(max_len=20, next_sentence_prob=0.0)
    )
    assert 35 <= len(random_next["nsp_labels"]) <= 65  # b from a long paragraph: dropped
    assert np.all(random_next["valid_lens"] == 7)


def test_length_limit_is_inclusive():
    corpus = corpus_of(np.full(93, 7), [30, 31, 32], [3])
    ex = make_examples.make_examples(corpus, VOCAB, cfg(max_len=64, next_sentence_prob=1.0))
    assert ex["valid_lens"].tolist() == [64]  # 30+31+3 kept, 31+32+3 dropped
    assert ex["mlm_weights"].sum() == 10


def test_empty_sentence_makes_a_valid_pair():
    corpus = corpus_of([11, 12, 13], [0, 3], [2])
    ex = make_examples.make_examples(corpus, VOCAB, cfg(max_len=9, next_sentence_prob=1.0))
    assert restored(ex).tolist() == [[CLS_ID, SEP_ID, 11, 12, 13, SEP_ID, 1, 1, 1]]
    assert ex["segments"].tolist() == [[0, 0, 1, 1, 1, 1, 0, 0, 0]]


def test_a_corpus_of_one_sentence_paragraphs_is_refused_for_that_reason():
    corpus = corpus_of(np.full(30, 9), [3] * 10, [1] * 10)  # 10 paragraphs of 1 short sentence
    with pytest.raises(UserError, match=r"no paragraph of the corpus has two sentences") as info:
        make_examples.make_examples(corpus, VOCAB, cfg(max_len=64))
    assert "its 10 paragraphs have one each" in str(info.value)
    assert "max_len" not in str(info.value)  # the sentences are short: length is not the cause
    one_pair = corpus_of(np.full(30, 9), [3] * 10, [1] * 8 + [2])
    assert len(make_examples.make_examples(one_pair, VOCAB, cfg(max_len=64))["nsp_labels"]) == 1


def test_same_seed_same_arrays_other_seed_different():
    corpus = random_corpus(seed=8)
    one, two = (make_examples.make_examples(corpus, VOCAB, cfg(seed=11)) for _ in range(2))
    other = make_examples.make_examples(corpus, VOCAB, cfg(seed=12))
    assert all(np.array_equal(one[k], two[k]) for k in one)
    assert not np.array_equal(one["nsp_labels"], other["nsp_labels"][: len(one["nsp_labels"])])


# SHA-1 of every array (name, dtype, shape, bytes) of random_corpus(0)'s examples under cfg(), as
# made before masking moved to bertpipe.masking: static masks must stay d2l's, byte for byte.
STATIC_SHA1 = {False: "679ca60aa30b3fdc50adfd2706a2545aa1945b56",
               True: "580ef5ffd5dd380416af9e53ae082923035e6429"}  # fmt: skip


@pytest.mark.parametrize("held_out", [False, True])
def test_static_examples_keep_their_bytes(held_out):
    ex = make_examples.make_examples(random_corpus(0), VOCAB, cfg(), held_out)
    digest = hashlib.sha1()
    for name in sorted(ex):
        digest.update(f"{name} {ex[name].dtype} {ex[name].shape}".encode())
        digest.update(ex[name].tobytes())
    assert digest.hexdigest() == STATIC_SHA1[held_out]


def test_special_ids_come_from_the_vocabulary():
    """A d2l 1.0.3-style vocabulary (alphabetical: "0".."9" sort before the specials, which
    land at ids 10-14) gives the same examples as ours, with its own special ids."""
    words = [str(d) for d in range(10)] + [f"w{i}" for i in range(15, V)]
    d2l = Vocab(sorted([*SPECIALS, *words]))
    assert (d2l.cls_id, d2l.mask_id, d2l.pad_id, d2l.sep_id, d2l.unk_id) == (10, 11, 12, 13, 14)
    ours_vocab = Vocab([*SPECIALS, *words])  # the same tokens, specials at 0-4
    to_d2l = np.array([d2l[t] for t in ours_vocab.tokens])  # our id -> d2l's id of that token
    corpus = random_corpus(seed=3)
    theirs_corpus = Corpus(**{**vars(corpus), "token_ids": to_d2l[corpus.token_ids]})
    ours = make_examples.make_examples(corpus, ours_vocab, cfg(max_len=43))
    theirs = make_examples.make_examples(theirs_corpus, d2l, cfg(max_len=43))
    for name in ("segments", "valid_lens", "pred_positions", "mlm_weights", "nsp_labels"):
        assert np.array_equal(theirs[name], ours[name]), name
    valid = ours["valid_lens"].astype(int)
    real = np.arange(43) < valid[:, None]
    assert np.array_equal(restored(theirs)[real], to_d2l[restored(ours)][real])
    assert np.all(theirs["token_ids"][~real] == d2l.pad_id)
    assert np.all(theirs["token_ids"][:, 0] == d2l.cls_id)
    assert np.all(theirs["token_ids"][np.arange(len(valid)), valid - 1] == d2l.sep_id)
    got, labels = predicted(theirs)
    assert not np.isin(labels, [d2l.cls_id, d2l.sep_id]).any()
    assert (got == d2l.mask_id).mean() == pytest.approx(0.8 + 0.1 / V, abs=0.03)
    assert (got == ours_vocab.mask_id).mean() < 0.03  # only random replacements
    with pytest.raises(ValueError, match="vocabulary of 36 tokens for a corpus of 37"):
        make_examples.make_examples(corpus, Vocab(ours_vocab.tokens[:-1]), cfg())


# ---- the two stages end to end, on a generated WikiText-like file -------------------------


def write_wikitext(path: Path, paragraphs: int = 301, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(41)] + ["<unk>", "Cap", "@-@"]
    lines = [" \n", " = Title = \n", " \n"]
    for _ in range(paragraphs):
        sentences = [
            " ".join(rng.choice(words, rng.integers(1, 25))) for _ in range(rng.integers(1, 8))
        ]
        lines += [" " + " . ".join(sentences) + " . \n", " \n"]
    path.write_text("".join(lines), encoding="utf-8")


def write_params(path: Path, max_len=37, seed=0, mask_rate=0.15) -> Path:
    path.write_text(
        "tokenize_wikitext:\n  min_freq: 3\n"
        f"make_examples:\n  max_len: {max_len}\n  mask_rate: {mask_rate}\n"
        f"  next_sentence_prob: 0.5\n  seed: {seed}\n",
        encoding="utf-8",
    )
    return path


def tokenize(stage: Callable, root: Path, name: str, valid_seed: int = 1) -> Path:
    """The tokenize stage on a generated training text, and a held-out text drawn from
    `valid_seed`; returns its output folder."""
    write_wikitext(root / "wiki.train.tokens")
    write_wikitext(root / f"{name}.valid.tokens", paragraphs=41, seed=valid_seed)
    stage("tokenize_wikitext").main(
        ["--params", str(write_params(root / "params.yaml")),
         "--tokens", str(root / "wiki.train.tokens"), "--valid", str(root / f"{name}.valid.tokens"),
         "--out", str(root / name), "--metrics", str(root / f"{name}.json")]
    )  # fmt: skip
    return root / name


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory, stage) -> Path:
    return tokenize(stage, tmp_path_factory.mktemp("tok"), "tokenize_wikitext")


def run_make_examples(
    stage: Callable, tmp_path: Path, corpus: Path, name: str, **params
) -> dict[str, bytes]:
    out, metrics = tmp_path / name, tmp_path / f"{name}.json"
    stage("make_examples").main(
        ["--params", str(write_params(tmp_path / f"{name}.yaml", **params)),
         "--corpus", str(corpus), "--out", str(out), "--metrics", str(metrics)]
    )  # fmt: skip
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.*"))}
    return files | {"metrics": metrics.read_bytes()}


def test_stage_outputs_are_byte_identical_per_seed(tmp_path, tokenized, stage):
    one = run_make_examples(stage, tmp_path, tokenized, "one")
    two = run_make_examples(stage, tmp_path, tokenized, "two")
    other = run_make_examples(stage, tmp_path, tokenized, "other", seed=1)
    files = {f"{k}.npy" for k in [*ARRAYS, "nsp_labels"]} | {"meta.json"}
    assert set(one) == files | {f"valid/{f}" for f in files} | {"metrics"}
    assert one == two
    assert one["token_ids.npy"] != other["token_ids.npy"]
    assert one["valid/token_ids.npy"] != other["valid/token_ids.npy"]

    meta, metrics = json.loads(one["meta.json"]), json.loads(one["metrics"])
    tok_meta = json.loads((tokenized / "meta.json").read_text())
    arrays = {k: np.load(tmp_path / "one" / f"{k}.npy") for k in [*ARRAYS, "nsp_labels"]}
    n = len(arrays["nsp_labels"])
    assert n > 300
    assert meta == {"num_examples": n, "max_len": 37, "max_num_mlm_preds": 6,
                    "vocab_size": tok_meta["vocab_size"], "vocab_sha1": tok_meta["vocab_sha1"],
                    "pad_id": 1, "mask_id": 2, "cls_id": 3, "sep_id": 4,
                    "id_dtype": "uint16"}  # fmt: skip
    held_out = {k: np.load(tmp_path / "one/valid" / f"{k}.npy") for k in [*ARRAYS, "nsp_labels"]}
    num_held_out = len(held_out["nsp_labels"])
    assert json.loads(one["valid/meta.json"]) == meta | {"num_examples": num_held_out}
    for split, got in ((metrics, arrays), (metrics["valid"], held_out)):
        assert {k: v for k, v in split.items() if k != "valid"} == {
            "num_examples": len(got["nsp_labels"]),
            "nsp_positive_rate": pytest.approx(got["nsp_labels"].mean(), abs=1e-6),
            "mean_masked_positions": pytest.approx(got["mlm_weights"].sum(1).mean(), abs=1e-6),
            "mean_valid_len": pytest.approx(got["valid_lens"].mean(), abs=1e-6),
        }


def test_held_out_examples_leave_the_training_examples_as_they_were(tmp_path, tokenized, stage):
    """The training examples are make_examples' of the training corpus alone, byte for byte,
    whatever the held-out text; the held-out ones are made by the same rules from draws of
    their own (the same corpus gives other examples)."""
    other = tokenize(stage, tmp_path, "other_valid", valid_seed=2)
    one = run_make_examples(stage, tmp_path, tokenized, "one")
    two = run_make_examples(stage, tmp_path, other, "two")
    for name in (f"{k}.npy" for k in [*ARRAYS, "nsp_labels"]):
        assert one[name] == two[name], name
        assert one[f"valid/{name}"] != two[f"valid/{name}"], name
    vocab = Vocab.load(tokenized / "vocab.json")
    corpus, held_out = wikitext.load(tokenized), wikitext.load(tokenized / "valid")
    alone = make_examples.make_examples(corpus, vocab, cfg(max_len=37, seed=0))
    made = make_examples.make_examples(held_out, vocab, cfg(max_len=37, seed=0), held_out=True)
    for name in [*ARRAYS, "nsp_labels"]:
        assert np.array_equal(np.load(tmp_path / "one" / f"{name}.npy"), alone[name]), name
        assert np.array_equal(np.load(tmp_path / "one/valid" / f"{name}.npy"), made[name]), name
    apart = make_examples.make_examples(corpus, vocab, cfg(max_len=37, seed=0), held_out=True)
    assert not np.array_equal(apart["token_ids"], alone["token_ids"])


def test_stage_errors_leave_no_output(tmp_path, tokenized, stage):
    with pytest.raises(UserError, match=r"no sentence pair fits make_examples\.max_len=5"):
        run_make_examples(stage, tmp_path, tokenized, "short", max_len=5)
    with pytest.raises(UserError, match=r"tiny\.yaml: make_examples\.max_len \* mask_rate = 0"):
        run_make_examples(stage, tmp_path, tokenized, "tiny", max_len=6, mask_rate=0.05)
    assert not any((tmp_path / n).exists() for n in ["short", "short.json", "tiny", "tiny.json"])


def test_stage_names_one_sentence_paragraphs_as_the_cause(tmp_path, stage):
    corpus = tmp_path / "wiki.train.tokens"
    corpus.write_text(" = Title = \n" + " a short sentence . \n \n" * 50, encoding="utf-8")
    stage("tokenize_wikitext").main(
        ["--params", str(write_params(tmp_path / "params.yaml")), "--tokens", str(corpus),
         "--valid", str(corpus), "--out", str(tmp_path / "tok"),
         "--metrics", str(tmp_path / "tok.json"), "--workers=1"]
    )  # fmt: skip
    with pytest.raises(UserError, match="no paragraph of the corpus has two sentences") as info:
        run_make_examples(stage, tmp_path, tmp_path / "tok", "one", max_len=64)
    assert "its 50 paragraphs have one each" in str(info.value)
    assert "max_len" not in str(info.value)
    assert not (tmp_path / "one").exists() and not (tmp_path / "one.json").exists()


def test_stage_rejects_a_mismatched_vocabulary(tmp_path, tokenized, stage):
    mixed = shutil.copytree(tokenized, tmp_path / "mixed")
    vocab = json.loads((mixed / "vocab.json").read_text())
    (mixed / "vocab.json").write_text(json.dumps(vocab[:-1]))
    with pytest.raises(UserError, match=r"mixed/vocab\.json: does not match meta\.json"):
        run_make_examples(stage, tmp_path, mixed, "out")

    apart = shutil.copytree(tokenized, tmp_path / "apart")  # its held-out ids from another vocab
    smaller = Vocab(vocab[:-1])
    wikitext.save(apart / "valid", wikitext.encode([[["w1", "w2"], ["w3"]]], smaller), smaller)
    with pytest.raises(UserError, match=r"apart/valid: not encoded with the vocabulary of"):
        run_make_examples(stage, tmp_path, apart, "out")
    assert not (tmp_path / "out").exists()
