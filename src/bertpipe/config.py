"""Typed, strict params: one frozen dataclass per `params.yaml` section.

Loading is strict because a silently ignored typo is worse than a crash: an unknown, missing,
mistyped or repeated key is an error that names the file and the key. PyYAML follows YAML 1.1,
which reads `1e-3` (no dot) and `1.0e3` (unsigned exponent) as *strings*; DVC reads YAML 1.2,
where they are numbers, and writes them so (`dvc exp run -S finetune.lr=2e-5` leaves `2e-05` in
params.yaml), so here they are numbers too. PyYAML also keeps the last of two equal keys in a
mapping without a word; here that is an error naming both lines.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bertpipe.errors import UserError


class ParamsError(UserError):
    """A params file that cannot be used as it is; the message says what to change."""


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first_line: int, line: int):
        super().__init__(f"key {key!r} on line {first_line} and again on line {line}")
        self.key, self.first_line, self.line = key, first_line, line


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, except that a key repeated in one mapping is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: construct_mapping below says so
                continue
        return super().construct_mapping(node, deep)


# YAML 1.2's floats that YAML 1.1 misses: an exponent without a dot or without a sign
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def _positive(what: str = "a positive number") -> Any:
    return field(metadata={"check": (lambda v: v > 0, what)})


def _fraction(what: str = "a number in [0, 1)", **default: Any) -> Any:
    return field(metadata={"check": (lambda v: 0 <= v < 1, what)}, **default)


def _at_least_zero(what: str = "a number >= 0", **default: Any) -> Any:
    return field(metadata={"check": (lambda v: v >= 0, what)}, **default)


def _one_of(*choices: str, **default: Any) -> Any:
    check = (lambda v: v in choices, f"one of {', '.join(choices)}")
    return field(metadata={"check": check}, **default)


@dataclass(frozen=True)
class DownloadConfig:
    """Where an archive comes from and how it is checked.

    A mirror passes when the archive's SHA-1 equals `sha1`, or, for mirrors that repackage the
    data, when every file in `files` has a SHA-1 there and all of them match.
    """

    mirrors: tuple[str, ...]  # URLs (http, https, file://) or local paths, tried in order
    sha1: str | None  # SHA-1 of the whole archive
    files: dict[str, str | None]  # member basename -> its SHA-1 (None: checked via `sha1` only)


@dataclass(frozen=True)
class TokenizeWikitextConfig:
    min_freq: int = _positive()  # tokens seen fewer times map to <unk> (d2l: 5)


MAX_LEN = 2**15 - 1  # positions are stored as int16
SCHEDULES = ("constant", "linear", "cosine")
MASKINGS = ("static", "dynamic")
PRECISIONS = ("fp32", "bf16")  # of the forward pass: see runtime.autocast


@dataclass(frozen=True)
class MakeExamplesConfig:
    max_len: int = _positive()  # <cls> a <sep> b <sep> longer than this is dropped (d2l: 64)
    mask_rate: float = _fraction()  # share of positions predicted by MLM (d2l: 0.15)
    next_sentence_prob: float = _fraction()  # P(true next sentence) in NSP (d2l: 0.5)
    seed: int

    def problem(self) -> str | None:
        if not 5 <= self.max_len <= MAX_LEN:
            return f"max_len: {self.max_len} is not in [5, {MAX_LEN}] (<cls> a <sep> b <sep>)"
        if round(self.max_len * self.mask_rate) < 1:
            return (f"max_len * mask_rate = {self.max_len * self.mask_rate:g} rounds to 0 MLM "
                    "slots; raise one of them")  # fmt: skip
        return None


@dataclass(frozen=True)
class MakeSnliConfig:
    max_len: int = _positive()  # <cls> p <sep> h <sep> is truncated to this (d2l: 128)

    def problem(self) -> str | None:
        if not 3 <= self.max_len <= MAX_LEN:
            return f"max_len: {self.max_len} is not in [3, {MAX_LEN}] (<cls> <sep> <sep> at least)"
        return None


@dataclass(frozen=True)
class ModelConfig:
    num_hiddens: int = _positive()
    ffn_num_hiddens: int = _positive()
    num_heads: int = _positive()
    num_blks: int = _positive()
    dropout: float = _fraction()
    max_position: int = _positive()  # length of the learnable positional embedding (d2l: 1000)

    def problem(self) -> str | None:
        if self.num_hiddens % self.num_heads:
            return (f"num_hiddens ({self.num_hiddens}) must be a multiple of num_heads "
                    f"({self.num_heads})")  # fmt: skip
        return None


@dataclass(frozen=True)
class PretrainConfig:
    batch_size: int = _positive()
    lr: float = _positive()  # the peak learning rate
    num_steps: int = _positive()
    seed: int
    # d2l trains with plain Adam at a constant lr. These are exactly that when the params file
    # says so; the defaults here are for code only (params files must give every key).
    warmup_fraction: float = _fraction(default=0.0)  # share of steps with a linear warm-up
    lr_schedule: str = _one_of(*SCHEDULES, default="constant")  # after warm-up: decay to 0
    weight_decay: float = _at_least_zero(default=0.0)  # AdamW's, on matrices and embeddings
    grad_clip: float = _at_least_zero(default=0.0)  # largest global gradient norm; 0: none
    # steps between held-out evaluations (not d2l's: it changes no weight); 0: after the last only
    eval_every: int = _at_least_zero("an integer >= 0", default=0)
    # static: make_examples' masks, every epoch (d2l); dynamic: new ones each epoch (RoBERTa)
    masking: str = _one_of(*MASKINGS, default="static")
    # fp32 (d2l's) or bf16: autocast with fp32 weights and optimiser state, on any device
    precision: str = _one_of(*PRECISIONS, default="fp32")


@dataclass(frozen=True)
class D2lBertConfig:
    """One of d2l's published weight archives (`bert.small`, `bert.base`) to fine-tune from.

    The archive is checked against `sha1`; every size comes from the tensors' shapes, except the
    number of attention heads, which leaves no trace in them.
    """

    mirrors: tuple[str, ...]  # URLs (http, https, file://) or local paths, tried in order
    sha1: str  # of the whole archive (d2l's DATA_HUB value)
    num_heads: int = _positive()  # bert.small: 4, bert.base: 12
    dropout: float = _fraction()  # while fine-tuning from it (d2l hard-codes 0.2)


@dataclass(frozen=True)
class HfBertConfig:
    """A Google BERT in Hugging Face's layout to fine-tune from: on the Hub, or in a local folder.

    DVC cannot give each entry of a foreach stage deps of its own, so it watches neither a local
    folder nor a Hub branch: a local folder is pinned by `sha256` (see
    bertpipe.hf_bert.folder_sha256), as archives are by their SHA-1, and checked when the stage
    runs; a Hub entry by `revision`, whose commit the stage records.
    """

    source: str  # a Hub id (google/bert_uncased_L-2_H-128_A-2) or a local folder
    revision: str | None  # Hub: a branch, tag or commit; null: `source` is a local folder
    # the digest of its files: required for a local folder, checked when given for the Hub
    sha256: str | None = field(metadata={"check": (
        lambda v: v is None or re.fullmatch(r"[0-9a-f]{64}", v) is not None,
        "null or 64 lower-case hex digits (the digest the hf_bert stage prints)",
    )})  # fmt: skip


@dataclass(frozen=True)
class FinetuneConfig:
    batch_size: int = _positive()
    lr: float = _positive()
    num_epochs: int = _positive()
    seed: int
    # where fine-tuning starts: `pretrain` (this pipeline's model), `d2l_bert/<name>` (d2l's
    # published weights) or `hf_bert/<name>` (a Google BERT through Hugging Face), the names
    # listed under d2l_bert / hf_bert; dvc.yaml reads it, to wire the stages
    pretrained: str = field(default="pretrain", metadata={"check": (
        lambda v: v == "pretrain" or re.fullmatch(r"(d2l_bert|hf_bert)/[^/]+", v) is not None,
        "pretrain, d2l_bert/<name of a d2l_bert entry> or hf_bert/<name of an hf_bert entry>",
    )})  # fmt: skip
    warmup_fraction: float = _fraction(default=0.0)  # as in `pretrain`
    lr_schedule: str = _one_of(*SCHEDULES, default="constant")
    weight_decay: float = _at_least_zero(default=0.0)
    grad_clip: float = _at_least_zero(default=0.0)
    precision: str = _one_of(*PRECISIONS, default="fp32")  # as in `pretrain`


@dataclass(frozen=True)
class BaselineConfig:
    l2: float = _positive()  # L2 penalty on the weights (chosen on a dev split: 3e-3)
    min_count: int = _positive()  # keep indicator features seen in this many training pairs


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = _positive()
    split: str  # which make_snli split to score (d2l: test)


SECTIONS: dict[str, type] = {
    "download_wikitext": DownloadConfig,
    "download_snli": DownloadConfig,
    "tokenize_wikitext": TokenizeWikitextConfig,
    "make_examples": MakeExamplesConfig,
    "make_snli": MakeSnliConfig,
    "model": ModelConfig,
    "pretrain": PretrainConfig,
    "d2l_bert": dict[str, D2lBertConfig],  # named archives; `{}`: none (the default)
    "hf_bert": dict[str, HfBertConfig],  # named Hugging Face BERTs; `{}`: none (the default)
    "finetune": FinetuneConfig,
    "evaluate": EvaluateConfig,
    "baseline": BaselineConfig,
}

T = TypeVar("T")


def load(path: str | Path, name: str) -> Any:
    """Read section `name` of the params file at `path` into its config class."""
    path = Path(path)
    try:
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such params file") from None
    except _DuplicateKey as err:
        raise ParamsError(
            f"{path}: {err}; YAML would silently keep the last one, so remove one of them"
        ) from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(document, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(document).__name__}")
    unknown = sorted(set(document) - set(SECTIONS))
    if unknown:
        raise ParamsError(
            f"{path}: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}"
        )
    if name not in document:
        raise ParamsError(f"{path}: missing section '{name}'")
    return _convert(document[name], SECTIONS[name], f"{path}: {name}")


def load_entry(path: str | Path, section: str, name: str) -> Any:
    """Entry `name` of a section of named entries (d2l_bert, hf_bert): one per foreach stage."""
    entries = load(path, section)
    if name not in entries:
        raise ParamsError(
            f"{path}: {section} has no entry '{name}' (has: {', '.join(entries) or 'none'})"
        )
    return entries[name]


def parse_section(cls: type[T], values: Any, where: str) -> T:
    """Build dataclass `cls` from a YAML mapping, checking keys, types and value ranges."""
    if not isinstance(values, dict):
        raise ParamsError(f"{where}: expected a mapping, got {_describe(values)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        known = ", ".join(fields)
        raise ParamsError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {known}")
    missing = [k for k in fields if k not in values]
    if missing:
        raise ParamsError(f"{where}: missing key(s) {', '.join(missing)}")
    parsed = {}
    for key, f in fields.items():
        value = _convert(values[key], hints[key], f"{where}.{key}")
        check = f.metadata.get("check")
        if check and not check[0](value):
            raise ParamsError(f"{where}.{key}: expected {check[1]}, got {value!r}")
        parsed[key] = value
    result = cls(**parsed)
    problem = getattr(result, "problem", lambda: None)()
    if problem:
        raise ParamsError(f"{where}.{problem}")
    return result


def _convert(value: Any, hint: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return parse_section(hint, value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise ParamsError(f"{where}: expected a list, got {_describe(value)}")
        return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {_describe(value)}")
        return {
            _convert(k, args[0], f"{where} key"): _convert(v, args[1], f"{where}.{k}")
            for k, v in value.items()
        }
    return _scalar(value, hint, where)


def _scalar(value: Any, hint: type, where: str) -> Any:
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    if hint in (int, float) and isinstance(value, str) and _looks_numeric(value):
        raise ParamsError(
            f"{where}: '{value}' is a string to YAML, not a number; write it without quotes"
        )
    raise ParamsError(f"{where}: expected {hint.__name__}, got {_describe(value)}")


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _describe(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"
