"""Google's BERTs through Hugging Face: the hf_bert route's model folder and its tokenizer.

A model folder (`data/hf_bert/<name>/`) is what `save_pretrained` writes: `config.json`,
`model.safetensors` and the tokenizer's files, `tokenizer.json` always among them. The ids of
every downstream array come from `tokenizer.json`, so its SHA-1 is the identity of the ids
(the role `vocab.json`'s SHA-1 plays on the other routes).

The folder is filled from one of two sources (`HfBertConfig`):
- a Hub repository at a revision, through `huggingface_hub`: the revision is resolved to a
  commit once and every file is fetched at that commit, then checked against the hash the Hub
  lists for it (SHA-256 for LFS files, the git blob SHA-1 for the others), which
  `huggingface_hub` itself does not do (it checks sizes only);
- a local folder, whose files must have the digest the params give (`folder_sha256`).
Only these files are taken: `FILES`. Weights come as safetensors only: pickled weights
(`pytorch_model.bin`) can run code when loaded, and no code from a repository is ever run.
A source with `vocab.txt` and no `tokenizer.json` gets one, built by `transformers`' BERT
tokenizer from `vocab.txt` and the source's tokenizer_config.json (if any).

`transformers` and `huggingface_hub` are imported inside the functions that need them, never at
the top: other stages import modules that import this one and must not pay their start-up.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bertpipe import artifacts
from bertpipe.config import HfBertConfig
from bertpipe.errors import UserError, first_line

TOKENIZER_FILE = "tokenizer.json"  # the identity of the ids
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"  # WordPiece's list, one token a line
SHARDED = "model.safetensors.index.json"  # weights split over several files: not taken
# everything a model folder may hold; nothing else is fetched or copied
FILES = (
    CONFIG_FILE,
    artifacts.WEIGHTS_FILE,
    "special_tokens_map.json",
    TOKENIZER_FILE,
    "tokenizer_config.json",
    VOCAB_FILE,
)
PICKLED = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")  # weights never loaded
SPECIAL_TOKENS = ("unk", "pad", "mask", "cls", "sep")  # what a BERT tokenizer must have
# config.json's sizes, copied into the metrics
CONFIG_FACTS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "hidden_act",
)


def tokenizer_sha1(folder: str | Path) -> str:
    """SHA-1 of `folder`/tokenizer.json's bytes: equal digests, equal ids."""
    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        raise UserError(f"{path}: missing; not an hf_bert model folder (dvc repro hf_bert)")
    return artifacts.sha1_of_file(path)


def load_tokenizer(folder: str | Path) -> Any:
    """`transformers`' fast BERT tokenizer from `folder` alone (no network, no remote code)."""
    tokenizer_sha1(folder)  # says so when tokenizer.json is missing
    return _bert_tokenizer(
        folder, str(folder), "fetch the folder again (dvc repro -f hf_bert@<name>)"
    )


def _bert_tokenizer(folder: str | Path, where: str, fix: str) -> Any:
    """The BERT tokenizer `transformers` builds from `folder`'s files, every special token of
    BERT's in its vocabulary; else a UserError about `where` that ends with `fix`."""
    from transformers import BertTokenizer

    try:
        tokenizer = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # transformers and tokenizers raise many kinds for a broken file
        raise UserError(
            f"{where}: transformers cannot load its BERT tokenizer ({type(err).__name__}: "
            f"{first_line(err)}); {fix}"
        ) from None
    # transformers gives a special token missing from the vocabulary a new id past its end (and
    # past the model's embedding), so the check is on the vocabulary itself
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False)
    tokens = {t: getattr(tokenizer, f"{t}_token") for t in SPECIAL_TOKENS}
    missing = [f"{t}_token {token}" for t, token in tokens.items() if token not in vocab]
    if missing:
        raise UserError(
            f"{where}: the tokenizer's vocabulary has no {', '.join(missing)}; a BERT "
            f"tokenizer needs [UNK], [PAD], [MASK], [CLS] and [SEP] among its tokens; {fix}"
        )
    return tokenizer


