"""Training data: the stage folders in, batch plans, and batches padded no more than needed.

A *plan* is a list of batches, each an array of example indices, fixed by a seeded generator
before training starts; every rank of a torchrun job builds the same plan and collates its own
slice of each batch (`Part`). Pretraining batches are packed (no padding at all, see
`kernels.Packing`); fine-tuning batches are padded to their longest pair and group pairs of
similar length (`length_buckets`).

Each batch carries the size of the *whole* batch across ranks (`num_examples`, `num_slots`), so
that every loss is a mean over the global batch however many processes share it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bertpipe import artifacts
from bertpipe.errors import UserError
from bertpipe.kernels import Packing
from bertpipe.runtime import Runtime

BUCKET_WINDOW = 50  # fine-tuning: batches per window of examples sorted by length
ATTENTION_GROUPS = 4  # pretraining: attention pads each quarter of a batch separately
# Fine-tuning pads with id 0: padding is never an attention key, so its id cannot change any
# output at a real position (tested), and 0 exists in every vocabulary.
PAD_FILL = 0

Arrays = dict[str, np.ndarray]
Batch = dict[str, Any]  # tensors (and a Packing)


def load_examples(folder: str | Path) -> tuple[Arrays, dict[str, Any]]:
    """The make_examples arrays (memory-mapped) and their meta."""
    return artifacts.EXAMPLES.load(folder)


def load_snli(folder: str | Path) -> dict[str, Any]:
    """The meta of a make_snli folder (vocabulary, max_len, splits, label names)."""
    return artifacts.SNLI.load(folder)[1]


def load_snli_split(folder: str | Path, split: str) -> Arrays:
    """One make_snli split (memory-mapped)."""
    meta = load_snli(folder)
    if split not in meta["splits"]:
        raise UserError(f"{folder}: no SNLI split '{split}' (has {', '.join(meta['splits'])})")
    return artifacts.SNLI_SPLIT.load(Path(folder) / split, meta["id_dtype"])[0]


def snli_lengths(snli: Arrays) -> np.ndarray:
    return np.diff(snli["offsets"])  # (N,) valid_len of every pair


@dataclass(frozen=True)
class EpochBatch:
    """A pretraining batch's example indices and the epoch (0-based) of the plan it is in."""

    epoch: int
    idx: np.ndarray

    def __len__(self) -> int:
        return len(self.idx)


def pretraining_plan(n: int, batch_size: int, num_steps: int,
                     gen: torch.Generator) -> list[EpochBatch]:  # fmt: skip
    """`num_steps` batches of example indices: seeded shuffled epochs, cut where steps run out;
    each batch knows its epoch (dynamic masking draws by epoch)."""
    plan: list[EpochBatch] = []
    epoch = 0
    while len(plan) < num_steps:
        order = torch.randperm(n, generator=gen).numpy()
        plan += [
            EpochBatch(epoch, idx)
            for idx in np.array_split(order, range(batch_size, n, batch_size))
        ]
        epoch += 1
    return plan[:num_steps]


