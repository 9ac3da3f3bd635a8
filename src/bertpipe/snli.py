"""SNLI for fine-tuning: read and clean the TSV files, truncate pairs, store compact token ids.

d2l reads the *binary-parse* columns of `snli_1.0_<split>.txt`, deletes the brackets, keeps rows
whose gold label is entailment/contradiction/neutral, lower-cases, splits on whitespace, pops
tokens off the longer side until `<cls> p <sep> h <sep>` fits max_len, and pads every pair to
max_len as int64 tensors built pair by pair in a Pool(4). Here the same pairs are stored unpadded
(one flat id array + offsets; training pads each batch to its longest member) and built with
numpy per chunk of thousands of pairs, in a process pool that gets the vocabulary once per worker.
The output bytes do not depend on the number of workers or the chunk size.

On the hf_bert route the model brings its own tokenizer, which applies its own casing and
normalisation: the raw `sentence1`/`sentence2` columns are read instead, and the ids are those of
`tokenizer(p, h, truncation="longest_first", max_length=max_len)`: `[CLS] p [SEP] h [SEP]`, cut
by the tokenizer's longest-first rule (`longest_first_lengths`), in the same on-disk layout.
`TokenizerPairEncoder` gets them by running the tokenizer once per distinct space-separated word
of a chunk of pairs and building the sentences and pairs with numpy: a BERT tokenizer never
joins text across an ASCII space (see `TokenizerPairEncoder`), and a chunk of SNLI holds a few
thousand distinct words for tens of thousands of words in all.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import logging
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from itertools import chain, repeat
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from bertpipe import artifacts
from bertpipe.errors import UserError
from bertpipe.vocab import Vocab

log = logging.getLogger(__name__)

LABELS = ("entailment", "contradiction", "neutral")  # label id = index, as in d2l
COLUMNS = ("gold_label", "sentence1_binary_parse", "sentence2_binary_parse")
RAW_COLUMNS = ("gold_label", "sentence1", "sentence2")  # the text as annotators wrote it
SPLITS = ("train", "test", "dev")  # dev is optional: d2l never reads it
REQUIRED_SPLITS = ("train", "test")
FIX_DOWNLOAD = "download it again (dvc repro -f download_snli)"


def split_files(folder: str | Path) -> dict[str, Path]:
    """Map each split present in `folder` to its `snli_1.0_<split>.txt`; train and test must be."""
    folder = Path(folder)
    files = {s: folder / f"snli_1.0_{s}.txt" for s in SPLITS}
    for split in REQUIRED_SPLITS:
        if not files[split].is_file():
            raise UserError(
                f"{files[split]}: missing; the download_snli stage provides it "
                f"(dvc repro download_snli)"
            )
    return {s: p for s, p in files.items() if p.is_file()}


def clean(parse: str) -> str:
    """d2l's cleaning of a binary parse, then lower case: no brackets, single spaces, trimmed."""
    return " ".join(parse.replace("(", "").replace(")", "").lower().split())


@dataclass(frozen=True)
class Pairs:
    """The labelled pairs of one SNLI file, in file order."""

    premises: list[str]  # cleaned (see `clean`), or raw (`read_snli(..., raw=True)`)
    hypotheses: list[str]
    labels: np.ndarray  # (N,) uint8, index into LABELS
    dropped_no_label: int  # rows whose gold label is '-' (no annotator consensus)
    dropped_unknown_label: int  # rows whose gold label is neither one of LABELS nor '-'
    blank_lines: int  # empty lines (or a lone '\r'), skipped

    def label_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(LABELS))
        return {name: int(c) for name, c in zip(LABELS, counts, strict=True)}