def special_ids(tokenizer: Any) -> dict[str, int]:
    """{"unk_id": ..., "pad_id": ..., "mask_id": ..., "cls_id": ..., "sep_id": ...}, as
    `Vocab.special_ids` gives them for the other routes."""
    return {f"{t}_id": int(getattr(tokenizer, f"{t}_token_id")) for t in SPECIAL_TOKENS}


def folder_sha256(folder: str | Path, names: Iterable[str]) -> str:
    """SHA-256 of the `sha256sum` listing of the files `names` in `folder`, in name order:
    `cd folder && sha256sum <names, sorted> | sha256sum` gives the same digest."""
    listing = "".join(f"{sha256_of_file(Path(folder) / n)}  {n}\n" for n in sorted(names))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def sha256_of_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def git_blob_sha1(path: str | Path) -> str:
    """The id git (and the Hub, for files not in LFS) gives a file's bytes."""
    path = Path(path)
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: digest).hexdigest()


def wanted_files(present: Iterable[str], where: str) -> list[str]:
    """The files of `FILES` among `present`, if they make a model folder; else a UserError."""
    present = set(present)
    if artifacts.WEIGHTS_FILE not in present and SHARDED in present:
        raise UserError(
            f"{where}: weights in shards ({SHARDED}), which this pipeline does not load: it takes "
            f"the weights in one {artifacts.WEIGHTS_FILE} (pick a model or revision that has one)"
        )
    if artifacts.WEIGHTS_FILE not in present:
        pickled = [n for n in PICKLED if n in present]
        why = f"only pickled weights ({', '.join(pickled)}), which" if pickled else "weights"
        raise UserError(
            f"{where}: no {artifacts.WEIGHTS_FILE}; {why} this pipeline does not load: it loads "
            "safetensors only (pick a revision or model that has them)"
        )
    if CONFIG_FILE not in present:
        raise UserError(f"{where}: no {CONFIG_FILE}; not a transformers model")
    if TOKENIZER_FILE not in present and VOCAB_FILE not in present:
        raise UserError(f"{where}: no {TOKENIZER_FILE} nor {VOCAB_FILE}: no tokenizer")
    return [n for n in FILES if n in present]


def copy_folder(cfg: HfBertConfig, out: Path, where: str) -> None:
    """Copy a local model folder's files into `out`, after checking their digest."""
    folder = Path(cfg.source)
    if not folder.is_dir():
        raise UserError(
            f"{where}.source: {folder}: no such folder (a relative path starts at the "
            "repository; a Hub id needs a revision, e.g. main)"
        )
    names = wanted_files((p.name for p in folder.iterdir() if p.is_file()), f"{where}: {folder}")
    digest = folder_sha256(folder, names)
    if digest != cfg.sha256:
        raise UserError(
            f"{where}.sha256 is {cfg.sha256 or 'null'}, but {folder}'s files "
            f"({', '.join(names)}) have digest {digest}: set that if this is the "
            "model you mean"
        )
    for name in names:
        shutil.copyfile(folder / name, out / name)


