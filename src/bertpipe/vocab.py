"""The vocabulary: five special tokens, then corpus tokens by descending count.

Ids are a pure function of the token counts: `<unk>`=0, `<pad>`=1, `<mask>`=2, `<cls>`=3,
`<sep>`=4, then every token seen at least `min_freq` times, most frequent first, ties broken by
code-point order of the token string. d2l's ids depend on the paragraph shuffle (r0.17) or put
the specials mid-alphabet (1.0.3); ours are the same *set* of tokens, so the same size, but the
ids stay put across seeds, which keeps DVC hashes stable. WikiText's literal `<unk>` is our
`<unk>` (never added twice), and any unknown string maps to id 0.

On disk the vocabulary is `vocab.json`, a JSON list of token strings whose index is the id. Its
SHA-1 travels in downstream `meta.json` files so a stage can tell it was given mismatched folders.
"""

from __future__ import annotations

import collections
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from bertpipe import artifacts
from bertpipe.cli import UserError

SPECIALS = ("<unk>", "<pad>", "<mask>", "<cls>", "<sep>")
UNK_ID, PAD_ID, MASK_ID, CLS_ID, SEP_ID = range(len(SPECIALS))


class Vocab:
    """Token <-> id mapping; `vocab[token]` is the id (0 when unknown), `len(vocab)` its size."""

    def __init__(self, tokens: Sequence[str]) -> None:
        problem = _problem(tokens)
        if problem:
            raise ValueError(f"not a vocabulary: {problem}")
        self.tokens: list[str] = list(tokens)  # index = id
        self._index = {t: i for i, t in enumerate(self.tokens)}
        self._sha1: str | None = None

    @classmethod
    def build(cls, tokens: Iterable[str], min_freq: int) -> Vocab:
        """Count `tokens` (flat: e.g. every sentence chained); keep those seen >= min_freq times."""
        return cls.from_counts(collections.Counter(tokens), min_freq)

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], min_freq: int) -> Vocab:
        """The vocabulary of tokens counted `counts[token]` times; see `build`."""
        kept = [t for t, c in counts.items() if c >= min_freq and t not in SPECIALS]
        kept.sort(key=lambda t: (-counts[t], t))
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, token: str) -> int:
        return self._index.get(token, UNK_ID)

    def ids(self, tokens: Iterable[str], count: int = -1) -> np.ndarray:
        """Ids of `tokens` as an int64 array (the loop runs in C: dict.get mapped over them)."""
        lookup = map(self._index.get, tokens, itertools.repeat(UNK_ID))
        return np.fromiter(lookup, dtype=np.int64, count=count)

    def to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.tokens[i] for i in ids]

    def to_bytes(self) -> bytes:
        """The canonical `vocab.json` bytes: one token per line, UTF-8, final newline."""
        return (json.dumps(self.tokens, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    @property
    def sha1(self) -> str:
        """SHA-1 of the `vocab.json` bytes this vocabulary was loaded from or saves as."""
        if self._sha1 is None:
            self._sha1 = artifacts.sha1_of_bytes(self.to_bytes())
        return self._sha1

    def save(self, path: str | Path) -> None:
        data = self.to_bytes()
        artifacts.atomic_write_bytes(path, data)
        self._sha1 = artifacts.sha1_of_bytes(data)

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Read a `vocab.json`; a missing or malformed file is a `UserError` naming it."""
        rerun = "rerun the tokenize_wikitext stage (dvc repro tokenize_wikitext)"
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise UserError(
                f"{path}: cannot read the vocabulary ({err.strerror}); {rerun}"
            ) from None
        try:
            tokens = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"{path}: not a JSON vocabulary ({err}); {rerun}") from None
        problem = _problem(tokens)
        if problem:
            raise UserError(f"{path}: not a vocabulary: {problem}; {rerun}")
        vocab = cls(tokens)
        vocab._sha1 = artifacts.sha1_of_bytes(data)
        return vocab


def _problem(tokens: object) -> str | None:
    """What makes `tokens` unusable as a vocabulary, or None."""
    if not isinstance(tokens, list | tuple) or not all(isinstance(t, str) for t in tokens):
        return "expected a list of token strings"
    if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
        return f"the first ids must be {', '.join(SPECIALS)}"
    if len(set(tokens)) != len(tokens):
        duplicate = next(t for t, c in collections.Counter(tokens).items() if c > 1)
        return f"token {duplicate!r} appears twice"
    return None
