"""Model checkpoints: safetensors weights with a JSON header that says how to rebuild the model.

The header (`artifacts.save_checkpoint`'s meta) is defined here once, for the writers (the
pretrain and finetune stages) and the readers (finetune, evaluate):

    kind          "bert" (BERTModel: encoder, MLM and NSP heads) or "classifier" (BERTClassifier)
    model         the `model` params section the weights were trained with
    vocab_size    rows of the token embedding
    vocab_sha1    SHA-1 of the vocab.json that gives the ids meaning
    num_classes, labels   classifier only: the label names in output order
    max_len       classifier only: make_snli.max_len of the pairs it was fine-tuned on, which
                  `bertpipe predict` truncates new pairs to

A header without every key of its kind (one an older version wrote) is refused, with one line
that says which stage to rerun.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from torch import Tensor, nn

from bertpipe import artifacts, config
from bertpipe.errors import UserError
from bertpipe.model import BERTClassifier, BERTModel

BERT_KEYS = ("kind", "model", "vocab_size", "vocab_sha1")
KEYS = {"bert": BERT_KEYS, "classifier": (*BERT_KEYS, "num_classes", "labels", "max_len")}
WRITER = {"bert": "pretrain", "classifier": "finetune"}


def bert_meta(cfg: config.ModelConfig, vocab_size: int, vocab_sha1: str) -> dict[str, Any]:
    return {
        "kind": "bert",
        "model": dataclasses.asdict(cfg),
        "vocab_size": vocab_size,
        "vocab_sha1": vocab_sha1,
    }


def classifier_meta(pretrained: dict[str, Any], labels: list[str], max_len: int) -> dict[str, Any]:
    """The meta of a classifier fine-tuned from `pretrained` on pairs of at most `max_len`."""
    return {**pretrained, "kind": "classifier", "num_classes": len(labels), "labels": labels,
            "max_len": max_len}  # fmt: skip


def save(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write `model`'s weights with `meta` (from `bert_meta` or `classifier_meta`)."""
    missing = [k for k in KEYS[meta["kind"]] if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks {missing}")
    artifacts.save_checkpoint(path, model.state_dict(), meta)


def _load(path: str | Path, kind: str) -> tuple[dict[str, Tensor], dict[str, Any], Any]:
    rerun = f"run the {WRITER[kind]} stage first"
    if not Path(path).is_file():
        raise UserError(f"{path}: no such checkpoint; {rerun}")
    try:
        tensors, meta = artifacts.load_checkpoint(path)
    except SafetensorError as err:
        raise UserError(f"{path}: not a safetensors checkpoint ({err}); {rerun}") from None
    if meta.get("kind") != kind:
        raise UserError(f"{path}: expected a '{kind}' checkpoint, found '{meta.get('kind')}'")
    missing = [k for k in KEYS[kind] if k not in meta]
    if missing:
        raise UserError(
            f"{path}: the checkpoint header lacks {', '.join(missing)} (an older version wrote "
            f"it); rerun the {WRITER[kind]} stage"
        )
    cfg = config.parse_section(config.ModelConfig, meta["model"], f"{path}: meta model")
    return tensors, meta, cfg


def _load_weights(model: nn.Module, tensors: dict[str, Tensor], path: str | Path) -> None:
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise UserError(
            f"{path}: weights do not fit the model its meta describes: {first}"
        ) from None


def load_bert(path: str | Path) -> tuple[BERTModel, dict[str, Any]]:
    """The pretrained BERTModel (on CPU) and its checkpoint meta."""
    tensors, meta, cfg = _load(path, "bert")
    model = BERTModel(int(meta["vocab_size"]), cfg)
    _load_weights(model, tensors, path)
    return model, meta


def load_classifier(path: str | Path) -> tuple[BERTClassifier, dict[str, Any]]:
    """The fine-tuned BERTClassifier (on CPU) and its checkpoint meta."""
    tensors, meta, cfg = _load(path, "classifier")
    model = BERTClassifier(BERTModel(int(meta["vocab_size"]), cfg), int(meta["num_classes"]))
    _load_weights(model, tensors, path)
    return model, meta


def check_snli_fits(
    snli_meta: dict[str, Any], snli_path: Any, model_meta: dict[str, Any], model_path: Any
) -> None:
    """SNLI ids must come from the checkpoint's vocabulary, and its pairs must fit max_position."""
    if snli_meta["vocab_sha1"] != model_meta["vocab_sha1"]:
        raise UserError(
            f"{snli_path}: SNLI was tokenised with vocabulary {snli_meta['vocab_sha1'][:10]}, "
            f"but {model_path} was trained with {model_meta['vocab_sha1'][:10]}; "
            f"rebuild make_snli with the checkpoint's vocab.json"
        )
    max_position = model_meta["model"]["max_position"]
    if snli_meta["max_len"] > max_position:
        raise UserError(
            f"{snli_path}: make_snli.max_len {snli_meta['max_len']} exceeds the positional "
            f"embedding of {model_path} ({max_position}); lower make_snli.max_len"
        )
