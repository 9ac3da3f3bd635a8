"""Model checkpoints: safetensors weights with a JSON header that says how to rebuild the model.

The header (`artifacts.save_checkpoint`'s meta) is defined here once, for the writers (the
pretrain and finetune stages) and the readers (finetune, evaluate):

    kind          "bert" (a pretrained BERT) or "classifier" (one fine-tuned on SNLI)
    encoder       absent: this pipeline's BERTEncoder (model.BERTModel / BERTClassifier; d2l's
                  weights too); "transformers": transformers' BertModel with its pooler
                  (hf_model.HFClassifier: the hf_bert route)
    model         this pipeline's encoder: the `model` params section the weights were trained
                  with; transformers': the BertConfig as a dict (what rebuilds it offline)
    vocab_size    rows of the token embedding
    vocab_sha1    SHA-1 of the file that gives the ids meaning: vocab.json, or on the hf_bert
                  route the tokenizer's tokenizer.json (hf_bert.tokenizer_sha1)
    num_classes, labels   classifier only: the label names in output order
    max_len       classifier only: make_snli.max_len of the pairs it was fine-tuned on, which
                  `bertpipe predict` truncates new pairs to
    precision     optional: the training stage's `precision` (fp32 or bf16), which evaluate and
                  `bertpipe predict` run the model in; absent (imports, older versions): fp32

A header without every key of its kind (one an older version wrote) is refused, with one line
that says which stage to rerun. The hf_bert route's pretrained models are not checkpoints of
this format: they are `save_pretrained` folders (hf_model.load_bert gives their header).

This module builds this pipeline's models only; `routes` builds a classifier of either encoder,
so that `transformers` is imported only where a model of the hf_bert route is met.
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
TRANSFORMERS = "transformers"  # the `encoder` of the hf_bert route's headers


def bert_meta(cfg: config.ModelConfig, vocab_size: int, vocab_sha1: str,
              precision: str = "fp32") -> dict[str, Any]:  # fmt: skip
    return {
        "kind": "bert",
        "model": dataclasses.asdict(cfg),
        "vocab_size": vocab_size,
        "vocab_sha1": vocab_sha1,
        "precision": precision,
    }


def hf_bert_meta(bert_config: dict[str, Any], tokenizer_sha1: str) -> dict[str, Any]:
    """The header of a transformers BertModel whose BertConfig is `bert_config` (a dict)."""
    return {
        "kind": "bert",
        "encoder": TRANSFORMERS,
        "model": bert_config,
        "vocab_size": bert_config["vocab_size"],
        "vocab_sha1": tokenizer_sha1,
    }


def is_transformers(meta: dict[str, Any]) -> bool:
    """Whether a header describes transformers' BertModel (the hf_bert route)."""
    return meta.get("encoder") == TRANSFORMERS


def max_position(meta: dict[str, Any]) -> int:
    """The most tokens the header's model reads (its positional embedding's rows)."""
    return int(
        meta["model"]["max_position_embeddings" if is_transformers(meta) else "max_position"]
    )


def classifier_meta(pretrained: dict[str, Any], labels: list[str], max_len: int,
                    precision: str) -> dict[str, Any]:  # fmt: skip
    """The meta of a classifier fine-tuned from `pretrained` in `precision` on pairs of at most
    `max_len`."""
    return {**pretrained, "kind": "classifier", "num_classes": len(labels), "labels": labels,
            "max_len": max_len, "precision": precision}  # fmt: skip


def precision(meta: dict[str, Any]) -> str:
    """The precision a checkpoint was trained in, and is run in."""
    return meta.get("precision", "fp32")


def save(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write `model`'s weights with `meta` (from `bert_meta` or `classifier_meta`)."""
    missing = [k for k in KEYS[meta["kind"]] if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks {missing}")
    artifacts.save_checkpoint(path, model.state_dict(), meta)


def read(path: str | Path, kind: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, header) of a checkpoint of `kind`, its header checked complete."""
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
    return tensors, meta


def _model_config(meta: dict[str, Any], path: str | Path) -> config.ModelConfig:
    return config.parse_section(config.ModelConfig, meta["model"], f"{path}: meta model")


def load_weights(model: nn.Module, tensors: dict[str, Tensor], path: str | Path) -> None:
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise UserError(
            f"{path}: weights do not fit the model its meta describes: {first}"
        ) from None


def load_bert(path: str | Path) -> tuple[BERTModel, dict[str, Any]]:
    """The pretrained BERTModel (on CPU) and its checkpoint meta."""
    tensors, meta = read(path, "bert")
    model = BERTModel(int(meta["vocab_size"]), _model_config(meta, path))
    load_weights(model, tensors, path)
    return model, meta


def classifier_from(tensors: dict[str, Tensor], meta: dict[str, Any], path: Any) -> BERTClassifier:
    """The BERTClassifier a classifier checkpoint's tensors and header describe (CPU)."""
    bert = BERTModel(int(meta["vocab_size"]), _model_config(meta, path))
    model = BERTClassifier(bert, int(meta["num_classes"]))
    load_weights(model, tensors, path)
    return model


def check_snli_fits(
    snli_meta: dict[str, Any], snli_path: Any, model_meta: dict[str, Any], model_path: Any
) -> None:
    """SNLI ids must come from the model's vocabulary (or tokenizer), and its pairs must fit
    the model's positions; for every route."""
    if snli_meta["vocab_sha1"] != model_meta["vocab_sha1"]:
        ids = "tokenizer" if is_transformers(model_meta) else "vocabulary"
        raise UserError(
            f"{snli_path}: SNLI was tokenised with vocabulary {snli_meta['vocab_sha1'][:10]}, "
            f"but {model_path} was trained with {ids} {model_meta['vocab_sha1'][:10]}; "
            f"rebuild make_snli from the model's own folder (the same finetune.pretrained)"
        )
    most = max_position(model_meta)
    if snli_meta["max_len"] > most:
        raise UserError(
            f"{snli_path}: make_snli.max_len {snli_meta['max_len']} exceeds the positional "
            f"embedding of {model_path} ({most}); lower make_snli.max_len"
        )