def length_buckets(lengths: np.ndarray, batch_size: int, gen: torch.Generator) -> list:
    """One epoch of batches that each hold examples of similar length (little padding).

    Shuffle, sort by length within windows of BUCKET_WINDOW batches, cut into batches, shuffle
    the batches. Every example appears exactly once; `gen` makes each epoch's order new.
    """
    n = len(lengths)
    order = torch.randperm(n, generator=gen).numpy()
    window = BUCKET_WINDOW * batch_size
    for start in range(0, n, window):
        chunk = order[start : start + window]
        order[start : start + window] = chunk[np.argsort(lengths[chunk], kind="stable")]
    batches = np.array_split(order, range(batch_size, n, batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list:
    """Evaluation batches: all examples sorted by length (least padding), no randomness."""
    order = np.argsort(lengths, kind="stable")
    return np.array_split(order, range(batch_size, len(order), batch_size))


@dataclass(frozen=True)
class Part:
    """Which slice of every batch this process collates: members rank, rank + world, ..."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def of(cls, rt: Runtime) -> Part:
        return cls(rt.rank, rt.world_size)

    def take(self, idx: np.ndarray) -> tuple[np.ndarray, float]:
        """(this rank's members, their weight): 1.0, or 0.0 for a stand-in.

        A batch with fewer members than ranks leaves some ranks without one. Such a rank runs
        its step on the batch's first member with weight 0, so that it still takes part in the
        gradient all-reduce and no batch is ever dropped.
        """
        mine = idx[self.rank :: self.world_size]
        return (mine, 1.0) if len(mine) else (idx[:1], 0.0)


def _ints(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))


def collate_examples(ex: Arrays, idx: np.ndarray, part: Part = Part()) -> Batch:
    """This rank's part of pretraining batch `idx`, packed: real positions only, no padding.

    The examples are put in order of length (no loss depends on the order within a batch), so
    that attention, which pads each of ATTENTION_GROUPS groups to its longest member, pads
    little. Lists, in packed row order, every real position's token and segment, each example's
    <cls> row and every real prediction slot (weight > 0) with its label and weight.
    """
    num_slots = float(ex["mlm_weights"][idx].sum())  # of the whole batch, all ranks
    num_examples = float(len(idx))
    idx, weight = part.take(np.asarray(idx))
    lens = ex["valid_lens"][idx].astype(np.int64)  # (B,)
    order = np.argsort(lens, kind="stable")
    idx, lens = idx[order], lens[order]
    L = ex["token_ids"].shape[1]
    starts = np.cumsum(lens) - lens  # (B,) first packed row of each example
    flat = np.repeat(np.arange(len(idx)) * L - starts, lens) + np.arange(lens.sum())  # (N,)
    weights = ex["mlm_weights"][idx].astype(np.float32)  # (B, P)
    real = weights > 0
    slot_rows = (starts[:, None] + ex["pred_positions"][idx])[real]  # (S,)
    return {
        "tokens": _ints(ex["token_ids"][idx].reshape(-1)[flat]),  # (N,)
        "segments": _ints(ex["segments"][idx].reshape(-1)[flat]),  # (N,)
        "packing": Packing.of(lens, ATTENTION_GROUPS),
        "cls_rows": _ints(starts),  # (B,)
        "slot_rows": _ints(slot_rows),  # (S,)
        "slot_labels": _ints(ex["mlm_labels"][idx][real]),  # (S,)
        "slot_weights": torch.from_numpy(weights[real] * weight),  # (S,)
        "nsp_labels": _ints(ex["nsp_labels"][idx]),  # (B,)
        "nsp_weights": torch.full((len(idx),), weight),  # (B,)
        "num_slots": torch.tensor(num_slots),  # () Σ mlm weights of the whole batch
        "num_examples": torch.tensor(num_examples),  # () of the whole batch
    }


def collate_snli(snli: Arrays, idx: np.ndarray, part: Part = Part()) -> Batch:
    """This rank's part of SNLI batch `idx`: `<cls> p <sep> h <sep>`, padded to the longest pair.

    Segment 1 covers [segment_start, valid_len); the <cls> p <sep> part and padding are 0.
    """
    num_examples = float(len(idx))  # of the whole batch, all ranks
    idx, weight = part.take(np.asarray(idx))
    starts = snli["offsets"][idx]  # (B,)
    valid_lens = (snli["offsets"][idx + 1] - starts).astype(np.int64)  # (B,)
    cols = np.arange(int(valid_lens.max()))  # (T,)
    real = cols < valid_lens[:, None]  # (B, T)
    flat = np.where(real, starts[:, None] + cols, 0)  # (B, T) index into token_ids
    tokens = np.where(real, snli["token_ids"][flat], PAD_FILL)
    segments = real & (cols >= snli["segment_starts"][idx][:, None])
    return {
        "tokens": _ints(tokens),  # (B, T)
        "segments": _ints(segments),  # (B, T)
        "valid_lens": torch.from_numpy(valid_lens),  # (B,)
        "labels": _ints(snli["labels"][idx]),  # (B,)
        "weights": torch.full((len(idx),), weight),  # (B,)
        "num_examples": torch.tensor(num_examples),  # ()
        "index": _ints(idx),  # (B,)
    }


class _Collated(torch.utils.data.Dataset):
    """Item i = this rank's part of batch plan[i], so workers (if any) collate whole batches."""

    def __init__(self, arrays: Arrays, plan: list, collate: Callable, part: Part):
        self.arrays, self.plan, self.collate, self.part = arrays, plan, collate, part

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> Batch:
        return self.collate(self.arrays, self.plan[i], self.part)


def batches(arrays: Arrays, plan: list, collate: Callable, rt: Runtime) -> Iterator[Batch]:
    """This rank's part of every batch of `plan`, in order, on the device.

    The loader draws its workers' base seed from a generator of its own: from torch's global
    one, each new loader would move the dropout masks of every step after it by one draw, and a
    resumed run, which starts its loaders at other steps, would train on other masks.
    """
    loader = torch.utils.data.DataLoader(
        _Collated(arrays, plan, collate, Part.of(rt)),
        batch_size=None,
        num_workers=rt.workers,
        pin_memory=rt.cuda,
        generator=torch.Generator(),  # fixed default seed; the collate functions draw nothing
    )
    for batch in loader:
        yield {k: v.to(rt.device, non_blocking=True) for k, v in batch.items()}