def fetch_from_hub(cfg: HfBertConfig, out: Path, where: str) -> str:
    """Fetch the model's files at `cfg.revision` into `out`, each checked against the hash the
    Hub lists; return the commit the revision resolved to."""
    from huggingface_hub import HfApi, constants, hf_hub_download
    from huggingface_hub.errors import HFValidationError, HTTPError

    entry = where
    try:
        info = HfApi().model_info(
            cfg.source,
            revision=cfg.revision,
            files_metadata=True,
            timeout=constants.HF_HUB_ETAG_TIMEOUT,
        )
        listed = {s.rfilename: s for s in info.siblings or []}
        where = f"{where}: {cfg.source} at {cfg.revision} (commit {info.sha})"
        for name in wanted_files(listed, where):
            expected = listed[name].lfs.sha256 if listed[name].lfs else listed[name].blob_id
            if not expected:
                raise UserError(f"{where}: the Hub lists no hash for {name}; cannot check it")
            path = hf_hub_download(cfg.source, name, revision=info.sha)
            if _hash_like(expected, path) != expected:  # a damaged copy in the local cache?
                path = hf_hub_download(cfg.source, name, revision=info.sha, force_download=True)
            if _hash_like(expected, path) != expected:
                raise UserError(
                    f"{where}: {name} arrived with hash {_hash_like(expected, path)}, "
                    f"the Hub lists {expected}; try again later"
                )
            shutil.copyfile(path, out / name)
    except HFValidationError as err:  # refused before any request
        if Path(cfg.source).is_dir():
            raise UserError(
                f"{entry}: {cfg.source} is a local folder, which takes revision: null "
                f"(revision {cfg.revision} is for a Hub id)"
            ) from None
        raise UserError(
            f"{entry}.source: {cfg.source!r} is not a Hub id ({first_line(err)}); a Hub id is "
            "<name> or <namespace>/<name>, and a local folder takes revision: null"
        ) from None
    except (OSError, HTTPError) as err:  # HTTPError: httpx's, which huggingface_hub raises
        raise UserError(f"{where}: {type(err).__name__}: {first_line(err, 300)}") from None
    return info.sha


def _hash_like(expected: str, path: str | Path) -> str:
    """The file's SHA-256 when `expected` is one (an LFS file), else its git blob SHA-1."""
    return sha256_of_file(path) if len(expected) == 64 else git_blob_sha1(path)


def complete(folder: Path, where: str) -> dict:
    """Check the fetched folder and add `tokenizer.json` if it lacks one; return its facts.
    `where` names the source (the folder is a temporary one that nobody knows by name)."""
    config = _read_config(folder / CONFIG_FILE, where)
    fix = "fix the source's tokenizer files or pick another model"
    if not (folder / TOKENIZER_FILE).exists():  # built from vocab.txt, the uncased default
        built = _bert_tokenizer(folder, where, fix)
        built.backend_tokenizer.save(str(folder / TOKENIZER_FILE))
    tokenizer = _bert_tokenizer(folder, where, fix)
    if len(tokenizer) > config["vocab_size"]:
        raise UserError(
            f"{where}: the tokenizer has {len(tokenizer)} ids, the model's "
            f"embedding {config['vocab_size']}: they do not belong together"
        )
    _check_safetensors(folder / artifacts.WEIGHTS_FILE, where)
    return {
        "model": {k: config[k] for k in CONFIG_FACTS if k in config},
        "vocab_size": len(tokenizer),
        "special_ids": special_ids(tokenizer),
        "tokenizer_sha1": tokenizer_sha1(folder),
        "files": {
            p.name: {"bytes": p.stat().st_size, "sha256": sha256_of_file(p)}
            for p in sorted(folder.iterdir())
        },
    }


def _read_config(path: Path, where: str) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{where}: {path.name} is not JSON ({err})") from None
    if not isinstance(config, dict) or config.get("model_type") != "bert":
        found = config.get("model_type") if isinstance(config, dict) else None
        raise UserError(
            f"{where}: {path.name} has model_type {found!r}; the hf_bert route "
            "takes BERTs only (model_type 'bert')"
        )
    if not isinstance(config.get("vocab_size"), int):
        raise UserError(f"{where}: {path.name} has no integer vocab_size")
    return config


def _check_safetensors(path: Path, where: str) -> None:
    """Read the weights' header (no tensor data): a file safetensors cannot open is refused."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            f.keys()
    except (SafetensorError, OSError) as err:
        raise UserError(f"{where}: {path.name} is not a safetensors file ({err})") from None
