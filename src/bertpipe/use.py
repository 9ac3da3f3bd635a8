"""Using trained models: SNLI labels for sentence pairs, contextual token vectors, masked words.

`predict` gives the fine-tuned classifier's label and class probabilities for any number of
(premise, hypothesis) pairs. Sentences are tokenised as make_snli tokenises SNLI: on this
pipeline's vocabularies `snli.clean` (no brackets, lower case, whitespace split; so punctuation
must be space-separated, as in SNLI's parses) and `snli.PairEncoder` (d2l's pair truncation); on
the hf_bert route the raw text through the model's own tokenizer (`snli.TokenizerPairEncoder`).
Pairs are sorted by length and batched through the training code's `collate_snli`, so each
batch is padded only to its longest pair.

`encode` is d2l's `get_bert_encoding`: the encoder's output for `<cls> a <sep>` or
`<cls> a <sep> b <sep>`, one vector per token (`encode_hf`: `[CLS] a [SEP] ...` as a Hub BERT's
tokenizer makes it). `crane_demo` repeats d2l's example: "crane" in "a crane is flying" and in
"a crane driver came" / "he just left" get different vectors.

`fill_mask` is the masked-word demo BERT is known for: the MLM head's most probable tokens, and
their probabilities, at each `<mask>` (`[MASK]`: either spelling works on every route) of a
sentence; `fill_mask_hf` does it with a Hub BERT's MLM head.

A checkpoint's meta records the SHA-1 and size of the vocabulary it was trained with (on the
hf_bert route the SHA-1 of the tokenizer's tokenizer.json); a vocabulary or tokenizer that is not
that one is refused, since its ids would mean other tokens.

The hf_bert route's models come from `hf_model`, which imports `transformers`: the functions
here take them as arguments and never import it, so `bertpipe predict` on this pipeline's own
models starts without it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bertpipe import artifacts, checkpoints, hf_bert, routes, snli
from bertpipe.errors import UserError
from bertpipe.model import BERTModel
from bertpipe.vocab import Vocab

PASS_VOCAB = (
    "pass the vocab.json the model was trained with (the one beside the model it started from: "
    "data/pretrain/vocab.json, or data/d2l_bert/<name>/vocab.json for d2l's weights)"
)
PASS_TOKENIZER = "pass the data/hf_bert/<name> folder fine-tuning started from"
MASKS = ("<mask>", "[MASK]")  # this pipeline's spelling and Google's: either works everywhere
JIM_HENSON = "who was jim henson ? jim [MASK] was a puppeteer"  # fill-mask's demo sentence
TSV_SUFFIXES = (".tsv", ".txt")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


# ----------------------------------------------------------------------------------------------
# Checkpoints and their vocabulary


def load_classifier(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A fine-tuned classifier of any route (eval mode, CPU) and its meta."""
    model, meta = routes.load_classifier(path)
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


def load_tokenizer(folder: str | Path, meta: dict[str, Any], model_path: str | Path) -> Any:
    """The hf_bert folder's tokenizer, refused unless it is the one the checkpoint's ids are of."""
    if not Path(folder).is_dir():
        raise UserError(f"{folder}: not a folder; {model_path} was fine-tuned on the hf_bert "
                        f"route, so {PASS_TOKENIZER}")  # fmt: skip
    sha1 = hf_bert.tokenizer_sha1(folder)
    if sha1 != meta["vocab_sha1"]:
        raise UserError(
            f"{folder}: not the tokenizer {model_path} was fine-tuned with (tokenizer.json SHA-1 "
            f"{sha1[:10]}; the model's {meta['vocab_sha1'][:10]}); {PASS_TOKENIZER}"
        )
    return hf_bert.load_tokenizer(folder)


def load_ids(path: str | Path, meta: dict[str, Any], model_path: str | Path) -> Any:
    """What gives a classifier's ids meaning: its Vocab, or on the hf_bert route its tokenizer."""
    if checkpoints.is_transformers(meta):
        return load_tokenizer(path, meta, model_path)
    return load_vocab(path, meta, model_path)


def pretrained_paths(model: str | Path, vocab: str | Path | None) -> tuple[Path, Path | None]:
    """(model, vocabulary) for `encode` and `fill-mask`: `model` is a pretrained checkpoint or
    a folder of any route; the vocabulary defaults to the vocab.json beside the checkpoint, and
    an hf_bert folder brings its own tokenizer (None)."""
    model = Path(model)
    if routes.is_hf_folder(model):
        if vocab is not None:
            raise UserError(f"{model}: an hf_bert folder brings its own tokenizer; drop --vocab")
        return model, None
    routes.refuse_part_of_hf_folder(model)
    checkpoint = model / artifacts.WEIGHTS_FILE if model.is_dir() else model
    return checkpoint, Path(vocab) if vocab is not None else checkpoint.parent / "vocab.json"


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


