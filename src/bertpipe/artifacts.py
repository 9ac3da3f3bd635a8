"""Every on-disk format in one place, and writes that never leave half a file behind.

Arrays are `.npy` files (memory-mappable, loaded with `allow_pickle=False`, so reading them runs
no code); model weights are safetensors; small facts are pretty-printed JSON. A stage builds its
output folder under a temporary name beside the target and renames it into place only when
everything is written, so a crash or a bad input leaves the previous output (or nothing).

The array folders that one stage writes and another reads are declared here once
(`EXAMPLES`, `SNLI`, `SNLI_SPLIT`): their array names and dtypes and their `meta.json` keys. The
writer saves through the declaration and the reader loads through it, so a format change is one
edit and a folder from another version of the code is a clear error, not a wrong number.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bertpipe.errors import UserError


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every token id: uint16 up to 65,536 types, else int32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.int32)


def sha1_of_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha1_of_bytes(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _umask_mode(mode: int) -> int:
    """`mode` less the process umask: what a plain open()/mkdir() would have given."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _umask_mode(0o666))  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Pretty, key-sorted JSON with a final newline (stable bytes: DVC hashes stay put)."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def remove_leftovers(path: Path) -> None:
    """Delete what killed writes of `path` left beside it: the temporary folders of
    `atomic_dir` and the temporary files of `atomic_write_bytes` (`.<name>.<8 chars>.tmp`)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.([a-z0-9_]{{8}}\.tmp|old)")
    for left in path.parent.iterdir() if path.parent.is_dir() else []:
        if not pattern.fullmatch(left.name):
            continue
        if left.is_dir() and not left.is_symlink():
            shutil.rmtree(left, ignore_errors=True)
        else:
            left.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces `path` when the block ends without error.

    On error the temporary folder is removed and `path` is left exactly as it was, the folders
    above it too (those made for it are removed when empty). What a killed earlier run left (its
    temporary folder) is removed first.
    """
    path = Path(path)
    remove_leftovers(path)
    made = [p for p in path.parents if not p.exists()]  # nearest first
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(_umask_mode(0o777))  # mkdtemp makes 0700 folders
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:
            with contextlib.suppress(OSError):  # not empty: something else wrote there since
                folder.rmdir()
        raise
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def save_arrays(folder: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """One `<name>.npy` per array (C-contiguous, no pickled objects)."""
    for name, array in arrays.items():
        np.save(Path(folder) / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)


def load_arrays(folder: str | Path, names: list[str], mmap: bool = True) -> dict[str, np.ndarray]:
    """Load `<name>.npy` files; memory-mapped (read-only) unless `mmap` is False."""
    mode = "r" if mmap else None
    folder = Path(folder)
    return {n: np.load(folder / f"{n}.npy", mmap_mode=mode, allow_pickle=False) for n in names}


# the weights file of every model folder, on every route (the name `save_pretrained` gives too)
WEIGHTS_FILE = "model.safetensors"


def save_checkpoint(path: str | Path, tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """Weights as safetensors (no unpickling on load) with `meta` as JSON in its header."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save(tensors, metadata={"bertpipe": json.dumps(meta, sort_keys=True)}))


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (tensors on CPU, meta) from a file written by `save_checkpoint`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("bertpipe", "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    return tensors, meta


IDS = "ids"  # in an ArrayFolder: the folder's token-id dtype, `meta["id_dtype"]`


@dataclass(frozen=True)
class ArrayFolder:
    """A stage's output folder: one `<name>.npy` per array, and `meta.json`.

    `arrays` maps each array's name to its dtype (IDS: the token-id dtype, given as `ids` or
    named by `meta["id_dtype"]`); `meta` lists the keys `meta.json` holds. `save` and `load`
    refuse anything else.
    """

    stage: str  # the stage that writes it, named in errors
    arrays: dict[str, str]
    meta: tuple[str, ...]

    def save(self, folder: str | Path, arrays: Mapping[str, np.ndarray], meta: dict,
             ids: str | None = None) -> None:  # fmt: skip
        self._same("arrays", set(arrays), set(self.arrays))
        self._same("meta keys", set(meta), set(self.meta))
        for name, array in arrays.items():
            if array.dtype != self._dtype(name, ids or meta.get("id_dtype")):
                raise ValueError(f"{self.stage}: {name} is {array.dtype}, the format says "
                                 f"{self._dtype(name, ids or meta.get('id_dtype'))}")  # fmt: skip
        save_arrays(folder, arrays)
        write_json(Path(folder) / "meta.json", meta)

    def load(self, folder: str | Path, ids: str | None = None) -> tuple[dict, dict[str, Any]]:
        """(memory-mapped arrays, meta); a missing or foreign folder is a UserError."""
        folder = Path(folder)
        rerun = f"run the {self.stage} stage (dvc repro {self.stage})"
        if not (folder / "meta.json").is_file():
            raise UserError(f"{folder}: no {self.stage} output here (no meta.json); {rerun}")
        meta = read_json(folder / "meta.json")
        missing = [k for k in self.meta if k not in meta]
        absent = [n for n in self.arrays if not (folder / f"{n}.npy").is_file()]
        if missing or absent:
            what = ", ".join([*missing, *(f"{n}.npy" for n in absent)])
            raise UserError(f"{folder}: not a {self.stage} output of this version (lacks "
                            f"{what}); {rerun}")  # fmt: skip
        arrays = load_arrays(folder, list(self.arrays))
        for name, array in arrays.items():
            expected = self._dtype(name, ids or meta.get("id_dtype"))
            if array.dtype != expected:
                raise UserError(f"{folder}/{name}.npy: dtype {array.dtype}, expected {expected}; "
                                f"{rerun}")  # fmt: skip
        return arrays, meta

    def _dtype(self, name: str, ids: str | None) -> np.dtype:
        kind = self.arrays[name]
        return np.dtype(ids if kind == IDS else kind)

    def _same(self, what: str, given: set[str], declared: set[str]) -> None:
        if given != declared:
            extra, lacking = sorted(given - declared), sorted(declared - given)
            raise ValueError(f"{self.stage}: {what} differ from the format: extra {extra}, "
                             f"missing {lacking}")  # fmt: skip


VOCAB = ("vocab_size", "vocab_sha1", "id_dtype")  # the vocabulary the ids come from

# The held-out split: a subfolder of tokenize_wikitext's output (wiki.valid.tokens, encoded with
# the training vocabulary) and of make_examples' (its examples), each in its folder's format.
HELD_OUT = "valid"

EXAMPLES = ArrayFolder(
    "make_examples",
    arrays={
        "token_ids": IDS,  # (N, max_len) <cls> a <sep> b <sep> <pad>...
        "segments": "uint8",  # (N, max_len) 1 on b and its <sep>
        "valid_lens": "int16",  # (N,)
        "pred_positions": "int16",  # (N, P) 0 in padding slots
        "mlm_labels": IDS,  # (N, P) 0 in padding slots
        "mlm_weights": "uint8",  # (N, P) 1 real slot, 0 padding
        "nsp_labels": "uint8",  # (N,) 1 = b is the true next sentence
    },
    meta=(
        "num_examples",
        "max_len",
        "max_num_mlm_preds",
        "pad_id",
        "mask_id",
        "cls_id",
        "sep_id",
        *VOCAB,
    ),
)

SPECIAL_IDS = ("unk_id", "pad_id", "mask_id", "cls_id", "sep_id")  # wherever the vocab puts them

SNLI = ArrayFolder(  # the top of make_snli's folder: one SNLI_SPLIT folder per split
    "make_snli", arrays={}, meta=("max_len", "splits", "labels", *VOCAB, *SPECIAL_IDS)
)

SNLI_SPLIT = ArrayFolder(
    "make_snli",
    arrays={
        "token_ids": IDS,  # (total,) every pair's <cls> p <sep> h <sep>, concatenated
        "offsets": "int64",  # (N+1,) pair i = token_ids[offsets[i]:offsets[i+1]]
        "segment_starts": "int16",  # (N,) first segment-1 position of each pair
        "labels": "uint8",  # (N,) index into meta["labels"] of the top folder
    },
    meta=(
        "num_pairs",
        "dropped_no_label",
        "dropped_unknown_label",
        "blank_lines",
        "truncated",
        "label_counts",
        "max_valid_len",
    ),
)
