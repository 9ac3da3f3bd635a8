"""The three routes fine-tuning starts from, and the classifier each one gives.

`finetune.pretrained` names a folder under data/:
- `pretrain` (this pipeline's model) or `d2l_bert/<name>` (d2l's published weights): a `bert`
  checkpoint, `model.safetensors`, beside its `vocab.json`; the classifier is
  `model.BERTClassifier`;
- `hf_bert/<name>` (a Google BERT through Hugging Face): a `save_pretrained` folder, told apart
  by its `config.json`; the classifier is `hf_model.HFClassifier` on transformers' BertModel.

A fine-tuned checkpoint says in its header which encoder it holds (`checkpoints`: `encoder`), so
evaluate and `bertpipe predict` load either with `load_classifier`. `hf_model`, and with it
`transformers`, is imported here only when a model of the hf_bert route is met, so the stages
and commands of the other routes start as fast as they did without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from bertpipe import artifacts, checkpoints, hf_bert
from bertpipe.errors import UserError
from bertpipe.model import BERTClassifier


def is_hf_folder(path: str | Path) -> bool:
    """Whether `path` is an hf_bert route folder (a `save_pretrained` one)."""
    return (Path(path) / hf_bert.CONFIG_FILE).is_file()


def load_pretrained(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The pretrained BERT in `folder` (CPU) and its header, whichever route wrote it."""
    if Path(folder).is_file():  # what --pretrained took before every route had a folder
        raise UserError(
            f"{folder}: a file; pass the folder of the model fine-tuning starts from "
            f"(data/pretrain, data/d2l_bert/<name> or data/hf_bert/<name>)"
        )
    if is_hf_folder(folder):
        from bertpipe import hf_model

        return hf_model.load_bert(folder)
    refuse_part_of_hf_folder(Path(folder))
    return checkpoints.load_bert(Path(folder) / artifacts.WEIGHTS_FILE)


def refuse_part_of_hf_folder(path: Path) -> None:
    """A path meant as an hf_bert folder that is not one gets one line saying what to pass or
    run instead of this pipeline's checkpoint errors ("no such checkpoint; run the pretrain
    stage"): a file inside such a folder, or a folder under hf_bert/ not written yet."""
    if is_hf_folder(path.parent):
        raise UserError(f"{path}: a file of an hf_bert folder; pass the folder, {path.parent}")
    for folder in (path, path.parent):  # data/hf_bert/<name> or data/hf_bert/<name>/<file>
        if folder.parent.name == "hf_bert":
            raise UserError(
                f"{folder}: no hf_bert model there (no {hf_bert.CONFIG_FILE}); "
                f"dvc repro hf_bert@{folder.name} writes it"
            )


def new_classifier(bert: nn.Module, meta: dict[str, Any], num_classes: int) -> nn.Module:
    """A classifier on `bert` (from `load_pretrained`) with a new, randomly drawn output layer."""
    if checkpoints.is_transformers(meta):
        from bertpipe.hf_model import HFClassifier

        return HFClassifier(bert, num_classes)
    return BERTClassifier(bert, num_classes)


def load_classifier(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A fine-tuned classifier of any route (CPU) and its checkpoint header."""
    tensors, meta = checkpoints.read(path, "classifier")
    if checkpoints.is_transformers(meta):
        from bertpipe import hf_model

        return hf_model.classifier_from(tensors, meta, path), meta
    return checkpoints.classifier_from(tensors, meta, path), meta
