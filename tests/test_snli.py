"""SNLI reading, cleaning, d2l's pair truncation, the flat layout, the pool, the stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bertpipe import artifacts, snli
from bertpipe.errors import UserError

HEADER = ["gold_label", "sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse"]
HEADER += ["sentence2_parse", "sentence1", "sentence2", "captionID", "pairID"]
HEADER += [f"label{i}" for i in range(1, 6)]
SPECIALS = ["<unk>", "<pad>", "<mask>", "<cls>", "<sep>"]


def row(gold: str, premise: str, hypothesis: str) -> str:
    """One SNLI line: the three columns we read, plausible filler in the other eleven."""
    raw = [premise.replace("(", "").replace(")", ""), hypothesis.replace("(", "").replace(")", "")]
    fields = [gold, premise, hypothesis, f"(ROOT {premise})", f"(ROOT {hypothesis})", *raw]
    return "\t".join([*fields, "1.jpg#0", "1.jpg#0r1n", gold, gold, "", "", ""])


def write_snli(folder: Path, split: str, lines: list[str], header: list[str] = HEADER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"snli_1.0_{split}.txt"
    path.write_text("\n".join(["\t".join(header), *lines]) + "\n", encoding="utf-8")
    return path


def encoder(words: list[str], max_len: int) -> snli.PairEncoder:
    token_to_id = {t: i for i, t in enumerate(SPECIALS + words)}
    return snli.PairEncoder(token_to_id, max_len, np.dtype(np.uint16), unk_id=0, cls_id=3, sep_id=4)


def decode(e: snli.Encoded, words: list[str], i: int) -> str:
    tokens = SPECIALS + words
    return " ".join(tokens[t] for t in e.token_ids[e.offsets[i] : e.offsets[i + 1]])


def test_read_cleans_parses_drops_unlabelled_rows_and_maps_labels(tmp_path):
    lines = [
        row(
            "neutral",
            '( ( Two  Women ) ( ( are ( "hugging" ) ) . ) )',
            "( ( The NA ) ( is null ) )",
        ),
        row("-", "( A ( man ) )", "( ( A dog ) . )"),
        row("entailment", "(  ( A man ) sleeps  )", "( Someone ( sleeps . ) )"),
        row("contradiction", "( ( A man ) sleeps )", "( ( Nobody sleeps ) . )"),
    ]
    pairs = snli.read_snli(write_snli(tmp_path, "dev", lines))
    assert pairs.premises == ['two women are "hugging" .', "a man sleeps", "a man sleeps"]
    assert pairs.hypotheses == ["the na is null", "someone sleeps .", "nobody sleeps ."]
    assert pairs.labels.dtype == np.uint8 and pairs.labels.tolist() == [2, 0, 1]
    assert pairs.dropped_no_label == 1
    assert pairs.dropped_unknown_label == 0 and pairs.blank_lines == 0
    assert pairs.label_counts() == {"entailment": 1, "contradiction": 1, "neutral": 1}


def test_unknown_labels_and_blank_lines_are_counted_apart_and_warned_about(tmp_path, caplog):
    good = row("neutral", "( a b )", "( c )")
    lines = [
        good,
        "",
        row("-", "( a )", "( b )"),
        row("Entailment", "( a )", "( b )"),  # case matters
        row("hidden", "( a )", "( b )"),
        "\r",  # a blank line of a CRLF file
        row("Entailment", "( a )", "( b )"),
        good,
        "",
    ]
    pairs = snli.read_snli(write_snli(tmp_path, "train", lines))
    assert pairs.labels.tolist() == [2, 2]
    assert (pairs.dropped_no_label, pairs.dropped_unknown_label, pairs.blank_lines) == (1, 3, 3)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2
    assert "skipped 3 blank lines (the first is line 3)" in warnings[0]
    assert "dropped 3 rows whose gold label is none of" in warnings[1]
    assert "'Entailment' (2), 'hidden' (1)" in warnings[1]
    assert not any("download" in w for w in warnings)  # downloading again would not help


def test_a_file_without_any_known_label_is_refused_naming_what_it_has(tmp_path):
    lines = [row("Neutral", "( a )", "( b )"), row("-", "( a )", "( b )")] * 2
    with pytest.raises(UserError, match=r"no row has a gold label in entailment") as info:
        snli.read_snli(write_snli(tmp_path, "test", lines))
    assert "(2 rows '-', 2 with other labels: 'Neutral' (2))" in str(info.value)
    assert "download" not in str(info.value)


def pop_loop(len_p: int, len_h: int, budget: int) -> tuple[int, int]:
    """d2l's truncation, literally: pop from the longer side, the hypothesis on a tie."""
    while len_p + len_h > budget:
        if len_p > len_h:
            len_p -= 1
        else:
            len_h -= 1
    return len_p, len_h


def test_truncated_lengths_equal_the_pop_loop_everywhere():
    grid = np.array([(p, h) for p in range(12) for h in range(12)])
    for budget in range(10):
        keep_p, keep_h = snli.truncated_lengths(grid[:, 0], grid[:, 1], budget)
        expected = [pop_loop(p, h, budget) for p, h in grid]
        assert list(zip(keep_p.tolist(), keep_h.tolist(), strict=True)) == expected


