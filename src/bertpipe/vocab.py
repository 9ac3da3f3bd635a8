"""The vocabulary: a list of unique token strings whose index is the id.

Any such list that holds the five special tokens `<unk> <pad> <mask> <cls> <sep>` is a
vocabulary, wherever they sit: d2l 1.0.3 sorts its vocabulary alphabetically, so in the
`vocab.json` of its published `bert.small`/`bert.base` the specials are mid-list. Code never
assumes their ids; it asks the vocabulary (`vocab.pad_id`, ...). Any unknown string maps to
`vocab.unk_id`.

The vocabularies this pipeline builds (`Vocab.build`, `Vocab.from_counts`) are a pure function
of the token counts: `<unk>`=0, `<pad>`=1, `<mask>`=2, `<cls>`=3, `<sep>`=4, then every token
seen at least `min_freq` times, most frequent first, ties broken by code-point order of the
token string. d2l's ids depend on the paragraph shuffle (r0.17) or put the specials
mid-alphabet (1.0.3); ours are the same *set* of tokens, so the same size, but the ids stay put
across seeds, which keeps DVC hashes stable. WikiText's literal `<unk>` is our `<unk>` (never
added twice).

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
from bertpipe.errors import UserError

SPECIALS = ("<unk>", "<pad>", "<mask>", "<cls>", "<sep>")  # `build` puts them at ids 0-4
REBUILD = "rerun the tokenize_wikitext stage (dvc repro tokenize_wikitext)"


class Vocab:
    """Token <-> id mapping; `vocab[token]` is the id (`unk_id` when unknown), `len(vocab)` its
    size; `unk_id`, `pad_id`, `mask_id`, `cls_id`, `sep_id` are the specials' ids."""

    def __init__(self, tokens: Sequence[str]) -> None:
        problem = _problem(tokens)
        if problem:
            raise ValueError(f"not a vocabulary: {problem}")
        self.tokens: list[str] = list(tokens)  # index = id
        self._index = {t: i for i, t in enumerate(self.tokens)}
        self._sha1: str | None = None
        self.unk_id: int = self._index["<unk>"]
        self.pad_id: int = self._index["<pad>"]
        self.mask_id: int = self._index["<mask>"]
        self.cls_id: int = self._index["<cls>"]
        self.sep_id: int = self._index["<sep>"]

    def special_ids(self) -> dict[str, int]:
        """{"unk_id": ..., "pad_id": ..., "mask_id": ..., "cls_id": ..., "sep_id": ...}."""
        names = ("unk_id", "pad_id", "mask_id", "cls_id", "sep_id")
        return {name: getattr(self, name) for name in names}

    @classmethod
    def build(cls, tokens: Iterable[str], min_freq: int) -> Vocab:
        """Count `tokens` (flat: e.g. every sentence chained); keep those seen >= min_freq times.

        The specials come first, at ids 0-4 in `SPECIALS` order, then the kept tokens."""
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
        return self._index.get(token, self.unk_id)

    def ids(self, tokens: Iterable[str], count: int = -1) -> np.ndarray:
        """Ids of `tokens` as an int64 array (the loop runs in C: dict.get mapped over them)."""
        lookup = map(self._index.get, tokens, itertools.repeat(self.unk_id))
        return np.fromiter(lookup, dtype=np.int64, count=count)

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
    def load(cls, path: str | Path, fix: str = REBUILD) -> Vocab:
        """Read a `vocab.json`; a missing or malformed file is a `UserError` naming it, ending
        with `fix` (what to do about it)."""
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise UserError(f"{path}: cannot read the vocabulary ({err.strerror}); {fix}") from None
        try:
            tokens = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"{path}: not a JSON vocabulary ({err}); {fix}") from None
        problem = _problem(tokens)
        if problem:
            raise UserError(f"{path}: not a vocabulary: {problem}; {fix}")
        vocab = cls(tokens)
        vocab._sha1 = artifacts.sha1_of_bytes(data)
        return vocab


def _problem(tokens: object) -> str | None:
    """What makes `tokens` unusable as a vocabulary, or None."""
    if not isinstance(tokens, list | tuple) or not all(isinstance(t, str) for t in tokens):
        return "expected a list of token strings"
    distinct = set(tokens)
    if len(distinct) != len(tokens):
        duplicate = next(t for t, c in collections.Counter(tokens).items() if c > 1)
        return f"token {duplicate!r} appears twice"
    missing = [t for t in SPECIALS if t not in distinct]
    if missing:
        return f"the special token(s) {', '.join(missing)} are missing"
    return None