def read_snli(path: str | Path, raw: bool = False) -> Pairs:
    """Read one `snli_1.0_<split>.txt`, checking its header and that every row is whole.

    The sentences are d2l's: the binary parses, cleaned (`clean`); or with `raw`, the
    `sentence1`/`sentence2` text as it is, for a tokenizer that does its own normalisation.
    Rows labelled '-' are dropped, as in d2l. Rows with any other label outside LABELS, and blank
    lines, are not in SNLI 1.0's files: they are dropped too, counted apart and warned about.
    """
    path = Path(path)
    data = path.read_bytes()
    columns = RAW_COLUMNS if raw else COLUMNS
    text = (lambda s: s) if raw else clean
    try:
        _check_header(path, data, columns)
        blank_lines = _check_field_counts(path, data)
        # QUOTE_NONE: SNLI text contains '"' characters; na_filter=False keeps 'null'/'NA' as text
        frame = pd.read_csv(
            io.BytesIO(data),
            sep="\t",
            quoting=csv.QUOTE_NONE,
            dtype=str,
            usecols=list(columns),
            na_filter=False,
            engine="c",
        )
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err}); {FIX_DOWNLOAD}") from None
    gold = frame["gold_label"]
    codes = pd.Index(LABELS).get_indexer(gold)  # (rows,) -1: no gold label
    keep = codes >= 0
    no_label = (gold == "-").to_numpy()  # (rows,)
    unknown = gold[~keep & ~no_label].value_counts()  # label -> rows, most frequent first
    shown = ", ".join(f"{label!r} ({n})" for label, n in unknown.head(5).items())
    shown += ", ..." if len(unknown) > 5 else ""
    if not keep.any():
        raise UserError(
            f"{path}: no row has a gold label in {', '.join(LABELS)} "
            f"({np.count_nonzero(no_label)} rows '-', {unknown.sum()} with other labels"
            f"{': ' + shown if shown else ''}); this is not an SNLI 1.0 file, whose rows "
            "nearly all have one"
        )
    pairs = Pairs(
        premises=[text(s) for s in frame[columns[1]][keep]],
        hypotheses=[text(s) for s in frame[columns[2]][keep]],
        labels=codes[keep].astype(np.uint8),
        dropped_no_label=int(np.count_nonzero(no_label)),
        dropped_unknown_label=int(unknown.sum()),
        blank_lines=blank_lines,
    )
    if pairs.dropped_unknown_label:
        log.warning(
            "%s: dropped %d rows whose gold label is none of %s or '-': %s",
            path,
            pairs.dropped_unknown_label,
            ", ".join(LABELS),
            shown,
        )
    log.info(
        "read %d pairs from %s (%d rows without a gold label dropped)",
        len(pairs.labels),
        path,
        pairs.dropped_no_label,
    )
    return pairs


def _check_header(path: Path, data: bytes, columns: tuple[str, ...]) -> None:
    if not data.strip():
        raise UserError(f"{path}: empty file; {FIX_DOWNLOAD}")
    header = data.split(b"\n", 1)[0].decode("utf-8-sig").rstrip("\r").split("\t")
    missing = [c for c in columns if c not in header]
    if missing:
        raise UserError(
            f"{path}: header lacks column(s) {', '.join(missing)}; expected SNLI 1.0's "
            f"tab-separated header ({', '.join(columns)}, ...); {FIX_DOWNLOAD}"
        )


def _check_field_counts(path: Path, data: bytes) -> int:
    """Every line but blank ones must have as many tab-separated fields as the header (pandas'
    C parser silently pads short rows and, with `usecols`, ignores long ones). Blank lines,
    which pandas skips, are counted and warned about; returns their number."""
    raw = np.frombuffer(data, dtype=np.uint8)
    line_ends = np.flatnonzero(raw == ord("\n"))
    if not data.endswith(b"\n"):
        line_ends = np.append(line_ends, len(raw))
    line_starts = np.concatenate([[0], line_ends[:-1] + 1])  # (lines,)
    lengths = line_ends - line_starts
    blank = (lengths == 0) | ((lengths == 1) & (raw[np.minimum(line_starts, len(raw) - 1)] == 13))
    if blank.any():
        first = int(np.argmax(blank))
        log.warning(
            "%s: skipped %d blank lines (the first is line %d)",
            path,
            np.count_nonzero(blank),
            first + 1,
        )
    tabs_before = np.searchsorted(np.flatnonzero(raw == ord("\t")), line_ends)  # (lines,)
    fields = np.diff(tabs_before, prepend=0) + 1  # (lines,)
    bad = np.flatnonzero((fields != fields[0]) & ~blank)
    if bad.size:
        line = int(bad[0])
        raise UserError(
            f"{path}, line {line + 1}: {fields[line]} tab-separated fields where the header has "
            f"{fields[0]} (the row is damaged or cut short); {FIX_DOWNLOAD}"
        )
    return int(np.count_nonzero(blank))


