"""d2l.ai's published BERT weights (`bert.small`, `bert.base`) as a model of this pipeline.

d2l's archive `bert.<size>.torch.zip` holds, in a folder `bert.<size>.torch/`, two files:

- `pretrained.params`: `torch.save` of a d2l `BERTModel` state dict (its MLM and NSP heads
  included). Our `BERTModel` uses the same parameter names and shapes, so it loads as it is.
- `vocab.json`: the JSON list of tokens; the list order defines the ids. d2l 1.0.3 sorts it
  alphabetically, so `<pad>` and the other specials sit wherever the sort puts them.

A `.params` file is a pickle, and unpickling can run any code the file names. It is read with
`torch.load(weights_only=True)`, whose restricted unpickler rebuilds tensors and plain containers
and refuses everything else, and the result must be a flat mapping of names to tensors.

The model's sizes follow from the tensors' shapes: the token embedding is (vocab size,
num_hiddens), the positional embedding (1, max_position, num_hiddens), a block's first FFN layer
(ffn_num_hiddens, num_hiddens), and the blocks are numbered. The number of attention heads
leaves no trace in the shapes (heads only split the projections), so it is a param, as is the
dropout used when fine-tuning; a wrong count would import without a word and compute something
else. For d2l's two published archives, known by their SHA-1s, the count is known and checked
(`PUBLISHED`); other archives keep the param's. d2l's `load_pretrained_model` hard-codes 4
heads, 2 blocks and dropout 0.2 whatever it is asked; here `bert.base` (12 heads, 12 blocks)
needs only other params.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from bertpipe.config import D2lBertConfig, ModelConfig
from bertpipe.errors import UserError
from bertpipe.model import BERTModel
from bertpipe.vocab import Vocab

PARAMS_FILE = "pretrained.params"
VOCAB_FILE = "vocab.json"
REFETCH = "download it again (dvc repro -f d2l_bert@<name>)"
TOKEN_EMBEDDING = "encoder.token_embedding.weight"  # (vocab size, num_hiddens)
POS_EMBEDDING = "encoder.pos_embedding"  # (1, max_position, num_hiddens)
FFN_IN = "encoder.blks.0.ffn.dense1.weight"  # (ffn_num_hiddens, num_hiddens)
BLOCK = re.compile(r"encoder\.blks\.(\d+)\.")
# d2l's published PyTorch archives by SHA-1 (d2l's DATA_HUB): their names and numbers of heads
PUBLISHED = {
    "c72329e68a732bef0452e4b96a1c341c8910f81f": ("bert.small.torch.zip", 4),
    "225d66f04cae318b841a13d32af3acc165f253ac": ("bert.base.torch.zip", 12),
}


def check_heads(cfg: D2lBertConfig, where: str) -> None:
    """Refuse a `num_heads` other than the one d2l's published archive of SHA-1 `cfg.sha1` has.

    Only an archive with exactly that SHA-1 is imported, so this holds before any download.
    Errors name the params entry as `where`.
    """
    published = PUBLISHED.get(cfg.sha1.lower())
    if published is not None and cfg.num_heads != published[1]:
        name, heads = published
        raise UserError(
            f"{where}.num_heads: {cfg.num_heads}, but sha1 {cfg.sha1} is d2l's {name}, which "
            f"has {heads} heads; set num_heads: {heads}"
        )


def load(
    folder: str | Path, cfg: D2lBertConfig, source: str | None = None
) -> tuple[BERTModel, Vocab]:
    """d2l's model and vocabulary from a folder holding `pretrained.params` and `vocab.json`
    (extracted from the archive `source`, which errors name instead of the folder)."""
    folder = Path(folder)
    named = Path(source) if source else folder
    params, where = folder / PARAMS_FILE, str(named / PARAMS_FILE)
    tensors = read_state_dict(params, where)
    vocab = Vocab.load(folder / VOCAB_FILE, fix=REFETCH)
    vocab_size, model_cfg = infer_config(tensors, cfg, where)
    if len(vocab) != vocab_size:
        raise UserError(
            f"{named / VOCAB_FILE}: {len(vocab)} tokens, but the token embedding of {where} "
            f"has {vocab_size} rows; the two files come from different models; {REFETCH}"
        )
    return build_model(tensors, vocab_size, model_cfg, where), vocab


def read_state_dict(file: str | Path, where: str | None = None) -> dict[str, Tensor]:
    """The tensors of a d2l `pretrained.params`, read without running code from the file.
    Errors name it as `where` (default: its path)."""
    file = Path(file)
    path = where or str(file)
    if not file.is_file():
        raise UserError(f"{path}: no such file; run the d2l_bert stage first")
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # the restricted unpickler stopped
        detail = _unpickler_complaint(str(err))
        if detail.startswith("Unsupported global"):  # the file names a function or class to call
            raise UserError(
                f"{path}: refused: it holds more than tensors, and unpickling it could run code "
                f"({detail}); {REFETCH}"
            ) from None
        raise UserError(f"{path}: not a file written by torch.save ({detail}); {REFETCH}") from None
    except Exception as err:  # torch reports damaged files as KeyError, EOFError, RuntimeError...
        detail = (str(err).splitlines() or [""])[0][:200]
        raise UserError(
            f"{path}: not a file written by torch.save ({type(err).__name__}: {detail}); {REFETCH}"
        ) from None
    if not isinstance(loaded, Mapping):
        raise UserError(
            f"{path}: expected a state dict (parameter names -> tensors), found a "
            f"{type(loaded).__name__}; {REFETCH}"
        )
    for name, value in loaded.items():
        if not isinstance(name, str):
            raise UserError(f"{path}: key {name!r} is not a parameter name; {REFETCH}")
        if not isinstance(value, Tensor):
            raise UserError(
                f"{path}: entry {name!r} is not a tensor but {type(value).__name__}; expected "
                f"a flat state dict of d2l's BERTModel; {REFETCH}"
            )
        if not value.is_floating_point():
            raise UserError(f"{path}: tensor {name!r} has dtype {value.dtype}, expected floats")
    return dict(loaded)


def infer_config(
    tensors: Mapping[str, Tensor], cfg: D2lBertConfig, where: str
) -> tuple[int, ModelConfig]:
    """(vocabulary size, model config) from the shapes, plus the heads and dropout of `cfg`."""
    for name, dims in ((TOKEN_EMBEDDING, 2), (POS_EMBEDDING, 3), (FFN_IN, 2)):
        if name not in tensors:
            raise UserError(f"{where}: no tensor {name!r}; not the state dict of d2l's BERTModel")
        if tensors[name].dim() != dims:
            raise UserError(
                f"{where}: tensor {name!r} has shape {_shape(tensors[name])}, expected {dims} dims"
            )
    vocab_size, num_hiddens = tensors[TOKEN_EMBEDDING].shape
    max_position = tensors[POS_EMBEDDING].shape[1]
    ffn_num_hiddens = tensors[FFN_IN].shape[0]
    num_blks = 1 + max(int(m[1]) for name in tensors if (m := BLOCK.match(name)))
    if num_hiddens % cfg.num_heads:
        raise UserError(
            f"{where}: d2l_bert.<name>.num_heads ({cfg.num_heads}) must divide num_hiddens "
            f"({num_hiddens}, from {TOKEN_EMBEDDING}); d2l's bert.small has 4 heads, bert.base 12"
        )
    model_cfg = ModelConfig(
        num_hiddens=num_hiddens,
        ffn_num_hiddens=ffn_num_hiddens,
        num_heads=cfg.num_heads,
        num_blks=num_blks,
        dropout=cfg.dropout,
        max_position=max_position,
    )
    return vocab_size, model_cfg


def build_model(
    tensors: Mapping[str, Tensor], vocab_size: int, cfg: ModelConfig, where: str
) -> BERTModel:
    """Our BERTModel holding exactly `tensors`: every name present, none extra, same shapes."""
    model = BERTModel(vocab_size, cfg)
    expected = model.state_dict()
    missing = [name for name in expected if name not in tensors]
    unexpected = [name for name in tensors if name not in expected]
    shape = f"num_hiddens={cfg.num_hiddens}, ffn_num_hiddens={cfg.ffn_num_hiddens}, " + (
        f"num_blks={cfg.num_blks}, max_position={cfg.max_position}, vocab size {vocab_size}"
    )
    if missing:
        raise UserError(
            f"{where}: missing tensor(s) {_some(missing)} for a BERT with {shape}; {REFETCH}"
        )
    if unexpected:
        raise UserError(
            f"{where}: unexpected tensor(s) {_some(unexpected)}: not a BERT with {shape}; {REFETCH}"
        )
    for name, target in expected.items():
        if tensors[name].shape != target.shape:
            raise UserError(
                f"{where}: tensor {name!r} has shape {_shape(tensors[name])}, expected "
                f"{_shape(target)} for a BERT with {shape}; {REFETCH}"
            )
    model.load_state_dict({name: tensors[name].float() for name in expected}, strict=True)
    return model


def _unpickler_complaint(message: str) -> str:
    """The reason in torch's long weights_only error, e.g. 'Unsupported global: GLOBAL io.open'."""
    _, found, after = message.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (after if found else message).splitlines() if line.strip()]
    return (lines[0] if lines else "no reason given").split(" was not an allowed global")[0]


def _shape(tensor: Tensor) -> str:
    return "(" + ", ".join(map(str, tensor.shape)) + ")"


def _some(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(repr(n) for n in names[:shown]) + more