def encode_pairs(ids: Any, premises: list[str], hypotheses: list[str], max_len: int) -> dict:
    """make_snli's arrays for these pairs (labels all 0), truncated to `max_len`, as make_snli
    encodes SNLI: with a Vocab, cleaned; with an hf_bert tokenizer (`load_ids`), raw."""
    if isinstance(ids, Vocab):
        encoded = snli.PairEncoder.of(ids, max_len).encode(
            [snli.clean(p) for p in premises], [snli.clean(h) for h in hypotheses]
        )
    else:
        encoded = snli.TokenizerPairEncoder.of(ids, max_len).encode(premises, hypotheses)
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
    unknown: list[bool]  # whether each token's id is the unknown token's
    unk_token: str  # how the vocabulary spells it


def _check_fits(num_tokens: int, max_position: int) -> None:
    if num_tokens > max_position:
        raise UserError(
            f"{num_tokens} tokens with the special ones; the model reads at most {max_position}"
        )


def _ours(text_a: str, text_b: str | None) -> tuple[list[str], list[int]]:
    """(tokens, segments) of `<cls> a <sep> [b <sep>]`, cleaned as make_snli cleans SNLI."""
    a = snli.clean(text_a).split()
    b = snli.clean(text_b).split() if text_b is not None else []
    tokens = ["<cls>", *a, "<sep>"] + ([*b, "<sep>"] if text_b is not None else [])
    return tokens, [0] * (len(a) + 2) + [1] * (len(tokens) - len(a) - 2)


@torch.no_grad()
def _encoded(bert: BERTModel, ids: list[int], segments: list[int]) -> Tensor:
    """This pipeline's encoder on one sequence: (1, T, H)."""
    _check_fits(len(ids), bert.encoder.pos_embedding.shape[1])
    bert.eval()
    device = bert.encoder.pos_embedding.device
    return bert.encoder(
        torch.tensor([ids], device=device),
        torch.tensor([segments], device=device),
        torch.tensor([len(ids)], device=device),
    )


def encode(bert: BERTModel, vocab: Vocab, text_a: str, text_b: str | None = None) -> Encoding:
    """The contextual vectors of `<cls> a <sep>` (and `b <sep>`), as d2l's get_bert_encoding."""
    tokens, segments = _ours(text_a, text_b)
    ids = [vocab[t] for t in tokens]
    X = _encoded(bert, ids, segments)  # (1, T, H)
    unknown = [i == vocab.unk_id and t != "<unk>" for t, i in zip(tokens, ids, strict=True)]
    return Encoding(tokens, ids, segments, X[0].cpu(), unknown, "<unk>")


@torch.no_grad()
def encode_hf(bert: Any, tokenizer: Any, text_a: str, text_b: str | None = None) -> Encoding:
    """The same with transformers' BertModel (`hf_model.load_bert`) and its tokenizer:
    `[CLS] a [SEP] [b [SEP]]` in the tokenizer's own casing and WordPiece tokens."""
    enc = tokenizer(text_a, text_b)
    ids, segments = enc["input_ids"], enc["token_type_ids"]
    _check_fits(len(ids), bert.config.max_position_embeddings)
    bert.eval()
    X = bert(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([segments]))
    unknown = [i == tokenizer.unk_token_id for i in ids]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return Encoding(tokens, ids, segments, X.last_hidden_state[0], unknown, tokenizer.unk_token)


def format_encoding(enc: Encoding, dims: int) -> str:
    """The tokens, their ids and segments, and the first `dims` features of each vector."""
    T, H = enc.vectors.shape
    lines = [f"encoded shape (1, {T}, {H}); first {min(dims, H)} of {H} features per token"]
    width = max(len(t) for t in enc.tokens)
    rows = zip(enc.tokens, enc.ids, enc.segments, enc.unknown, strict=True)
    for i, (token, id_, seg, unknown_id) in enumerate(rows):
        unknown = f" (unknown: {enc.unk_token})" if unknown_id else ""
        values = ", ".join(f"{v:8.4f}" for v in enc.vectors[i, :dims].tolist())
        lines.append(f"{i:>4}  {token:<{width}}  id {id_:>6}  seg {seg}  [{values}]{unknown}")
    return "\n".join(lines) + "\n"


def cosine(u: Tensor, v: Tensor) -> float:
    return torch.nn.functional.cosine_similarity(u.double(), v.double(), dim=0).item()


CRANE_A = ("a crane is flying", None)
CRANE_B = ("a crane driver came", "he just left")


