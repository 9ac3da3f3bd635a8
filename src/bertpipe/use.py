"""Using trained models: SNLI labels for sentence pairs, and BERT's contextual token vectors.

`predict` gives the fine-tuned classifier's label and class probabilities for any number of
(premise, hypothesis) pairs. Sentences are tokenised as make_snli tokenises SNLI (`snli.clean`:
no brackets, lower case, whitespace split; so punctuation must be space-separated, as in SNLI's
parses), encoded with `snli.PairEncoder` (d2l's pair truncation), sorted by length and batched
through the training code's `collate_snli`, so each batch is padded only to its longest pair.

`encode` is d2l's `get_bert_encoding`: the encoder's output for `<cls> a <sep>` or
`<cls> a <sep> b <sep>`, one vector per token. `crane_demo` repeats d2l's example: "crane" in
"a crane is flying" and in "a crane driver came" / "he just left" get different vectors.

A checkpoint's meta records the SHA-1 and size of the vocabulary it was trained with; a
vocabulary file that is not that one is refused, since its ids would mean other tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bertpipe import artifacts, checkpoints, snli
from bertpipe.errors import UserError
from bertpipe.model import BERTClassifier, BERTModel
from bertpipe.vocab import Vocab

PASS_VOCAB = (
    "pass the vocab.json the model was trained with (the one beside the model it started from: "
    "data/pretrain/vocab.json, or data/d2l_bert/<name>/vocab.json for d2l's weights)"
)
TSV_SUFFIXES = (".tsv", ".txt")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


# ----------------------------------------------------------------------------------------------
# Checkpoints and their vocabulary


def load_classifier(path: str | Path) -> tuple[BERTClassifier, dict[str, Any]]:
    """A fine-tuned classifier (eval mode, CPU) and its meta."""
    model, meta = checkpoints.load_classifier(path)
    return model.eval(), meta


def load_bert(path: str | Path) -> tuple[BERTModel, dict[str, Any]]:
    """A pretrained (or imported) BERT (eval mode, CPU) and its meta."""
    model, meta = checkpoints.load_bert(path)
    return model.eval(), meta


def load_vocab(path: str | Path, meta: dict[str, Any], model_path: str | Path) -> Vocab:
    """The vocabulary at `path`, refused unless it is the one the checkpoint was trained with.

    It matches when its file's SHA-1 is the recorded one, or when the SHA-1 of its token list in
    our canonical bytes is (the same list written otherwise, e.g. without indentation).
    """
    vocab = Vocab.load(path, fix=PASS_VOCAB)
    canonical = artifacts.sha1_of_bytes(vocab.to_bytes())
    if len(vocab) != meta["vocab_size"] or meta["vocab_sha1"] not in (vocab.sha1, canonical):
        raise UserError(
            f"{path}: not the vocabulary {model_path} was trained with ({len(vocab)} tokens, "
            f"SHA-1 {vocab.sha1[:10]}; the model has {meta['vocab_size']} tokens, SHA-1 "
            f"{meta['vocab_sha1'][:10]}); {PASS_VOCAB}"
        )
    return vocab


# ----------------------------------------------------------------------------------------------
# Predict


def read_pairs(path: str | Path) -> tuple[list[str], list[str]]:
    """(premises, hypotheses) from a `.tsv` (premise<TAB>hypothesis per line; an optional
    header `premise<TAB>hypothesis`) or a `.jsonl` file ({"premise": ..., "hypothesis": ...})."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TSV_SUFFIXES + JSONL_SUFFIXES:
        raise UserError(f"{path}: unknown format; name it .tsv or .jsonl")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"{path}: cannot read the pairs ({err.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    read = _tsv_pair if suffix in TSV_SUFFIXES else _jsonl_pair
    premises, hypotheses = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or (number == 1 and line.lower() == "premise\thypothesis"):
            continue
        premise, hypothesis = read(line, f"{path}, line {number}")
        premises.append(premise)
        hypotheses.append(hypothesis)
    if not premises:
        raise UserError(f"{path}: no sentence pairs in the file")
    return premises, hypotheses


def _tsv_pair(line: str, where: str) -> tuple[str, str]:
    fields = line.split("\t")
    if len(fields) != 2:
        raise UserError(
            f"{where}: {len(fields)} tab-separated fields; expected premise, hypothesis"
        )
    return fields[0], fields[1]


