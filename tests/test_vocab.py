"""The vocabulary: special ids from the list, frequency order with code-point ties, min_freq,
save/load, and d2l 1.0.3's alphabetical vocabularies."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from bertpipe.errors import UserError
from bertpipe.vocab import SPECIALS, Vocab


def words(counts: dict[str, int]) -> list[str]:
    """A token stream with the given counts, interleaved so order of appearance means nothing."""
    stream = [t for t, c in counts.items() for _ in range(c)]
    return sorted(stream, key=lambda t: hashlib.md5(t.encode()).hexdigest())


def test_built_vocabularies_put_the_specials_first():
    vocab = Vocab.build([], min_freq=1)
    assert vocab.tokens == list(SPECIALS) == ["<unk>", "<pad>", "<mask>", "<cls>", "<sep>"]
    assert [vocab[t] for t in SPECIALS] == [0, 1, 2, 3, 4]
    ids = (vocab.unk_id, vocab.pad_id, vocab.mask_id, vocab.cls_id, vocab.sep_id)
    assert ids == (0, 1, 2, 3, 4)
    assert vocab.special_ids() == {"unk_id": 0, "pad_id": 1, "mask_id": 2, "cls_id": 3, "sep_id": 4}


def test_special_ids_are_looked_up_in_the_list():
    """d2l 1.0.3 sorts its vocabulary: the specials sit wherever the code points put them."""
    tokens = sorted(["!", "0", "a", "the", "zebra", *SPECIALS])
    assert tokens[:2] == ["!", "0"] and tokens[7:] == ["a", "the", "zebra"]
    vocab = Vocab(tokens)
    assert vocab.special_ids() == {"unk_id": 6, "pad_id": 4, "mask_id": 3, "cls_id": 2, "sep_id": 5}
    assert vocab["<pad>"] == vocab.pad_id == 4
    assert vocab["never-seen"] == vocab["<unk>"] == 6
    assert vocab.ids(["a", "nope", "!", "<cls>"]).tolist() == [7, 6, 0, 2]
    assert [vocab.tokens[i] for i in (2, 7, 5)] == ["<cls>", "a", "<sep>"]


def test_descending_count_then_code_point_order():
    counts = {"the": 9, "b": 4, "a": 4, "B": 4, "é": 4, "Z": 4, "zz": 2, "yy": 2, "x": 7}
    vocab = Vocab.build(words(counts), min_freq=1)
    # "B" < "Z" < "a" < "b" < "é" by code point; "yy" < "zz".
    expected = [*SPECIALS, "the", "x", "B", "Z", "a", "b", "é", "yy", "zz"]
    assert vocab.tokens == expected
    assert len(vocab) == len(expected)


def test_min_freq_keeps_counts_at_the_boundary():
    vocab = Vocab.build(words({"kept": 5, "also": 6, "dropped": 4, "rare": 1}), min_freq=5)
    assert vocab.tokens[len(SPECIALS) :] == ["also", "kept"]
    assert vocab["dropped"] == vocab["rare"] == vocab.unk_id == 0


def test_literal_specials_in_text_are_not_added_twice():
    vocab = Vocab.build(words({"<unk>": 50, "<mask>": 8, "word": 7}), min_freq=1)
    assert vocab.tokens == [*SPECIALS, "word"]
    assert vocab["<unk>"] == vocab.unk_id == 0 and vocab["<mask>"] == vocab.mask_id == 2


def test_lookup_of_lists_matches_single_lookups():
    rng = np.random.default_rng(3)
    pool = [f"w{i}" for i in range(40)]
    stream = [pool[i] for i in rng.integers(0, 40, 2001)]
    vocab = Vocab.build(stream, min_freq=45)  # some of the 40 words fall below min_freq
    assert 5 < len(vocab) < 45
    queries = [*stream[:301], "never-seen", "<sep>", ""]
    ids = vocab.ids(queries)
    assert ids.dtype == np.int64
    assert ids.tolist() == [vocab[t] for t in queries]
    assert ids[-3:].tolist() == [0, 4, 0]  # <unk>, <sep>, <unk>
    assert vocab.ids(iter(queries), count=len(queries)).tolist() == ids.tolist()
    assert [vocab.tokens[i] for i in ids[:10]] == [t if vocab[t] else "<unk>" for t in queries[:10]]


def test_save_load_round_trip_and_sha1(tmp_path):
    vocab = Vocab.build(words({f"t{i}é": 40 - i for i in range(32)}), min_freq=1)
    assert len(vocab) == 37
    path = tmp_path / "vocab.json"
    vocab.save(path)
    data = path.read_bytes()
    assert json.loads(data.decode("utf-8")) == vocab.tokens
    assert "é".encode() in data and data.endswith(b"\n")  # readable UTF-8, not \u escapes
    assert vocab.sha1 == hashlib.sha1(data).hexdigest()
    loaded = Vocab.load(path)
    assert loaded.tokens == vocab.tokens
    assert loaded.sha1 == vocab.sha1
    assert loaded["t3é"] == vocab["t3é"] == 8


def test_sha1_tells_vocabularies_apart():
    one = Vocab.build(["a", "b", "b"], min_freq=1)
    other = Vocab.build(["a", "a", "b"], min_freq=1)
    assert one.sha1 != other.sha1
    assert one.sha1 == Vocab(one.tokens).sha1


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (None, "cannot read"),
        (b"[1, 2", "not a JSON vocabulary"),
        (b"\xff\xfe", "not a JSON vocabulary"),
        (b'{"<unk>": 0}', "list of token strings"),
        (b'["<unk>", "<pad>", "<cls>", "<sep>", "a"]', "special token(s) <mask> are missing"),
        (b'["<unk>", "<pad>", "<mask>", "<cls>", "<sep>", "a", "a"]', "'a' appears twice"),
    ],
)
def test_bad_vocab_files_are_user_errors(tmp_path, content, complaint):
    path = tmp_path / "vocab.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as info:
        Vocab.load(path)
    message = str(info.value)
    assert str(path) in message and complaint in message
    assert "tokenize_wikitext" in message and "\n" not in message


def test_constructor_rejects_a_list_without_the_specials():
    with pytest.raises(ValueError, match="<unk>, <pad>, <mask>, <cls>, <sep> are missing"):
        Vocab(["a", "b"])


def test_another_fix_hint_for_vocabularies_from_elsewhere(tmp_path):
    with pytest.raises(UserError, match=r"cannot read the vocabulary .*; pass the model's vocab"):
        Vocab.load(tmp_path / "none.json", fix="pass the model's vocab.json")


def test_d2l_vocab_round_trip_keeps_its_order(tmp_path):
    tokens = sorted(["!", "a", "b", *SPECIALS])
    (tmp_path / "d2l.json").write_text(json.dumps(tokens))  # d2l's file: json.dumps of the list
    vocab = Vocab.load(tmp_path / "d2l.json")
    assert vocab.tokens == tokens and vocab.pad_id == 3
    vocab.save(tmp_path / "ours.json")
    again = Vocab.load(tmp_path / "ours.json")
    assert (
        again.tokens == tokens
        and again.sha1 == vocab.sha1 != Vocab.load(tmp_path / "d2l.json").sha1
    )
