"""Google's BERTs through Hugging Face: the hf_bert route's model folder and its tokenizer.

A model folder (`data/hf_bert/<name>/`) is what `save_pretrained` writes: `config.json`,
`model.safetensors` and the tokenizer's files, `tokenizer.json` always among them. The ids of
every downstream array come from `tokenizer.json`, so its SHA-1 is the identity of the ids
(the role `vocab.json`'s SHA-1 plays on the other routes).

`transformers` is imported inside the functions that need it, never at the top: the stages of
the other routes import this module's neighbours and must not pay its seconds of start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bertpipe import artifacts
from bertpipe.errors import UserError

TOKENIZER_FILE = "tokenizer.json"  # the identity of the ids
SPECIAL_TOKENS = ("unk", "pad", "mask", "cls", "sep")  # what a BERT tokenizer must have


def tokenizer_sha1(folder: str | Path) -> str:
    """SHA-1 of `folder`/tokenizer.json's bytes: equal digests, equal ids."""
    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        raise UserError(f"{path}: missing; not an hf_bert model folder (dvc repro hf_bert)")
    return artifacts.sha1_of_file(path)


def load_tokenizer(folder: str | Path) -> Any:
    """`transformers`' fast BERT tokenizer from `folder` alone (no network, no remote code)."""
    from transformers import BertTokenizer

    tokenizer_sha1(folder)  # says so when tokenizer.json is missing
    try:
        tokenizer = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # transformers and tokenizers raise many kinds for a broken file
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        raise UserError(
            f"{folder}: transformers cannot load its BERT tokenizer ({type(err).__name__}: "
            f"{detail}); fetch the folder again (dvc repro -f hf_bert@<name>)"
        ) from None
    missing = [t for t in SPECIAL_TOKENS if getattr(tokenizer, f"{t}_token_id") is None]
    if missing:
        raise UserError(
            f"{folder}: the tokenizer has no {', '.join(f'{t}_token' for t in missing)}; "
            "a BERT tokenizer needs [UNK], [PAD], [MASK], [CLS] and [SEP]"
        )
    return tokenizer


def special_ids(tokenizer: Any) -> dict[str, int]:
    """{"unk_id": ..., "pad_id": ..., "mask_id": ..., "cls_id": ..., "sep_id": ...}, as
    `Vocab.special_ids` gives them for the other routes."""
    return {f"{t}_id": int(getattr(tokenizer, f"{t}_token_id")) for t in SPECIAL_TOKENS}