def truncated_lengths(
    len_p: np.ndarray, len_h: np.ndarray, budget: int
) -> tuple[np.ndarray, np.ndarray]:
    """Lengths after d2l's rule: while len_p + len_h > budget, pop the last token of the longer
    side, of the hypothesis on a tie.

    Closed form of that loop: the longer side shrinks to budget - shorter, unless that would
    make it the shorter one; then both end balanced, ceil(budget/2) premise tokens and
    floor(budget/2) hypothesis tokens (each tie pops the hypothesis first).
    """
    over = len_p + len_h > budget
    p_first = over & (len_p > len_h)  # the premise is popped first (it is longer)
    h_first = over & ~p_first  # the hypothesis is popped first (longer, or a tie)
    # the side popped second keeps its length, or half the budget if it gets popped too
    keep_h = np.where(p_first, np.minimum(len_h, budget // 2), len_h)
    keep_p = np.where(h_first, np.minimum(len_p, (budget + 1) // 2), len_p)
    # the side popped first gets what is left of the budget
    keep_p = np.where(p_first, budget - keep_h, keep_p)
    keep_h = np.where(h_first, budget - keep_p, keep_h)
    return keep_p, keep_h


def longest_first_lengths(
    len_p: np.ndarray, len_h: np.ndarray, budget: int
) -> tuple[np.ndarray, np.ndarray]:
    """Lengths after `tokenizers`' longest-first truncation of a pair to `budget` tokens.

    A pair that is too long keeps its shorter side whole and cuts the longer one to the rest,
    unless the shorter side holds more than half the budget: then the shorter side (the premise
    on a tie) keeps budget // 2 tokens and the other one the rest. On ties and odd budgets this
    differs from d2l's rule (`truncated_lengths`).
    """
    over = len_p + len_h > budget
    p_short = len_p <= len_h
    short = np.minimum(len_p, len_h)
    keep_short = np.where(2 * short > budget, budget // 2, short)
    keep_p = np.where(over, np.where(p_short, keep_short, budget - keep_short), len_p)
    keep_h = np.where(over, np.where(p_short, budget - keep_short, keep_short), len_h)
    return keep_p, keep_h


@dataclass(frozen=True)
class Encoded:
    """Pairs as `<cls> p <sep> h <sep>` ids, concatenated (the on-disk layout of make_snli)."""

    token_ids: np.ndarray  # (total,) id dtype
    offsets: np.ndarray  # (N+1,) int64: pair i = token_ids[offsets[i]:offsets[i+1]]
    segment_starts: np.ndarray  # (N,) int16: first segment-1 token = len(p truncated) + 2
    truncated: int  # pairs that lost tokens to max_len

    def arrays(self) -> dict[str, np.ndarray]:
        names = ("token_ids", "offsets", "segment_starts")
        return {name: getattr(self, name) for name in names}

    @staticmethod
    def concatenate(parts: list[Encoded]) -> Encoded:
        lengths = np.concatenate([np.diff(p.offsets) for p in parts])  # (N,)
        return Encoded(
            token_ids=np.concatenate([p.token_ids for p in parts]),
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            segment_starts=np.concatenate([p.segment_starts for p in parts]),
            truncated=sum(p.truncated for p in parts),
        )


@dataclass(frozen=True)
class PairEncoder:
    """Everything a worker needs to encode pairs; sent to each worker once."""

    token_to_id: dict[str, int]  # the pretraining vocabulary
    max_len: int  # of `<cls> p <sep> h <sep>`
    dtype: np.dtype  # artifacts.id_dtype(vocab size)
    unk_id: int
    cls_id: int
    sep_id: int

    @classmethod
    def of(cls, vocab: Vocab, max_len: int) -> PairEncoder:
        """The encoder for `vocab`'s ids (its special tokens wherever it puts them)."""
        return cls(
            token_to_id={t: i for i, t in enumerate(vocab.tokens)},
            max_len=max_len,
            dtype=artifacts.id_dtype(len(vocab)),
            unk_id=vocab.unk_id,
            cls_id=vocab.cls_id,
            sep_id=vocab.sep_id,
        )

    def __post_init__(self) -> None:
        if not 3 <= self.max_len <= np.iinfo(np.int16).max:
            raise UserError(f"make_snli.max_len: {self.max_len} is not in [3, 32767]")

    def encode(self, premises: list[str], hypotheses: list[str]) -> Encoded:
        """Encode one chunk of pairs with array operations (no Python loop per pair)."""
        p_ids, p_len = self._lookup(premises)  # (p_tokens,), (n,)
        h_ids, h_len = self._lookup(hypotheses)
        keep_p, keep_h = truncated_lengths(p_len, h_len, self.max_len - 3)  # (n,) each
        premise, hypothesis = (p_ids, _starts(p_len), p_len), (h_ids, _starts(h_len), h_len)
        return _pairs(premise, hypothesis, keep_p, keep_h, self.cls_id, self.sep_id, self.dtype)

    def _lookup(self, sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Ids of all whitespace tokens, concatenated (tokens,), and tokens per sentence (n,)."""
        tokens = [s.split() for s in sentences]
        lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
        # map(dict.get, ...) runs the lookup loop in C: no Python frame per token
        ids = map(self.token_to_id.get, chain.from_iterable(tokens), repeat(self.unk_id))
        return np.fromiter(ids, dtype=self.dtype, count=int(lengths.sum())), lengths


@dataclass(frozen=True)
class TokenizerPairEncoder:
    """The hf_bert route's encoder: the model's own tokenizer, sent to each worker once.

    It encodes each distinct space-separated word of a chunk on its own, which gives the ids of
    the whole sentence for a BERT tokenizer: its normaliser (`BertNormalizer`) maps each character
    on its own (accents are stripped after a canonical decomposition, whose reordering never
    crosses a space), its pre-tokenizer (`BertPreTokenizer`) splits at every space, and WordPiece
    works within a word. `of` refuses a tokenizer built otherwise, or with an added token
    holding a space, and `tests/test_hf_bert.py` compares with the tokenizer on every pair.
    """

    tokenizer: Any  # a `tokenizers.Tokenizer` without truncation or padding (see `of`)
    max_len: int  # of `[CLS] p [SEP] h [SEP]`
    dtype: np.dtype  # artifacts.id_dtype(len(tokenizer))
    cls_id: int
    sep_id: int

    @classmethod
    def of(cls, tokenizer: Any, max_len: int) -> TokenizerPairEncoder:
        """The encoder for `transformers`' fast BERT `tokenizer`; its pair template must be
        BERT's `[CLS] A [SEP] B [SEP]` (segments 0 up to the first [SEP], then 1), checked."""
        backend = copy.deepcopy(tokenizer.backend_tokenizer)  # the caller's keeps its settings
        backend.no_truncation()
        backend.no_padding()
        _check_bert_pipeline(json.loads(backend.to_str()))
        encoder = cls(backend, max_len, artifacts.id_dtype(len(tokenizer)),
                      tokenizer.cls_token_id, tokenizer.sep_token_id)  # fmt: skip
        probe = ("A man, twice.", "Nobody")
        want = backend.encode(*probe)  # (no truncation) what the tokenizer makes of a pair
        uncut = replace(encoder, max_len=int(np.iinfo(np.int16).max))
        got = uncut.encode([probe[0]], [probe[1]])
        if want.ids != got.token_ids.tolist() or want.type_ids.count(0) != got.segment_starts[0]:
            raise UserError(
                f"the tokenizer encodes a pair as {want.tokens}, not as BERT's "
                "[CLS] premise [SEP] hypothesis [SEP]: not a BERT tokenizer"
            )
        return encoder

    def __post_init__(self) -> None:
        if not 3 <= self.max_len <= np.iinfo(np.int16).max:
            raise UserError(f"make_snli.max_len: {self.max_len} is not in [3, 32767]")

    def encode(self, premises: list[str], hypotheses: list[str]) -> Encoded:
        """Encode one chunk of raw pairs: one call to the tokenizer for the chunk's
        distinct words, then sentences and pairs built with array operations."""
        n = len(premises)
        ids, lengths = self._sentences([*premises, *hypotheses])  # (tokens,), (2n,)
        starts = _starts(lengths)
        premise = (ids, starts[:n], lengths[:n])
        hypothesis = (ids, starts[n:], lengths[n:])
        keep_p, keep_h = longest_first_lengths(lengths[:n], lengths[n:], self.max_len - 3)
        # transformers' tokenizer(p, "") takes an empty hypothesis for none: [CLS] p [SEP]
        alone = np.fromiter((h == "" for h in hypotheses), dtype=bool, count=n)  # (n,)
        keep_p = np.where(alone, np.minimum(lengths[:n], self.max_len - 2), keep_p)
        encoded = _pairs(premise, hypothesis, keep_p, keep_h, self.cls_id, self.sep_id, self.dtype)
        return _without_last_sep(encoded, alone) if alone.any() else encoded

    def _sentences(self, sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Ids of the sentences, concatenated (tokens,), and ids per sentence (n,)."""
        words = [s.split(" ") for s in sentences]  # at least one (maybe empty) word each
        per_sentence = np.fromiter(map(len, words), dtype=np.int64, count=len(words))  # (n,)
        flat = list(chain.from_iterable(words))  # (w,)
        distinct = list(dict.fromkeys(flat))  # (d,) in first-seen order
        row = {word: i for i, word in enumerate(distinct)}
        # one call: each word of a pre-tokenized input is normalised and split on its own
        encoding = self.tokenizer.encode(distinct, is_pretokenized=True, add_special_tokens=False)
        word_ids = np.array(encoding.ids, dtype=self.dtype)  # (d tokens,) word after word
        of_word = np.array(encoding.word_ids, dtype=np.int64)  # (d tokens,)
        word_len = np.bincount(of_word, minlength=len(distinct))  # (d,) 0 for an empty word
        at = np.fromiter(map(row.__getitem__, flat), dtype=np.int64, count=len(flat))  # (w,)
        ids = word_ids[_ranges(_starts(word_len)[at], word_len[at])]  # (tokens,)
        lengths = np.add.reduceat(word_len[at], _starts(per_sentence))  # (n,)
        return ids, lengths


def _without_last_sep(encoded: Encoded, alone: np.ndarray) -> Encoded:
    """`encoded` without the final <sep> of the pairs marked `alone` (n,), whose hypothesis is
    empty and whose segment 1 is then empty too."""
    keep = np.ones(len(encoded.token_ids), dtype=bool)
    keep[encoded.offsets[1:][alone] - 1] = False
    lengths = np.diff(encoded.offsets) - alone
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Encoded(encoded.token_ids[keep], offsets, encoded.segment_starts, encoded.truncated)


def _check_bert_pipeline(tokenizer: dict) -> None:
    """Refuse a tokenizer (its tokenizer.json) whose ids could join text across a space."""
    normalizer = (tokenizer.get("normalizer") or {}).get("type")
    pre_tokenizer = (tokenizer.get("pre_tokenizer") or {}).get("type")
    spaced = [t["content"] for t in tokenizer.get("added_tokens", []) if " " in t["content"]]
    if normalizer not in (None, "BertNormalizer") or pre_tokenizer != "BertPreTokenizer" or spaced:
        raise UserError(
            f"the tokenizer's normalizer is {normalizer}, its pre-tokenizer {pre_tokenizer}"
            f"{f', added tokens {spaced}' if spaced else ''}: make_snli encodes SNLI with BERT "
            "tokenizers only (BertNormalizer or none, BertPreTokenizer, no added token with a "
            "space)"
        )


Side = tuple[np.ndarray, np.ndarray, np.ndarray]  # (ids (tokens,), starts (n,), lengths (n,))


def _pairs(premise: Side, hypothesis: Side, keep_p: np.ndarray, keep_h: np.ndarray,
           cls_id: int, sep_id: int, dtype: np.dtype) -> Encoded:  # fmt: skip
    """`<cls> p <sep> h <sep>` for each pair, keeping the first keep_p / keep_h (n,) tokens of
    each side's sentence, which starts at `starts` in `ids`."""
    (p_ids, p_starts, p_len), (h_ids, h_starts, h_len) = premise, hypothesis
    offsets = np.concatenate([[0], np.cumsum(keep_p + keep_h + 3)]).astype(np.int64)
    first, sep1 = offsets[:-1], offsets[:-1] + 1 + keep_p  # (n,) <cls> and first <sep>
    out = np.empty(offsets[-1], dtype=dtype)
    out[first] = cls_id
    out[_ranges(first + 1, keep_p)] = p_ids[_ranges(p_starts, keep_p)]
    out[sep1] = sep_id
    out[_ranges(sep1 + 1, keep_h)] = h_ids[_ranges(h_starts, keep_h)]
    out[offsets[1:] - 1] = sep_id
    truncated = int(np.count_nonzero(keep_p + keep_h < p_len + h_len))
    return Encoded(out, offsets, (keep_p + 2).astype(np.int16), truncated)


def _starts(lengths: np.ndarray) -> np.ndarray:
    """Start of each ragged piece in the concatenation of pieces of these lengths."""
    return np.cumsum(lengths) - lengths


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of range(s, s + n) for each (s, n): gathers/scatters ragged slices at once."""
    return np.repeat(starts - _starts(lengths), lengths) + np.arange(lengths.sum())


_worker_encoder: PairEncoder | TokenizerPairEncoder | None = None  # set by _init_worker


def _init_worker(encoder: PairEncoder | TokenizerPairEncoder) -> None:
    global _worker_encoder
    _worker_encoder = encoder


def _encode_in_worker(chunk: tuple[list[str], list[str]]) -> Encoded:
    assert _worker_encoder is not None, "_init_worker did not run"
    return _worker_encoder.encode(*chunk)


def encode_pairs(
    encoder: PairEncoder | TokenizerPairEncoder,
    premises: list[str],
    hypotheses: list[str],
    workers: int = 1,
    start_method: str | None = None,
    chunk_size: int = 4096,
    desc: str = "encode",
) -> Encoded:
    """Encode all pairs in chunks, over `workers` processes (1: in this process).

    `start_method` ('fork', 'spawn', 'forkserver'; None: the platform's default) only changes
    how workers start; every chunk is encoded independently, so the result is the same.
    """
    n = len(premises)
    size = max(1, min(chunk_size, -(-n // workers)))  # at least one chunk per worker
    chunks = [(premises[i : i + size], hypotheses[i : i + size]) for i in range(0, max(n, 1), size)]
    parts: list[Encoded] = []
    with contextlib.ExitStack() as stack, tqdm(total=n, desc=desc, unit="pair") as bar:
        if workers == 1:
            results: Iterator[Encoded] = (encoder.encode(p, h) for p, h in chunks)
        else:
            pool = ProcessPoolExecutor(
                min(workers, len(chunks)),
                mp_context=multiprocessing.get_context(start_method),
                initializer=_init_worker,
                initargs=(encoder,),
            )
            results = stack.enter_context(pool).map(_encode_in_worker, chunks)
        for part in results:  # in chunk order
            parts.append(part)
            bar.update(len(part.segment_starts))
    encoded = Encoded.concatenate(parts)
    log.info(
        "encoded %d pairs with %d worker(s): %d tokens, %d pairs truncated to max_len %d",
        n,
        workers,
        len(encoded.token_ids),
        encoded.truncated,
        encoder.max_len,
    )
    return encoded