def crane_demo(encoder: Any, dims: int = 3) -> tuple[str, float]:
    """d2l's example: "crane" (position 2) alone vs in a pair; (report, cosine similarity).

    `encoder(text_a, text_b)` gives an Encoding (`encode` or `encode_hf` with their model)."""
    one, two = encoder(*CRANE_A), encoder(*CRANE_B)
    similarity = cosine(one.vectors[2], two.vectors[2])
    lines = []
    for enc, (a, b) in ((one, CRANE_A), (two, CRANE_B)):
        T, H = enc.vectors.shape
        values = ", ".join(f"{v:.4f}" for v in enc.vectors[2, :dims].tolist())
        text = f"{a!r}" + (f" + {b!r}" if b else "")
        lines.append(f"{text}: encoded (1, {T}, {H}); 'crane' vector[:{dims}] = [{values}]")
    if one.unknown[2]:
        lines.append(f"note: 'crane' is not in this vocabulary, so both are {one.unk_token} "
                     "vectors")  # fmt: skip
    elif one.tokens[2] != "crane":
        lines.append(f"note: the tokenizer splits 'crane'; position 2 is its first piece, "
                     f"{one.tokens[2]!r}")  # fmt: skip
    lines.append(f"cosine similarity of the two 'crane' vectors: {similarity:.4f}")
    return "\n".join(lines) + "\n", similarity


# ----------------------------------------------------------------------------------------------
# Fill-mask: the MLM head's guesses at the masked tokens


@dataclass(frozen=True)
class Filled:
    tokens: list[str]  # the sentence as the model reads it, specials included
    positions: list[int]  # of its mask tokens
    guesses: list[list[tuple[str, float]]]  # per mask: (token, probability), most probable first


def _guesses(logits: Tensor, top_k: int, token_of: Any) -> list[list[tuple[str, float]]]:
    """The `top_k` tokens and probabilities of each row of `logits` (P, V)."""
    probs, ids = logits.float().softmax(-1).topk(min(top_k, logits.shape[-1]))  # (P, k)
    return [list(zip(token_of(row_ids.tolist()), row.tolist(), strict=True))
            for row, row_ids in zip(probs, ids, strict=True)]  # fmt: skip


def _no_mask(text: str) -> UserError:
    return UserError(f"no {MASKS[0]} or {MASKS[1]} in {text!r}: mark the word to guess with one")


@torch.no_grad()
def fill_mask(bert: BERTModel, vocab: Vocab, text: str, top_k: int = 5) -> Filled:
    """This pipeline's (or d2l's) MLM head at each `<mask>` of `<cls> text <sep>`, the text
    cleaned as make_snli cleans SNLI (lower case, split on whitespace)."""
    tokens, segments = _ours(text.replace(MASKS[1], MASKS[0]), None)
    positions = [i for i, t in enumerate(tokens) if t == MASKS[0]]
    if not positions:
        raise _no_mask(text)
    X = _encoded(bert, [vocab[t] for t in tokens], segments)  # (1, T, H)
    logits = bert.mlm(X, torch.tensor([positions], device=X.device))[0]  # (P, V)
    return Filled(
        tokens, positions, _guesses(logits, top_k, lambda ids: [vocab.tokens[i] for i in ids])
    )


@torch.no_grad()
def fill_mask_hf(mlm: Any, tokenizer: Any, text: str, top_k: int = 5) -> Filled:
    """The same with a Hub BERT's MLM head (`hf_model.load_mlm`) at each `[MASK]`, the text
    tokenised by its own tokenizer."""
    enc = tokenizer(text.replace(MASKS[0], tokenizer.mask_token))
    ids = enc["input_ids"]
    positions = [i for i, id_ in enumerate(ids) if id_ == tokenizer.mask_token_id]
    if not positions:
        raise _no_mask(text)
    _check_fits(len(ids), mlm.config.max_position_embeddings)
    mlm.eval()
    out = mlm(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([enc["token_type_ids"]]))
    logits = out.logits[0, positions]  # (P, V)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return Filled(tokens, positions, _guesses(logits, top_k, tokenizer.convert_ids_to_tokens))


def format_filled(filled: Filled) -> str:
    """The sentence as read, then per mask its guesses with their probabilities."""
    lines = [" ".join(filled.tokens)]
    for position, guesses in zip(filled.positions, filled.guesses, strict=True):
        lines.append(f"{filled.tokens[position]} at position {position}:")
        width = max(len(token) for token, _ in guesses)
        lines += [f"  {rank:>2}  {token:<{width}}  {p:.4f}"
                  for rank, (token, p) in enumerate(guesses, start=1)]  # fmt: skip
    return "\n".join(lines) + "\n"
