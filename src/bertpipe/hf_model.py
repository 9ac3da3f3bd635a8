"""The hf_bert route's models: `transformers`' own BertModel under d2l's classifier head.

The encoder is `transformers.BertModel`, loaded from a `save_pretrained` folder
(`data/hf_bert/<name>/`) with local files only, safetensors weights only, and no code from the
folder (the class is named here; nothing is resolved through `auto_map`). Weights saved from
`BertForPreTraining` or `BertForMaskedLM` carry a `bert.` prefix, which `from_pretrained`
strips; the encoder and pooler must load completely (strictly): a folder whose weights lack a
piece, or hold one of another shape, is refused in one line that names it. The heads the folder
also holds (MLM, NSP) are left out.

`HFClassifier` is d2l's classifier shape on it: BERT's pooler (Linear + Tanh of the [CLS]
vector, pretrained) as the hidden layer and a new Linear(num_classes), with the call signature
of `model.BERTClassifier` (tokens, segments, valid_lens -> logits), so the fine-tuning loop,
its length-bucketed batches padded to the longest pair, evaluation and `bertpipe predict` run it
unchanged. The valid lengths become BERT's attention mask: padding is never a key, and every
real position's output is the one the pair alone gives (tested to 1e-5 against
`BertForSequenceClassification` on the tokenizer's own unpadded inputs).

Attention: `sdpa` (PyTorch's fused scaled-dot-product attention), not `eager`. Both give the
same outputs to float rounding. `python benchmarks/hf_attention.py` (BERT-Tiny's shape, batches
of 128 pairs of 20-59 tokens) on this project's 2-core Intel machine: a training step took
0.48 s with sdpa and 0.70 s with eager at 1 thread (load average 4.5, other work running).
Without dropout, only the 10 LayerNorm parameters' gradients differ between 1 and 2 threads with
sdpa, 28 of the 41 with eager (its softmax backward); with dropout both differ widely
(the README's "Same params, same model" says what that means for the route).

`load_mlm` loads the folder's MLM head too (`BertForMaskedLM`) for `bertpipe fill-mask`.

Only modules of this route import this one: it imports `transformers`, whose start-up the other
stages must not pay.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import BertConfig, BertForMaskedLM, BertModel
from transformers.utils import logging as hf_logging

from bertpipe import artifacts, checkpoints, hf_bert
from bertpipe.errors import UserError, first_line

ATTENTION = "sdpa"  # see the module docstring
# config.json keys that say where or by what a folder was written, not what the model is: left
# out of checkpoint headers, so a checkpoint's bytes do not depend on the folder's path
NOT_THE_MODEL = ("_name_or_path", "transformers_version")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence `from_pretrained`'s progress bar and load report: the loaders here check the
    loading info themselves and say what matters in one line."""
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def _from_pretrained(cls: type, folder: Path, **kwargs: Any) -> tuple[nn.Module, set[str]]:
    """`cls.from_pretrained(folder)`: local safetensors only, float32, every tensor of the shape
    config.json says; (model, the names of the weights it lacks)."""
    if not (folder / artifacts.WEIGHTS_FILE).is_file():
        raise UserError(
            f"{folder}: no {artifacts.WEIGHTS_FILE}; the hf_bert route loads safetensors weights "
            f"only (dvc repro hf_bert@<name> fetches them)"
        )
    try:
        with _quiet():
            model, info = cls.from_pretrained(
                str(folder), local_files_only=True, use_safetensors=True,
                output_loading_info=True, attn_implementation=ATTENTION, dtype=torch.float32,
                ignore_mismatched_sizes=True,  # listed in the loading info, refused below
                **kwargs,
            )  # fmt: skip
    except (OSError, ValueError, RuntimeError) as err:  # a broken config or weights file
        raise UserError(
            f"{folder}: transformers cannot load {cls.__name__} from it ({first_line(err)}); "
            f"fetch the folder again (dvc repro -f hf_bert@<name>)"
        ) from None
    reshaped = {k for k, *_ in info["mismatched_keys"]}
    if reshaped:
        raise UserError(
            f"{folder}: weights of other shapes than its config.json says ({_keys(reshaped)}); "
            f"fetch the folder again (dvc repro -f hf_bert@<name>)"
        )
    return model, set(info["missing_keys"])


def _keys(names: Any, limit: int = 4) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (
        f" and {len(names) - limit} more" if len(names) > limit else ""
    )


def load_bert(folder: str | Path, pooler: bool = True) -> tuple[BertModel, dict[str, Any]]:
    """transformers' BertModel (encoder and, unless `pooler` is False, pooler; CPU) from
    `folder` and its header (`checkpoints.hf_bert_meta`: the config, the tokenizer's identity).
    `bertpipe encode` reads the encoder only, so it takes BertForMaskedLM's weights too."""
    folder = Path(folder)
    bert, missing = _from_pretrained(BertModel, folder, add_pooling_layer=pooler)
    if missing:
        raise UserError(
            f"{folder}: its weights lack {_keys(missing)}; fine-tuning starts from BERT's "
            f"encoder and pooler, so the folder needs weights saved from BertModel or "
            f"BertForPreTraining"
        )
    return bert, checkpoints.hf_bert_meta(config_dict(bert.config), hf_bert.tokenizer_sha1(folder))


def config_dict(cfg: BertConfig) -> dict[str, Any]:
    """The BertConfig as the header keeps it: what rebuilds the model, nothing about its folder."""
    return {k: v for k, v in cfg.to_dict().items() if k not in NOT_THE_MODEL}


class HFClassifier(nn.Module):
    """Sentence-pair classifier: transformers' BertModel, its pooler, a new Linear."""

    def __init__(self, bert: BertModel, num_classes: int = 3):
        super().__init__()
        self.bert = bert
        self.output = nn.Linear(bert.config.hidden_size, num_classes)

    def forward(self, tokens: Tensor, segments: Tensor, valid_lens: Tensor) -> Tensor:
        T = tokens.shape[1]
        mask = torch.arange(T, device=tokens.device) < valid_lens[:, None]  # (B, T) real keys
        out = self.bert(input_ids=tokens, token_type_ids=segments, attention_mask=mask.long())
        return self.output(out.pooler_output)  # Linear+Tanh of [CLS]: (B, H) -> (B, C)


def classifier_from(tensors: dict[str, Tensor], meta: dict[str, Any], path: Any) -> HFClassifier:
    """The fine-tuned classifier a checkpoint's tensors and header describe (CPU), offline."""
    try:
        cfg = BertConfig(**{**meta["model"], "attn_implementation": ATTENTION})
    except (TypeError, ValueError) as err:
        raise UserError(
            f"{path}: the header's BertConfig is broken ({err}); rerun finetune"
        ) from None
    model = HFClassifier(BertModel(cfg), int(meta["num_classes"]))
    checkpoints.load_weights(model, tensors, path)
    return model


def load_mlm(folder: str | Path) -> BertForMaskedLM:
    """BertForMaskedLM (encoder and MLM head, eval mode, CPU) from `folder`, for fill-mask."""
    folder = Path(folder)
    mlm, missing = _from_pretrained(BertForMaskedLM, folder)
    if any(k.startswith("cls.") for k in missing):
        raise UserError(
            f"{folder}: has no MLM head (its weights lack {_keys(missing)}); fill-mask needs "
            f"weights saved from BertForMaskedLM or BertForPreTraining"
        )
    if missing:
        raise UserError(f"{folder}: its weights lack {_keys(missing)}")
    return mlm.eval()