def test_truncation_pops_the_end_of_the_longer_side_and_the_hypothesis_on_a_tie():
    words = [f"p{i}" for i in range(8)] + [f"h{i}" for i in range(8)]
    p = lambda n: " ".join(f"p{i}" for i in range(n))  # noqa: E731
    h = lambda n: " ".join(f"h{i}" for i in range(n))  # noqa: E731
    premises, hypotheses = [p(8), p(2), p(4), p(3)], [h(2), h(8), h(4), h(2)]
    e = encoder(words, max_len=8).encode(premises, hypotheses)  # budget 5 tokens
    assert decode(e, words, 0) == "<cls> p0 p1 p2 <sep> h0 h1 <sep>"
    assert decode(e, words, 1) == "<cls> p0 p1 <sep> h0 h1 h2 <sep>"
    assert decode(e, words, 2) == "<cls> p0 p1 p2 <sep> h0 h1 <sep>"  # 4+4: h, p, h
    assert decode(e, words, 3) == "<cls> p0 p1 p2 <sep> h0 h1 <sep>"  # fits as is
    assert np.diff(e.offsets).tolist() == [8, 8, 8, 8]
    assert e.truncated == 3
    with pytest.raises(UserError, match=r"max_len: 2 is not in \[3, 32767\]"):
        encoder(words, max_len=2)  # no room for <cls> <sep> <sep>


def test_layout_offsets_segment_starts_and_unknown_words():
    words = ["a", "dog", "runs", "cat"]
    premises = ["a dog runs", "zebra", ""]
    hypotheses = ["a cat", "a zebra runs", "dog"]
    e = encoder(words, max_len=64).encode(premises, hypotheses)
    expected = [
        "<cls> a dog runs <sep> a cat <sep>",
        "<cls> <unk> <sep> a <unk> runs <sep>",
        "<cls> <sep> dog <sep>",
    ]
    assert [decode(e, words, i) for i in range(3)] == expected
    assert e.offsets.dtype == np.int64 and e.offsets.tolist() == [0, 8, 15, 19]
    assert e.segment_starts.dtype == np.int16 and e.segment_starts.tolist() == [5, 3, 2]
    assert e.token_ids.dtype == np.uint16 and e.truncated == 0