def _jsonl_pair(line: str, where: str) -> tuple[str, str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: not JSON ({err})") from None
    if not isinstance(record, dict):
        raise UserError(f'{where}: expected an object {{"premise": ..., "hypothesis": ...}}')
    values = [record.get("premise"), record.get("hypothesis")]
    if not all(isinstance(v, str) for v in values):
        raise UserError(f'{where}: needs string fields "premise" and "hypothesis"')
    return values[0], values[1]


def encode_pairs(vocab: Vocab, premises: list[str], hypotheses: list[str], max_len: int) -> dict:
    """make_snli's arrays for these pairs (labels all 0): cleaned, truncated to `max_len`."""
    encoded = snli.PairEncoder.of(vocab, max_len).encode(
        [snli.clean(p) for p in premises], [snli.clean(h) for h in hypotheses]
    )
    return {**encoded.arrays(), "labels": np.zeros(len(premises), dtype=np.uint8)}


@dataclass(frozen=True)
class Prediction:
    premise: str
    hypothesis: str
    label: str
    probabilities: dict[str, float]


def predictions(
    premises: list[str], hypotheses: list[str], probs: np.ndarray, labels: Sequence[str]
) -> list[Prediction]:
    best = probs.argmax(axis=1)
    return [
        Prediction(p, h, labels[k], dict(zip(labels, map(float, row), strict=True)))
        for p, h, k, row in zip(premises, hypotheses, best, probs, strict=True)
    ]


def format_predictions(rows: list[Prediction], labels: Sequence[str], style: str) -> str:
    """`table` (aligned, for reading), `tsv` or `jsonl`; one line per pair, input order."""
    if style == "jsonl":
        return "".join(
            json.dumps(
                {"premise": r.premise, "hypothesis": r.hypothesis, "label": r.label,
                 "probabilities": {k: round(v, 6) for k, v in r.probabilities.items()}},
                ensure_ascii=False,
            ) + "\n"
            for r in rows
        )  # fmt: skip
    if style == "tsv":
        lines = ["\t".join(["premise", "hypothesis", "label", *labels])]
        for r in rows:
            probs = [f"{r.probabilities[k]:.6f}" for k in labels]
            lines.append(
                "\t".join([_one_line(r.premise), _one_line(r.hypothesis), r.label, *probs])
            )
        return "\n".join(lines) + "\n"
    width = max(len(k) for k in ["label", *labels])
    head = f"{'#':>5}  {'label':<{width}}" + "".join(f"  {k:>{width}}" for k in labels)
    lines = [f"{head}  premise | hypothesis"]
    for i, r in enumerate(rows, start=1):
        probs = "".join(f"  {r.probabilities[k]:>{width}.4f}" for k in labels)
        text = f"{_one_line(r.premise)} | {_one_line(r.hypothesis)}"
        lines.append(f"{i:>5}  {r.label:<{width}}{probs}  {text}")
    return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------------------------
# Encode (d2l's get_bert_encoding)


@dataclass(frozen=True)
class Encoding:
    tokens: list[str]  # <cls> a <sep> [b <sep>], as tokenised
    ids: list[int]
    segments: list[int]
    vectors: Tensor  # (T, H): the encoder's output for each token


@torch.no_grad()
def encode(bert: BERTModel, vocab: Vocab, text_a: str, text_b: str | None = None) -> Encoding:
    """The contextual vectors of `<cls> a <sep>` (and `b <sep>`), as d2l's get_bert_encoding."""
    a = snli.clean(text_a).split()
    b = snli.clean(text_b).split() if text_b is not None else []
    tokens = ["<cls>", *a, "<sep>"] + ([*b, "<sep>"] if text_b is not None else [])
    segments = [0] * (len(a) + 2) + [1] * (len(tokens) - len(a) - 2)
    max_position = bert.encoder.pos_embedding.shape[1]
    if len(tokens) > max_position:
        raise UserError(
            f"{len(tokens)} tokens with <cls> and <sep>; the model reads at most {max_position}"
        )
    ids = [vocab[t] for t in tokens]
    bert.eval()
    device = bert.encoder.pos_embedding.device
    X = bert.encoder(
        torch.tensor([ids], device=device),
        torch.tensor([segments], device=device),
        torch.tensor([len(ids)], device=device),
    )  # (1, T, H)
    return Encoding(tokens, ids, segments, X[0].cpu())


def format_encoding(enc: Encoding, vocab: Vocab, dims: int) -> str:
    """The tokens, their ids and segments, and the first `dims` features of each vector."""
    T, H = enc.vectors.shape
    lines = [f"encoded shape (1, {T}, {H}); first {min(dims, H)} of {H} features per token"]
    width = max(len(t) for t in enc.tokens)
    for i, (token, id_, seg) in enumerate(zip(enc.tokens, enc.ids, enc.segments, strict=True)):
        unknown = " (unknown: <unk>)" if id_ == vocab.unk_id and token != "<unk>" else ""
        values = ", ".join(f"{v:8.4f}" for v in enc.vectors[i, :dims].tolist())
        lines.append(f"{i:>4}  {token:<{width}}  id {id_:>6}  seg {seg}  [{values}]{unknown}")
    return "\n".join(lines) + "\n"


def cosine(u: Tensor, v: Tensor) -> float:
    return torch.nn.functional.cosine_similarity(u.double(), v.double(), dim=0).item()


CRANE_A = ("a crane is flying", None)
CRANE_B = ("a crane driver came", "he just left")


def crane_demo(bert: BERTModel, vocab: Vocab, dims: int = 3) -> tuple[str, float]:
    """d2l's example: "crane" (position 2) alone vs in a pair; (report, cosine similarity)."""
    one, two = encode(bert, vocab, *CRANE_A), encode(bert, vocab, *CRANE_B)
    similarity = cosine(one.vectors[2], two.vectors[2])
    lines = []
    for enc, (a, b) in ((one, CRANE_A), (two, CRANE_B)):
        T, H = enc.vectors.shape
        values = ", ".join(f"{v:.4f}" for v in enc.vectors[2, :dims].tolist())
        text = f"{a!r}" + (f" + {b!r}" if b else "")
        lines.append(f"{text}: encoded (1, {T}, {H}); 'crane' vector[:{dims}] = [{values}]")
    if vocab["crane"] == vocab.unk_id:
        lines.append("note: 'crane' is not in this vocabulary, so both are <unk> vectors")
    lines.append(f"cosine similarity of the two 'crane' vectors: {similarity:.4f}")
    return "\n".join(lines) + "\n", similarity
