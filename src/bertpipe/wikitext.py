"""WikiText reading (d2l's paragraph and sentence rules) and the tokenised corpus on disk.

d2l's rules (`_read_wiki`): a raw line is a paragraph iff it contains " . "; it is stripped,
lower-cased and split on " . " only (so "!" and "?" end no sentence, and the last sentence keeps
its trailing " ." because `strip` removed the space after it); a sentence's tokens are its
whitespace-separated words. Headings and blank lines have no " . " and vanish; one-sentence
paragraphs stay (they feed the vocabulary and negative NSP draws, though they make no pair).
d2l then shuffles the paragraphs; here that seeded shuffle belongs to `make_examples`, so this
module keeps file order.

The tokenised corpus is three flat arrays instead of nested lists, so it loads memory-mapped and
`pretraining` can work on it with array operations: token ids of every sentence concatenated,
sentence offsets into them, and paragraph offsets into the sentences.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertpipe import artifacts
from bertpipe.errors import UserError
from bertpipe.vocab import SPECIALS, Vocab

SENTENCE_END = " . "
ARRAYS = ["token_ids", "sentence_offsets", "paragraph_offsets"]
RERUN = "rerun the tokenize_wikitext stage (dvc repro tokenize_wikitext)"


def split_paragraph(line: str) -> list[str] | None:
    """The sentences of one raw line (newline included), or None when it is no paragraph."""
    if SENTENCE_END not in line:
        return None
    return line.strip().lower().split(SENTENCE_END)


def _read_text(path: str | Path) -> str:
    try:
        with open(path, encoding="utf-8") as f:  # universal newlines, as d2l's readlines()
            return f.read()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; run the download_wikitext stage first") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder; pass the WikiText .tokens file itself") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; pass a WikiText .tokens file") from None


def _no_sentences(path: str | Path) -> UserError:
    return UserError(
        f"{path}: no line contains ' . ', so no sentences; pass a WikiText .tokens file"
    )


def read_paragraphs(path: str | Path) -> list[list[list[str]]]:
    """Paragraphs -> sentences -> tokens of a WikiText `.tokens` file, in file order.

    The rules stated plainly; `tokenize` computes the same corpus faster from flat lists.
    """
    lines = _read_text(path).split("\n")  # readlines() splits at "\n" only
    paragraphs = [split_paragraph(line) for line in lines]
    paragraphs = [[s.split() for s in p] for p in paragraphs if p is not None]
    if not paragraphs:
        raise _no_sentences(path)
    return paragraphs


@dataclass(frozen=True)
class Corpus:
    """Tokenised paragraphs as flat arrays: sentence i = token_ids[s[i]:s[i+1]], paragraph j =
    sentences p[j]..p[j+1]-1."""

    token_ids: np.ndarray  # (num_tokens,) id dtype
    sentence_offsets: np.ndarray  # (num_sentences + 1,) int64
    paragraph_offsets: np.ndarray  # (num_paragraphs + 1,) int64
    vocab_size: int
    vocab_sha1: str

    @property
    def num_paragraphs(self) -> int:
        return len(self.paragraph_offsets) - 1

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_offsets) - 1

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_adjacent_pairs(self) -> int:
        """Sentence pairs (a, next a) inside a paragraph: k - 1 in a paragraph of k sentences."""
        return self.num_sentences - self.num_paragraphs

    def meta(self) -> dict:
        return {
            "vocab_size": self.vocab_size,
            "vocab_sha1": self.vocab_sha1,
            "num_paragraphs": self.num_paragraphs,
            "num_sentences": self.num_sentences,
            "num_tokens": self.num_tokens,
            "id_dtype": artifacts.id_dtype(self.vocab_size).name,
            "special_ids": {t: i for i, t in enumerate(SPECIALS)},
        }


def encode(paragraphs: list[list[list[str]]], vocab: Vocab) -> Corpus:
    """Map tokenised paragraphs to a `Corpus` of ids under `vocab`."""
    sentences = list(itertools.chain.from_iterable(paragraphs))
    sentence_lens = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
    paragraph_lens = np.fromiter(map(len, paragraphs), dtype=np.int64, count=len(paragraphs))
    ids = vocab.ids(itertools.chain.from_iterable(sentences), count=int(sentence_lens.sum()))
    return Corpus(
        token_ids=ids.astype(artifacts.id_dtype(len(vocab))),
        sentence_offsets=np.concatenate([[0], np.cumsum(sentence_lens)]),
        paragraph_offsets=np.concatenate([[0], np.cumsum(paragraph_lens)]),
        vocab_size=len(vocab),
        vocab_sha1=vocab.sha1,
    )


def tokenize(path: str | Path, min_freq: int, workers: int = 1) -> tuple[Corpus, Vocab]:
    """`encode(read_paragraphs(path), vocab)` and its vocabulary, from flat token lists.

    Nested lists of a few million short strings are what makes the plain path slow. Here the
    text is cut into `workers` parts at line ends, tokenised in parallel processes by
    `_tokenize_part` into distinct tokens and one code per token; the parts' tokens are then
    merged, lower-cased, counted and mapped to ids with array operations, once per distinct
    token rather than per occurrence.
    """
    text = _read_text(path)
    marks = _unused_characters(text, 2, path)
    cuts = [0, *(text.find("\n", len(text) * k // workers) + 1 for k in range(1, workers))]
    cuts = sorted({c for c in cuts if c > 0} | {0, len(text)})  # parts end after a newline
    parts = [text[a:b] for a, b in itertools.pairwise(cuts)] or [text]
    del text
    with contextlib.ExitStack() as stack:  # the first part is done here, the others in workers
        pool = stack.enter_context(ProcessPoolExecutor(len(parts) - 1)) if parts[1:] else None
        others = [pool.submit(_tokenize_part, part, *marks) for part in parts[1:]] if pool else []
        results = [_tokenize_part(parts[0], *marks), *(f.result() for f in others)]
    if not any(len(codes) for _, codes in results):
        raise _no_sentences(path)
    index: dict[str, int] = {}  # distinct token -> code over all parts
    recoded = []
    for types, part_codes in results:
        to_index = np.array([index.setdefault(t, len(index)) for t in types], dtype=np.int32)
        recoded.append(to_index[part_codes])
    codes = np.concatenate(recoded)  # (tokens,)
    del results
    counts_by_code = np.bincount(codes, minlength=len(index)).tolist()
    # d2l lower-cases whole lines; lower() never makes or removes whitespace, and its one
    # context rule (final sigma) stops at whitespace, so lower-casing each distinct token and
    # merging those that become equal gives the same tokens
    lowered = [t.lower() for t in index]
    counts: collections.Counter[str] = collections.Counter()
    for token, count in zip(lowered, counts_by_code, strict=True):
        counts[token] += count
    sentence_mark, paragraph_mark = marks
    counts.pop(sentence_mark, None)  # absent when no stripped line keeps a " . "
    counts.pop(paragraph_mark)
    vocab = Vocab.from_counts(counts, min_freq)
    mark_ids = {sentence_mark: -1, paragraph_mark: -2}
    ids = np.array([mark_ids.get(t, vocab[t]) for t in lowered], dtype=np.int32)[codes]
    mark_at = np.flatnonzero(ids < 0)  # every mark ends a sentence; a paragraph mark also ends
    sentence_ends = mark_at - np.arange(len(mark_at))  # tokens before each mark, marks excluded
    paragraph_ends = np.flatnonzero(ids[mark_at] == -2) + 1  # sentences up to each paragraph end
    corpus = Corpus(
        token_ids=ids[ids >= 0].astype(artifacts.id_dtype(len(vocab))),
        sentence_offsets=np.concatenate([[0], sentence_ends]).astype(np.int64),
        paragraph_offsets=np.concatenate([[0], paragraph_ends]).astype(np.int64),
        vocab_size=len(vocab),
        vocab_sha1=vocab.sha1,
    )
    return corpus, vocab


def _tokenize_part(
    text: str, sentence_mark: str, paragraph_mark: str
) -> tuple[list[str], np.ndarray]:
    """Distinct tokens of the paragraph lines of `text` (whole lines), and the index into them
    of every token (marks included).

    The stripped paragraph lines are joined with a paragraph mark after each, every " . "
    becomes a sentence mark, and one `split()` gives all tokens and marks (marks are private-use
    characters absent from the text, so no word can equal one). The dict pass maps each token to
    the position of its first occurrence (the loop runs in C); positions become dense codes.
    """
    lines = [line.strip() for line in text.split("\n") if SENTENCE_END in line]
    if not lines:
        return [], np.empty(0, dtype=np.int32)
    joined = f"\n{paragraph_mark}\n".join(lines) + f"\n{paragraph_mark}"
    tokens = joined.replace(SENTENCE_END, f" {sentence_mark} ").split()
    del joined
    first_seen: dict[str, int] = {}
    first = np.fromiter(  # (tokens,) position of each token's first occurrence
        map(first_seen.setdefault, tokens, itertools.count()), dtype=np.int64, count=len(tokens)
    )
    del tokens
    dense = np.empty(len(first), dtype=np.int32)
    dense[np.fromiter(first_seen.values(), dtype=np.int64)] = np.arange(len(first_seen))
    return list(first_seen), dense[first]


def _unused_characters(text: str, n: int, path: str | Path) -> list[str]:
    """`n` private-use characters (not whitespace, unchanged by lower()) that `text` lacks."""
    found = []
    for code in range(0xE000, 0xF900):
        if chr(code) not in text:
            found.append(chr(code))
            if len(found) == n:
                return found
    raise UserError(f"{path}: uses every private-use character, which tokenize needs as marks")


def save(folder: str | Path, corpus: Corpus, vocab: Vocab) -> None:
    """Write `vocab.json`, the three arrays and `meta.json` into `folder`."""
    vocab.save(Path(folder) / "vocab.json")
    artifacts.save_arrays(folder, {name: getattr(corpus, name) for name in ARRAYS})
    artifacts.write_json(Path(folder) / "meta.json", corpus.meta())


def load(folder: str | Path) -> Corpus:
    """Read a tokenize_wikitext folder (arrays memory-mapped), checking that its files agree."""
    folder = Path(folder)
    for name in ["meta.json", "vocab.json", *(f"{a}.npy" for a in ARRAYS)]:
        if not (folder / name).is_file():
            raise UserError(f"{folder / name}: missing; {RERUN}")
    try:
        meta = artifacts.read_json(folder / "meta.json")
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError both are
        raise UserError(f"{folder / 'meta.json'}: not valid JSON ({err}); {RERUN}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{folder / 'meta.json'}: expected a JSON object; {RERUN}")
    vocab = Vocab.load(folder / "vocab.json")
    if meta.get("vocab_sha1") != vocab.sha1 or meta.get("vocab_size") != len(vocab):
        raise UserError(
            f"{folder / 'vocab.json'}: does not match meta.json (another run?); {RERUN}"
        )
    arrays = artifacts.load_arrays(folder, ARRAYS)
    corpus = Corpus(**arrays, vocab_size=len(vocab), vocab_sha1=vocab.sha1)
    problem = _problem(corpus, meta)
    if problem:
        raise UserError(f"{folder}: {problem}; {RERUN}")
    return corpus


def _problem(corpus: Corpus, meta: dict) -> str | None:
    """What makes the loaded arrays inconsistent with each other or with meta.json, or None."""
    s, p, ids = corpus.sentence_offsets, corpus.paragraph_offsets, corpus.token_ids
    if ids.dtype != artifacts.id_dtype(corpus.vocab_size):
        return (
            f"token_ids.npy has dtype {ids.dtype}, expected {artifacts.id_dtype(corpus.vocab_size)}"
        )
    if s.dtype != np.int64 or p.dtype != np.int64:
        return "an offsets file is not int64"
    if meta.get("num_tokens") != len(ids) or meta.get("num_sentences") != len(s) - 1:
        return "token_ids.npy or sentence_offsets.npy disagrees with meta.json's counts"
    if meta.get("num_paragraphs") != len(p) - 1 or len(p) < 2:
        return "paragraph_offsets.npy disagrees with meta.json's count or is empty"
    if s[0] != 0 or s[-1] != len(ids) or np.any(np.diff(s) < 0):
        return "sentence_offsets.npy does not cover token_ids.npy in order"
    if p[0] != 0 or p[-1] != len(s) - 1 or np.any(np.diff(p) <= 0):
        return "paragraph_offsets.npy does not cover the sentences in order"
    if len(ids) and int(ids.max()) >= corpus.vocab_size:
        return f"token_ids.npy holds ids beyond the vocabulary size {corpus.vocab_size}"
    return None
