"""WikiText reading rules (d2l's `_read_wiki`), the corpus arrays, and the tokenize stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bertpipe import wikitext
from bertpipe.errors import UserError
from bertpipe.vocab import SPECIALS, Vocab

# Lines as WikiText writes them: a leading space, " @-@ " joins, headings, blank lines.
TEXT = (
    " \n"
    " = Valkyria Chronicles III = \n"
    " \n"
    " Senjō no Valkyria 3 : <unk> Chronicles . It is a role @-@ playing game ! "
    "Really ? Yes . \n"
    " \n"
    " = = Gameplay = = \n"
    " One sentence only . \n"
    " No period here , so no paragraph \n"
    " A number like 3.5 is no split . Nor is a.b . End \n"
)

EXPECTED = [
    [
        ["senjō", "no", "valkyria", "3", ":", "<unk>", "chronicles"],
        ["it", "is", "a", "role", "@-@", "playing", "game", "!", "really", "?", "yes", "."],
    ],
    [["one", "sentence", "only", "."]],
    [["a", "number", "like", "3.5", "is", "no", "split"], ["nor", "is", "a.b"], ["end"]],
]


def run_stage(stage, params: Path, corpus: Path, out: Path, metrics: Path,
              valid: Path | None = None) -> None:  # fmt: skip
    """The tokenize stage on `corpus`; its held-out split is `valid` (default: `corpus`)."""
    args = ["--params", params, "--tokens", corpus, "--valid", valid or corpus, "--out", out,
            "--metrics", metrics]  # fmt: skip
    stage.main([str(a) for a in args])


def test_split_paragraph_rules():
    assert wikitext.split_paragraph(" = = Title = = \n") is None
    assert wikitext.split_paragraph(" \n") is None
    assert wikitext.split_paragraph(" costs 3.5 million\n") is None
    assert wikitext.split_paragraph(" Ends without space .\n") is None  # no " . " in the raw line
    # The raw filter sees " . " before the newline; strip() then leaves one sentence with its ".".
    assert wikitext.split_paragraph(" Foo Bar . \n") == ["foo bar ."]
    assert wikitext.split_paragraph(" A b . C ! D ? e . \n") == ["a b", "c ! d ? e ."]


def test_read_paragraphs_keeps_file_order_and_d2l_rules(tmp_path):
    path = tmp_path / "wiki.tokens"
    path.write_text(TEXT, encoding="utf-8")
    assert wikitext.read_paragraphs(path) == EXPECTED


def test_read_paragraphs_handles_crlf_like_text_mode(tmp_path):
    path = tmp_path / "wiki.tokens"
    path.write_bytes(TEXT.replace("\n", "\r\n").encode("utf-8"))
    assert wikitext.read_paragraphs(path) == EXPECTED


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (None, "no such file"),
        (b" = Heading = \n \n no sentence here\n", "no line contains ' . '"),
        (b"", "no line contains ' . '"),
        (b" caf\xe9 . ok . \n", "not UTF-8"),
    ],
)
def test_unusable_corpus_is_a_user_error(tmp_path, content, complaint):
    path = tmp_path / "wiki.train.tokens"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as info:
        wikitext.read_paragraphs(path)
    assert str(path) in str(info.value) and complaint in str(info.value)
    assert "\n" not in str(info.value)


def test_encode_offsets_and_ids():
    paragraphs = [[["b", "a"], ["c"]], [["a", "zz", "a", "b"]], [[], ["b"]]]
    vocab = Vocab.build(["a", "a", "a", "a", "b", "b", "b", "c"], min_freq=2)
    corpus = wikitext.encode(paragraphs, vocab)
    a, b = vocab["a"], vocab["b"]
    assert (a, b) == (5, 6)
    assert corpus.token_ids.dtype == np.uint16
    assert corpus.token_ids.tolist() == [b, a, 0, a, 0, a, b, b]  # 0: <unk>
    assert corpus.sentence_offsets.tolist() == [0, 2, 3, 7, 7, 8]  # an empty sentence is kept
    assert corpus.paragraph_offsets.tolist() == [0, 2, 3, 5]
    assert (corpus.num_paragraphs, corpus.num_sentences, corpus.num_tokens) == (3, 5, 8)
    assert corpus.num_adjacent_pairs == 2  # (b a, c) and ([], b); the middle paragraph has none


# Lines that stress the flat tokenizer: empty and leading sentences, runs of " . ", tabs and
# non-ASCII whitespace inside lines, letters whose lower case differs in length or context
# (İ, final sigma), a line that is " . " only, literal specials, a private-use character.
TRICKY = (
    " . \n"
    "x . . y .  . z\tw . \n"
    " A\u00a0b . C\u2009d . \x0cé . \n"
    " İstanbul ΟΔΟΣ ΟΔΟΣ. Σ . <unk> <cls> <pad> . \ue000 . \n"
    "no sentence end here\n"
    " Foo Bar . \r\n"
    " 3 . 3 . 3 . 3 . 3 . foo foo foo . \r"
)


@pytest.mark.parametrize("text", [TEXT, TEXT.replace("\n", "\r\n"), TRICKY, TRICKY * 3])
@pytest.mark.parametrize(("min_freq", "workers"), [(1, 1), (2, 1), (5, 1), (2, 3)])
def test_tokenize_equals_read_encode(tmp_path, text, min_freq, workers):
    path = tmp_path / "wiki.tokens"
    path.write_bytes(text.encode("utf-8"))
    paragraphs = wikitext.read_paragraphs(path)
    expected_vocab = Vocab.build((t for p in paragraphs for s in p for t in s), min_freq)
    expected = wikitext.encode(paragraphs, expected_vocab)
    corpus, vocab = wikitext.tokenize(path, min_freq, workers)
    assert vocab.tokens == expected_vocab.tokens and vocab.sha1 == expected_vocab.sha1
    for name in wikitext.ARRAYS:
        ours, theirs = getattr(corpus, name), getattr(expected, name)
        assert ours.dtype == theirs.dtype and ours.tolist() == theirs.tolist(), name
    assert corpus.meta() == expected.meta()


def test_tokenize_errors_are_those_of_read_paragraphs(tmp_path):
    cases = [(b" = Heading = \n", "no line contains"), (b"", "no line contains"),
             (b"a . \xe9\n", "UTF-8")]  # fmt: skip
    for content, complaint in cases:
        path = tmp_path / "wiki.tokens"
        path.write_bytes(content)
        with pytest.raises(UserError, match=complaint):
            wikitext.tokenize(path, 1, workers=2)
    with pytest.raises(UserError, match="no such file"):
        wikitext.tokenize(tmp_path / "missing.tokens", 1)


def make_folder(tmp_path: Path) -> Path:
    paragraphs = [[["x", "y", "x"], ["y", "z"]], [["z", "z", "x"]]]
    vocab = Vocab.build(["x", "y", "z", "x", "y", "z", "z"], min_freq=1)
    folder = tmp_path / "tok"
    folder.mkdir(parents=True)
    wikitext.save(folder, wikitext.encode(paragraphs, vocab), vocab)
    return folder


def test_save_load_round_trip(tmp_path):
    folder = make_folder(tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta == {
        "vocab_size": 8,
        "vocab_sha1": Vocab.load(folder / "vocab.json").sha1,
        "num_paragraphs": 2,
        "num_sentences": 3,
        "num_tokens": 8,
        "id_dtype": "uint16",
        "special_ids": {t: i for i, t in enumerate(SPECIALS)},
    }
    corpus = wikitext.load(folder)
    assert corpus.token_ids.tolist() == [6, 7, 6, 7, 5, 5, 5, 6]  # z=5, x=6, y=7
    assert corpus.sentence_offsets.tolist() == [0, 3, 5, 8]
    assert corpus.paragraph_offsets.tolist() == [0, 2, 3]
    assert corpus.sentence_offsets.dtype == corpus.paragraph_offsets.dtype == np.int64


def test_load_rejects_mixed_or_broken_folders(tmp_path):
    folder = make_folder(tmp_path)
    Vocab.build(["other", "words"], min_freq=1).save(folder / "vocab.json")
    with pytest.raises(UserError, match=r"vocab\.json: does not match meta\.json"):
        wikitext.load(folder)

    folder = make_folder(tmp_path / "again")
    np.save(folder / "token_ids.npy", np.array([6, 7, 6, 99, 5, 5, 5, 6], dtype=np.uint16))
    with pytest.raises(UserError, match="beyond the vocabulary size 8"):
        wikitext.load(folder)

    np.save(folder / "sentence_offsets.npy", np.array([0, 3, 2, 8]))
    with pytest.raises(UserError, match=r"does not cover token_ids\.npy"):
        wikitext.load(folder)

    (folder / "paragraph_offsets.npy").unlink()
    with pytest.raises(UserError, match=r"paragraph_offsets\.npy: missing; rerun"):
        wikitext.load(folder)


def write_params(path: Path, min_freq: int) -> Path:
    path.write_text(f"tokenize_wikitext:\n  min_freq: {min_freq}\n", encoding="utf-8")
    return path


def test_stage_end_to_end_is_deterministic(tmp_path, stage):
    tokenize = stage("tokenize_wikitext")
    corpus = tmp_path / "wiki.train.tokens"
    corpus.write_text(TEXT * 3, encoding="utf-8")
    params = write_params(tmp_path / "params.yaml", min_freq=3)
    outputs = []
    for run in ("one", "two"):
        out, metrics = tmp_path / run, tmp_path / f"{run}.json"
        run_stage(tokenize, params, corpus, out, metrics)
        outputs.append({str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*.*")})
        outputs[-1]["metrics"] = metrics.read_bytes()
    assert outputs[0] == outputs[1]
    files = {"vocab.json", "token_ids.npy", "sentence_offsets.npy", "paragraph_offsets.npy",
             "meta.json"}  # fmt: skip
    assert set(outputs[0]) == {*files, *(f"valid/{f}" for f in files), "metrics"}
    metrics = json.loads(outputs[0]["metrics"])
    num_tokens = 3 * sum(len(s) for p in EXPECTED for s in p)
    assert metrics["num_paragraphs"] == 9 and metrics["num_sentences"] == 18
    assert metrics["num_tokens"] == num_tokens
    vocab = Vocab.load(tmp_path / "one" / "vocab.json")
    assert (
        metrics["vocab_size"]
        == len(vocab)
        == len(SPECIALS) + len({t for p in EXPECTED for s in p for t in s} - {"<unk>"})
    )
    corpus_arrays = wikitext.load(tmp_path / "one")
    assert metrics["unk_rate"] == pytest.approx(3 / num_tokens, abs=1e-6)  # the literal <unk>s
    assert (corpus_arrays.token_ids == vocab.unk_id).sum() == 3


def test_stage_bad_corpus_leaves_no_output(tmp_path, stage):
    tokenize = stage("tokenize_wikitext")
    corpus = tmp_path / "empty.tokens"
    corpus.write_text(" = Only a heading = \n", encoding="utf-8")
    params = write_params(tmp_path / "params.yaml", min_freq=1)
    out, metrics = tmp_path / "out", tmp_path / "m.json"
    with pytest.raises(UserError, match=r"empty\.tokens: no line contains"):
        run_stage(tokenize, params, corpus, out, metrics)
    assert not out.exists() and not metrics.exists()


def test_stage_encodes_the_held_out_split_with_the_training_vocabulary(tmp_path, stage):
    """Its words the training text lacks become <unk>; the vocabulary, the training ids and
    their metrics are the same whatever the held-out text is."""
    corpus = tmp_path / "wiki.train.tokens"
    corpus.write_text(TEXT * 3, encoding="utf-8")
    valid = tmp_path / "wiki.valid.tokens"
    valid.write_text(" Valkyria is a role . Unseen words here . \n", encoding="utf-8")
    params = write_params(tmp_path / "params.yaml", min_freq=3)
    run_stage(stage("tokenize_wikitext"), params, corpus, tmp_path / "out", tmp_path / "m.json",
              valid)  # fmt: skip
    vocab = Vocab.load(tmp_path / "out" / "vocab.json")
    held_out = wikitext.load(tmp_path / "out" / "valid")
    assert (tmp_path / "out/valid/vocab.json").read_bytes() == vocab.to_bytes()
    words = ["valkyria", "is", "a", "role", "unseen", "words", "here", "."]
    assert held_out.token_ids.tolist() == [vocab[w] for w in words]
    assert held_out.token_ids.tolist().count(vocab.unk_id) == 3  # unseen, words, here
    assert held_out.sentence_offsets.tolist() == [0, 4, 8]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["valid"] == {"num_paragraphs": 1, "num_sentences": 2, "num_tokens": 8,
                                "unk_rate": 0.375}  # fmt: skip

    run_stage(stage("tokenize_wikitext"), params, corpus, tmp_path / "self", tmp_path / "s.json")
    for name in ("vocab.json", "token_ids.npy", "sentence_offsets.npy", "meta.json"):
        assert (tmp_path / "self" / name).read_bytes() == (tmp_path / "out" / name).read_bytes()
    again = json.loads((tmp_path / "s.json").read_text())
    assert {k: v for k, v in again.items() if k != "valid"} == {
        k: v for k, v in metrics.items() if k != "valid"
    }