def random_pairs(n: int, words: list[str], seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    sentences = [" ".join(rng.choice(words, size=rng.integers(0, 30))) for _ in range(2 * n)]
    return sentences[:n], sentences[n:]


def test_output_is_the_same_for_any_worker_count_and_start_method():
    words = [f"w{i}" for i in range(50)]
    premises, hypotheses = random_pairs(3000, [*words, "oov1", "oov2"])
    enc = encoder(words, max_len=24)
    runs = [
        snli.encode_pairs(enc, premises, hypotheses, workers=1),
        snli.encode_pairs(enc, premises, hypotheses, workers=2, chunk_size=256),
        snli.encode_pairs(enc, premises, hypotheses, workers=2, start_method="spawn"),
    ]
    assert runs[0].truncated > 0
    for other in runs[1:]:
        for name in ("token_ids", "offsets", "segment_starts"):
            assert np.array_equal(getattr(runs[0], name), getattr(other, name)), name
        assert other.truncated == runs[0].truncated


def test_header_without_a_needed_column_names_it(tmp_path):
    header = [c if c != "sentence2_binary_parse" else "sentence2_bin" for c in HEADER]
    path = write_snli(tmp_path, "train", [row("neutral", "( a b )", "( c )")], header=header)
    with pytest.raises(
        UserError, match=r"snli_1.0_train.txt: header lacks .*sentence2_binary_parse"
    ):
        snli.read_snli(path)


@pytest.mark.parametrize("fields", [15, 11, 1])
def test_a_row_with_the_wrong_field_count_is_named_by_line(tmp_path, fields):
    good = row("neutral", "( a b )", "( c )")
    bad = "\t".join([*good.split("\t"), "extra"][:fields])
    path = write_snli(tmp_path, "test", [good, bad, good])
    message = rf"snli_1.0_test.txt, line 3: {fields} tab-separated fields where the header has 14"
    with pytest.raises(UserError, match=message):
        snli.read_snli(path)


def test_missing_required_split_is_named(tmp_path):
    write_snli(tmp_path, "train", [row("neutral", "( a b )", "( c )")])
    with pytest.raises(UserError, match=r"snli_1.0_test.txt: missing; .*download_snli"):
        snli.split_files(tmp_path)


def test_stage_end_to_end(tmp_path, monkeypatch, stage):
    src = tmp_path / "download_snli"
    write_snli(src, "train", [row("neutral", "( a dog )", "( ( a cat ) runs )")] * 3)
    write_snli(
        src, "test", [row("-", "( a )", "( b )"), row("entailment", "( a b c d e )", "( a )")]
    )
    (tmp_path / "vocab.json").write_text(json.dumps([*SPECIALS, "a", "dog", "cat"]))
    (tmp_path / "params.yaml").write_text("make_snli:\n  max_len: 7\n")
    out, metrics = tmp_path / "make_snli", tmp_path / "metrics.json"
    argv = [f"--params={tmp_path / 'params.yaml'}", f"--tables={src}", f"--out={out}"]
    argv += [f"--pretrained={tmp_path}", f"--metrics={metrics}"]
    monkeypatch.setenv("BERTPIPE_WORKERS", "1")

    stage("make_snli").main(argv)
    m = artifacts.read_json(metrics)
    assert m["workers"] == 1 and set(m) == {"workers", "train", "test"}
    assert m["train"]["truncated"] == 3
    assert m["test"] == {
        "num_pairs": 1,
        "dropped_no_label": 1,
        "dropped_unknown_label": 0,
        "blank_lines": 0,
        "truncated": 1,
        "label_counts": {"entailment": 1, "contradiction": 0, "neutral": 0},
    }
    meta = artifacts.read_json(out / "meta.json")
    assert meta["splits"] == ["train", "test"] and meta["id_dtype"] == "uint16"
    assert meta["vocab_size"] == 8 and meta["max_len"] == 7
    specials = {"unk_id": 0, "pad_id": 1, "mask_id": 2, "cls_id": 3, "sep_id": 4}
    assert {k: meta[k] for k in specials} == specials
    assert meta["vocab_sha1"] == artifacts.sha1_of_file(tmp_path / "vocab.json")
    assert artifacts.read_json(out / "test" / "meta.json") == {
        "num_pairs": 1,
        "dropped_no_label": 1,
        "dropped_unknown_label": 0,
        "blank_lines": 0,
        "truncated": 1,
        "label_counts": {"entailment": 1, "contradiction": 0, "neutral": 0},
        "max_valid_len": 7,
    }
    test = artifacts.load_arrays(out / "test", ["token_ids", "segment_starts"])
    assert test["token_ids"].tolist() == [3, 5, 0, 0, 4, 5, 4]  # a b c | a: b, c unknown
    assert test["segment_starts"].tolist() == [5]
    train = artifacts.load_arrays(
        out / "train", ["token_ids", "offsets", "segment_starts", "labels"]
    )
    assert train["token_ids"][:7].tolist() == [3, 5, 6, 4, 5, 7, 4]  # <cls> a dog <sep> a cat <sep>
    assert train["offsets"].tolist() == [0, 7, 14, 21] and train["labels"].tolist() == [2, 2, 2]

    good_dev = row("contradiction", "( a )", "( dog )")
    write_snli(src, "dev", [good_dev, good_dev.replace("\t", " ", 1)])
    with pytest.raises(UserError, match=r"snli_1\.0_dev\.txt, line 3"):
        stage("make_snli").main(argv)
    assert artifacts.read_json(out / "meta.json")["splits"] == ["train", "test"]  # untouched
    assert artifacts.read_json(metrics) == m

    write_snli(src, "dev", [good_dev])
    stage("make_snli").main([*argv, "--workers=2"])
    assert artifacts.read_json(out / "meta.json")["splits"] == ["train", "test", "dev"]
    assert artifacts.read_json(metrics)["dev"]["label_counts"]["contradiction"] == 1


def test_stage_takes_the_special_ids_from_a_d2l_ordered_vocabulary(tmp_path, monkeypatch, stage):
    """d2l 1.0.3's vocab.json is alphabetical: '.' sorts before the specials, 'a' after them."""
    src = tmp_path / "download_snli"
    write_snli(src, "train", [row("neutral", "( a dog )", "( ( a cat ) runs . )")])
    write_snli(src, "test", [row("entailment", "( a )", "( dog . )")])
    tokens = sorted([*SPECIALS, ".", "a", "cat", "dog"])
    assert tokens[:6] == [".", "<cls>", "<mask>", "<pad>", "<sep>", "<unk>"]
    (tmp_path / "vocab.json").write_text(json.dumps(tokens))
    (tmp_path / "params.yaml").write_text("make_snli:\n  max_len: 20\n")
    out = tmp_path / "make_snli"
    monkeypatch.setenv("BERTPIPE_WORKERS", "1")
    argv = [f"--params={tmp_path / 'params.yaml'}", f"--tables={src}", f"--out={out}"]
    argv += [f"--pretrained={tmp_path}", f"--metrics={tmp_path / 'm.json'}"]
    stage("make_snli").main(argv)
    meta = artifacts.read_json(out / "meta.json")
    assert {k: meta[k] for k in ("unk_id", "pad_id", "mask_id", "cls_id", "sep_id")} == {
        "unk_id": 5, "pad_id": 3, "mask_id": 2, "cls_id": 1, "sep_id": 4,
    }  # fmt: skip
    train = artifacts.load_arrays(out / "train", ["token_ids"])["token_ids"]
    # <cls> a dog <sep> a cat runs(unknown) . <sep>
    assert train.tolist() == [1, 6, 8, 4, 6, 7, 5, 0, 4]
