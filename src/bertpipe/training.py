"""The training loops: BERT pretraining (MLM + NSP) and SNLI fine-tuning, plus what they share.

Read top to bottom: where to run (device, threads, DDP), data (memory-mapped arrays, batches
padded only to their longest member, length buckets), losses, curves (DVCLive), the two loops,
prediction, and checkpoints.

Semantics follow d2l.ai: pretraining runs `num_steps` Adam steps over seeded shuffled epochs with
the model in train mode and reports the mean loss over all steps; fine-tuning reports the last
epoch's mean loss per example, the accuracy of the training forward passes and the test accuracy
after every epoch. Deliberate differences: the MLM loss averages over real prediction slots only
(d2l issue #2582), and the fine-tuning gradient is that of the batch mean, not the batch sum (Adam
is invariant to the scale up to its eps).

Speed: pretraining batches are packed (no padding at all: the encoder runs on real positions,
the MLM head on real prediction slots, with a fused blockwise softmax cross-entropy), fine-tuning
batches are padded to their longest member and group similar lengths; fused Adam; on CUDA, bf16
autocast, TF32 and torch.compile; losses stay on the device and are read back only every
`LOG_EVERY` steps, so the host never waits on the device in between. Throughput is the wall time
of the training steps after the first one (which pays for warm-up and compilation), data loading
included, evaluation passes excluded.

Under torchrun (WORLD_SIZE > 1) every rank builds the same seeded batch list and takes its own
slice of each batch, so `batch_size` stays the global batch; DistributedDataParallel averages
gradients, metrics are averaged with all_reduce, and only rank 0 writes anything.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from bertpipe import artifacts, config
from bertpipe.cli import UserError
from bertpipe.model import BERTClassifier, BERTModel, Packing

log = logging.getLogger(__name__)

LOG_EVERY = 10  # steps between host reads of the losses (progress bar, DVCLive, all_reduce)
BUCKET_WINDOW = 50  # fine-tuning: batches per window of examples sorted by length
ATTENTION_GROUPS = 4  # pretraining: attention pads each quarter of a batch separately
LOGIT_BLOCK = 512  # MLM logits per block of vocabulary columns on CPU (_LinearCrossEntropy)
PAD_ID = 1  # <pad> (design.md fixes the special ids)
EXAMPLE_ARRAYS = [
    "token_ids", "segments", "valid_lens", "pred_positions", "mlm_labels", "mlm_weights",
    "nsp_labels",
]  # fmt: skip
SNLI_ARRAYS = ["token_ids", "offsets", "segment_starts", "labels"]

Arrays = dict[str, np.ndarray]
Batch = dict[str, Any]  # tensors (and a Packing)


# ----------------------------------------------------------------------------------------------
# Where to run: device, threads, processes


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    compile: bool
    workers: int
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def knobs(self) -> dict[str, Any]:
        """The speed-only settings used, for the metrics file."""
        return {
            "device": str(self.device),
            "compile": self.compile,
            "workers": self.workers,
            "threads": torch.get_num_threads(),
            "world_size": self.world_size,
        }


def add_speed_args(parser: Any, compile: bool = True) -> None:
    """--device, --workers (and --compile): speed only, so flags with env defaults, not params."""
    env = os.environ.get
    parser.add_argument(
        "--device",
        default=env("BERTPIPE_DEVICE", "auto"),
        help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps "
        "(default: $BERTPIPE_DEVICE or auto)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(env("BERTPIPE_WORKERS", "0")),
        help="data-loading worker processes; 0 collates in the training process "
        "(default: $BERTPIPE_WORKERS or 0)",
    )
    if not compile:
        return
    parser.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default=env("BERTPIPE_COMPILE", "auto"),
        help="torch.compile the model; auto = on for CUDA only "
        "(default: $BERTPIPE_COMPILE or auto)",
    )


def _pick_device(name: str, local_rank: int) -> torch.device:
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {name}: this torch build sees no CUDA device; use cpu")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _keep_freed_memory() -> None:
    """Stop glibc from handing big tensor buffers back to the OS after every step.

    By default glibc serves large blocks with mmap and unmaps them on free, so every training step
    faults hundreds of MB of fresh pages back in. Keeping freed memory in the heap made the
    d2l-shaped pretraining step 1.2-1.8x faster on this project's 2-core CPU machine.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): leave the allocator alone
        return
    m_trim_threshold, m_mmap_max = -1, -4  # mallopt parameters from <malloc.h>
    libc.mallopt(m_mmap_max, 0)  # no mmap-backed blocks: everything from the reusable heap
    libc.mallopt(m_trim_threshold, 2**30)  # return heap memory to the OS only above 1 GiB free


@contextlib.contextmanager
def runtime(device: str, workers: int, compile: str, distributed: bool) -> Iterator[Runtime]:
    """Choose the device; under torchrun (WORLD_SIZE > 1) also join the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not distributed:
        raise UserError("this stage runs in one process; launch it without torchrun")
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif dev.type == "cpu":
        _keep_freed_memory()
    if world_size > 1:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if rank != 0:  # one voice: the other ranks only warn
        logging.getLogger().setLevel(logging.WARNING)
    use_compile = compile == "on" or (compile == "auto" and dev.type == "cuda")
    rt = Runtime(dev, use_compile, workers, rank, world_size)
    log.info(
        "running on %s, %d threads, world size %d, compile %s, %d loader workers",
        dev,
        torch.get_num_threads(),
        world_size,
        "on" if use_compile else "off",
        workers,
    )
    try:
        yield rt
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def prepare(model: nn.Module, rt: Runtime) -> nn.Module:
    """Move `model` to the device; wrap it for DDP and compile it as the runtime says.

    Returns the module to call; `model` itself stays the one whose state_dict is saved.
    """
    model.to(rt.device)
    wrapped: nn.Module = model
    if rt.world_size > 1:
        ids = [rt.device.index] if rt.cuda else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if rt.compile:
        # every batch has other sizes (packed rows, slots, padded length): compiling for dynamic
        # shapes from the start makes one graph, where specialising first recompiled 4 times
        wrapped = torch.compile(wrapped, dynamic=True)
    return wrapped


def adam(model: nn.Module, lr: float, rt: Runtime) -> torch.optim.Adam:
    """d2l's optimiser (Adam, default betas/eps, no decay), with the fastest kernel per device.

    The fused kernel (CUDA, and CPU since torch 2.4) updates every parameter in one pass: 3x
    faster than foreach on this project's CPU machine at d2l's shapes.
    """
    if rt.device.type in ("cuda", "cpu"):
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    return torch.optim.Adam(model.parameters(), lr=lr, foreach=True)


def autocast(rt: Runtime) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; float32 elsewhere (bf16 matmuls crawl on CPUs without bf16 units)."""
    if rt.cuda:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sync(rt: Runtime) -> None:
    if rt.cuda:
        torch.cuda.synchronize(rt.device)


def _reduce_mean(values: Tensor, rt: Runtime) -> Tensor:
    if rt.world_size > 1:
        dist.all_reduce(values)
        values /= rt.world_size
    return values


def _reduce_sum(values: Tensor, rt: Runtime) -> Tensor:
    if rt.world_size > 1:
        dist.all_reduce(values)
    return values


# ----------------------------------------------------------------------------------------------
# Data: memory-mapped arrays in, padded batches out


def load_examples(folder: str | Path) -> tuple[Arrays, dict[str, Any]]:
    """The make_examples arrays (memory-mapped) and meta.json."""
    return artifacts.load_arrays(folder, EXAMPLE_ARRAYS), read_meta(Path(folder) / "meta.json")


def load_snli_split(folder: str | Path, split: str) -> Arrays:
    """One make_snli split (memory-mapped)."""
    path = Path(folder) / split
    if not (path / "labels.npy").exists():
        raise UserError(f"{path}: no SNLI split '{split}' here; run the make_snli stage")
    return artifacts.load_arrays(path, SNLI_ARRAYS)


def read_meta(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise UserError(f"{path}: missing; run the stage that writes {path.parent}")
    return artifacts.read_json(path)


def snli_lengths(snli: Arrays) -> np.ndarray:
    return np.diff(snli["offsets"])  # (N,) valid_len of every pair


def pretraining_plan(n: int, batch_size: int, num_steps: int, gen: torch.Generator) -> list:
    """`num_steps` batches of example indices: seeded shuffled epochs, cut where steps run out."""
    plan: list[np.ndarray] = []
    while len(plan) < num_steps:
        order = torch.randperm(n, generator=gen).numpy()
        plan += np.array_split(order, range(batch_size, n, batch_size))
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


def split_for_rank(plan: list, rt: Runtime) -> tuple[list, list]:
    """(global plan, this rank's slice of every batch); identical plans make slices disjoint.

    A batch with fewer members than ranks is left out, so that no rank gets an empty batch.
    """
    if rt.world_size == 1:
        return plan, plan
    plan = [b for b in plan if len(b) >= rt.world_size]
    return plan, [b[rt.rank :: rt.world_size] for b in plan]


def collate_examples(ex: Arrays, idx: np.ndarray) -> Batch:
    """Pretraining batch for examples `idx`, packed: real positions only, no padding.

    The examples are put in order of length (no loss depends on the order within a batch), so
    that attention, which pads each of ATTENTION_GROUPS groups to its longest member, pads
    little. Lists, in packed row order, every real position's token and segment, each example's
    <cls> row and every real prediction slot (weight > 0) with its label and weight.
    """
    lens = ex["valid_lens"][idx].astype(np.int64)  # (B,)
    order = np.argsort(lens, kind="stable")
    idx, lens = np.asarray(idx)[order], lens[order]
    L = ex["token_ids"].shape[1]
    starts = np.cumsum(lens) - lens  # (B,) first packed row of each example
    flat = np.repeat(np.arange(len(idx)) * L - starts, lens) + np.arange(lens.sum())  # (N,)
    weights = ex["mlm_weights"][idx].astype(np.float32)  # (B, P)
    real = weights > 0
    slot_rows = (starts[:, None] + ex["pred_positions"][idx])[real]  # (S,)

    def ints(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))

    return {
        "tokens": ints(ex["token_ids"][idx].reshape(-1)[flat]),  # (N,)
        "segments": ints(ex["segments"][idx].reshape(-1)[flat]),  # (N,)
        "packing": Packing.of(lens, ATTENTION_GROUPS),
        "cls_rows": ints(starts),  # (B,)
        "slot_rows": ints(slot_rows),  # (S,)
        "slot_labels": ints(ex["mlm_labels"][idx][real]),  # (S,)
        "slot_weights": torch.from_numpy(weights[real]),  # (S,)
        "nsp_labels": ints(ex["nsp_labels"][idx]),  # (B,)
    }


def collate_snli(snli: Arrays, idx: np.ndarray) -> Batch:
    """SNLI batch for pairs `idx`: `<cls> p <sep> h <sep>` padded with <pad> to the longest pair.

    Segment 1 covers [segment_start, valid_len); the <cls> p <sep> part and padding are 0.
    """
    starts = snli["offsets"][idx]  # (B,)
    valid_lens = (snli["offsets"][idx + 1] - starts).astype(np.int64)  # (B,)
    cols = np.arange(int(valid_lens.max()))  # (T,)
    real = cols < valid_lens[:, None]  # (B, T)
    flat = np.where(real, starts[:, None] + cols, 0)  # (B, T) index into token_ids
    tokens = np.where(real, snli["token_ids"][flat], PAD_ID)
    segments = real & (cols >= snli["segment_starts"][idx][:, None])
    return {
        "tokens": torch.from_numpy(tokens.astype(np.int64)),  # (B, T)
        "segments": torch.from_numpy(segments.astype(np.int64)),  # (B, T)
        "valid_lens": torch.from_numpy(valid_lens),  # (B,)
        "labels": torch.from_numpy(snli["labels"][idx].astype(np.int64)),  # (B,)
        "index": torch.from_numpy(np.asarray(idx, dtype=np.int64)),  # (B,)
    }


class _Collated(torch.utils.data.Dataset):
    """Item i = the collated batch plan[i], so workers (if any) collate whole batches."""

    def __init__(self, arrays: Arrays, plan: list, collate: Callable[[Arrays, np.ndarray], Batch]):
        self.arrays, self.plan, self.collate = arrays, plan, collate

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> Batch:
        return self.collate(self.arrays, self.plan[i])


def batches(arrays: Arrays, plan: list, collate: Callable, rt: Runtime) -> Iterator[Batch]:
    """Collated batches of `plan` in order, on the device."""
    loader = torch.utils.data.DataLoader(
        _Collated(arrays, plan, collate),
        batch_size=None,
        num_workers=rt.workers,
        pin_memory=rt.cuda,
    )
    for batch in loader:
        yield {k: v.to(rt.device, non_blocking=True) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------
# Losses


def mlm_loss(logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """Σ w·CE / (Σ w + 1e-8) over prediction slots: padding slots (w = 0) cannot contribute.

    logits (B, P, V), labels (B, P), weights (B, P), or (S, V), (S,), (S,) for S slots. The
    `where` drops a padding slot's CE before it is weighted, so even a NaN or inf there leaves
    the loss unchanged. This is the definition; pretraining computes the same number, and its
    gradient, with `linear_cross_entropy` (tests hold the two equal).
    """
    logits = logits.reshape(-1, logits.shape[-1]).float()  # (B*P, V)
    ce = F.cross_entropy(logits, labels.reshape(-1), reduction="none")
    w = weights.reshape(-1).float()  # (B*P,)
    return (torch.where(w > 0, ce, 0.0) * w).sum() / (w.sum() + 1e-8)


def mlm_accuracy(logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """Share of real prediction slots whose argmax is the label."""
    hits = (logits.argmax(-1) == labels).float() * weights  # (B, P)
    return hits.sum() / weights.sum().clamp(min=1e-8)


def nsp_loss(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), labels)


# ----------------------------------------------------------------------------------------------
# Curves (DVCLive) and throughput


def open_live(path: str | Path) -> Any:
    """A DVCLive logger writing `<path>/plots/metrics/<name>.tsv` (x = step); no dvc.yaml edits.

    dvclive 3.49 asks git for HEAD when it finds a DVC repo, which fails in a repository without
    commits ("Empty git repo"); then we log the same files without the DVC integration.
    """
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    try:
        return Live(dir=str(path), save_dvc_exp=False, dvcyaml=None)
    except SCMError as err:
        log.warning("DVCLive cannot use git here (%s); writing curves without DVC", err)

    class FilesOnlyLive(Live):
        def _init_dvc(self) -> None:  # skip repository discovery; writing files needs none
            pass

    return FilesOnlyLive(dir=str(path), save_dvc_exp=False, dvcyaml=None)


@contextlib.contextmanager
def curves(path: str | Path, rt: Runtime) -> Iterator[Any]:
    """On rank 0, DVCLive writing into `path` while training runs; None on the other ranks.

    Unlike the other outputs the curves are not written atomically: they are meant to be watched
    as they grow, and DVCLive must see the folder by its final name (under `dvc exp run` it leaves
    alone what a stage declares as an output, but would `git add` a temporary folder).
    """
    if not rt.is_main:
        yield None
        return
    with open_live(path) as live:
        yield live


def _log_rows(live: Any, first_step: int, names: list[str], rows: np.ndarray) -> None:
    """One DVCLive row per step: rows[i] belongs to step first_step + i."""
    if live is None:
        return
    for i, row in enumerate(rows):
        live.step = first_step + i
        for name, value in zip(names, row, strict=True):
            live.log_metric(name, float(value))


class Throughput:
    """Items per second over the training steps after the first (warm-up, compilation)."""

    def __init__(self, rt: Runtime):
        self.rt, self.items, self.seconds, self._since = rt, 0, 0.0, None

    def start(self) -> None:
        _sync(self.rt)
        self._since = time.perf_counter()

    def stop(self) -> None:
        if self._since is not None:
            _sync(self.rt)
            self.seconds += time.perf_counter() - self._since
            self._since = None

    def add(self, items: int) -> None:
        if self._since is not None:
            self.items += items

    def rate(self) -> float | None:
        """Items per second so far (including a running segment)."""
        running = time.perf_counter() - self._since if self._since is not None else 0.0
        seconds = self.seconds + running
        return round(self.items / seconds, 1) if seconds > 0 else None


def _flush(pending: list[Tensor], rt: Runtime) -> np.ndarray:
    """Per-step stats (k tensors of (m,)) -> (k, m) numpy, averaged over ranks: one host sync."""
    rows = _reduce_mean(torch.stack(pending), rt).cpu().numpy()
    pending.clear()
    return rows


def _run_steps(
    step_fn: Callable, net: nn.Module, opt: torch.optim.Optimizer, arrays: Arrays, plan: list,
    collate: Callable, rt: Runtime, live: Any, curves: list[str], done: int, speed: Throughput,
    desc: str,
) -> np.ndarray:  # fmt: skip
    """One optimiser step per batch of `plan`; returns every step's stats (steps, m).

    `step_fn` returns a (m,) tensor whose first len(curves) entries go to DVCLive; they stay on
    the device until every LOG_EVERY steps (the same steps on every rank, for all_reduce).
    `done` counts the steps run before, so DVCLive's x is the global optimiser step.
    """
    plan, mine = split_for_rank(plan, rt)
    pending: list[Tensor] = []
    history: list[np.ndarray] = []
    bar = tqdm(total=len(plan), desc=desc, unit="step", disable=not rt.is_main)
    data = batches(arrays, mine, collate, rt)
    for i, (idx, batch) in enumerate(zip(plan, data, strict=True), start=1):
        pending.append(step_fn(net, opt, batch, rt))
        speed.add(len(idx))
        if done + i == 1:
            speed.start()  # after the first step: warm-up and compilation are not timed
        if i % LOG_EVERY == 0 or i == len(plan):
            rows = _flush(pending, rt)
            _log_rows(live, done + i - len(rows) + 1, curves, rows[:, : len(curves)])
            history.append(rows)
            shown = {
                c.rsplit("/", 1)[-1]: f"{v:.3f}"
                for c, v in zip(curves[:2], rows[-1, :2], strict=True)
            }
            bar.set_postfix(shown, per_s=speed.rate())
        bar.update()
    bar.close()
    return np.concatenate(history)


# ----------------------------------------------------------------------------------------------
# Pretraining

PRETRAIN_CURVES = ["train/mlm_loss", "train/nsp_loss", "train/mlm_accuracy", "train/nsp_accuracy"]


class _LinearCrossEntropy(torch.autograd.Function):
    """`mlm_loss` and `mlm_accuracy` of the logits x Wᵀ + b, and their gradients, fast.

    The (S, V) logits are the largest tensor of a pretraining step. Here they are made in blocks
    of LOGIT_BLOCK vocabulary columns (on CPU; one block elsewhere), and each block's maximum,
    exp and sum are taken while it is still in cache (an online softmax, as in flash
    attention). The blocks then become, in place, the loss's gradient with respect to the
    logits, w/(Σw + 1e-8) · (softmax − onehot), which is all backward needs: no log-softmax
    copy, no zero-filled gradient, no argmax pass. The softmax is float32; under autocast the
    matmuls run in the autocast dtype, as F.linear's would. Every slot must be real (w > 0).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, labels: Tensor,
                weights: Tensor) -> tuple[Tensor, Tensor]:  # fmt: skip
        kind, (S, V) = x.device.type, (len(labels), len(weight))
        low = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
        x_low, w_low, b_low = x.to(low), weight.to(low), bias.to(low)
        width = LOGIT_BLOCK if kind == "cpu" else V
        columns = [slice(j, j + width) for j in range(0, V, width)]
        blocks, stats = [], []
        with torch.autocast(kind, enabled=False):
            for cols in columns:
                block = torch.addmm(b_low[cols], x_low, w_low[cols].t()).float()  # (S, width)
                top, where = block.max(dim=1)  # (S,)
                total = block.sub_(top[:, None]).exp_().sum(dim=1)  # block: exp(logit - top)
                blocks.append(block)
                stats.append((top, where + cols.start, total))
        best, guess, total = (torch.stack(column) for column in zip(*stats, strict=True))  # (n, S)
        top, first = best.max(dim=0)  # (S,) the row maximum, and its block
        rescale = torch.exp(best - top)  # (n, S): from each block's maximum to the row's
        total = (total * rescale).sum(dim=0)  # (S,) Σ exp(logit - top)
        target = (x.float() * weight[labels].float()).sum(dim=1) + bias[labels].float()  # (S,)
        w = weights.float()
        scale = w / (w.sum() + 1e-8)  # (S,)
        loss = ((top + total.log() - target) * scale).sum()
        hits = guess.gather(0, first[None])[0] == labels
        accuracy = (hits.float() * w).sum() / w.sum().clamp(min=1e-8)
        factor = rescale * (scale / total)  # (n, S)
        for block, f in zip(blocks, factor, strict=True):
            block.mul_(f[:, None])  # exp(logit - block max) -> scale · softmax
        rows = torch.arange(S, device=x.device)
        for block, cols in zip(blocks, columns, strict=True):  # ... − scale · onehot
            inside = (labels >= cols.start) & (labels < cols.start + block.shape[1])
            at = (rows[inside], labels[inside] - cols.start)
            block.index_put_(at, -scale[inside], accumulate=True)
        ctx.save_for_backward(x, weight, *blocks)
        ctx.low, ctx.columns = low, columns
        ctx.mark_non_differentiable(accuracy)
        return loss, accuracy

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, _: Tensor) -> tuple:
        x, weight, *blocks = ctx.saved_tensors  # blocks of d loss / d logits: (S, width) each
        x_low, w_low = x.to(ctx.low), weight.to(ctx.low)
        grad_x = torch.zeros_like(x_low)
        grad_w = torch.empty_like(w_low)
        for block, cols in zip(blocks, ctx.columns, strict=True):
            g = block.to(ctx.low)
            grad_x.addmm_(g, w_low[cols])
            torch.mm(g.t(), x_low, out=grad_w[cols])
        grad_b = torch.cat([block.sum(dim=0) for block in blocks])  # (V,)
        return (grad_x.to(x.dtype).mul_(grad_loss), grad_w.to(weight.dtype).mul_(grad_loss),
                grad_b.mul_(grad_loss), None, None)  # fmt: skip


@torch.compiler.disable  # eager even when the objective is compiled (in-place autograd.Function)
def linear_cross_entropy(
    x: Tensor, layer: nn.Linear, labels: Tensor, weights: Tensor
) -> tuple[Tensor, Tensor]:
    """(mlm_loss, mlm_accuracy) of `layer(x)` for S real slots: x (S, H), labels, weights (S,)."""
    return _LinearCrossEntropy.apply(x, layer.weight, layer.bias, labels, weights)


class PretrainObjective(nn.Module):
    """BERTModel's pretraining losses for a packed batch, computed only where they look.

    d2l runs the encoder on padding positions and the MLM head on padding slots (then weights
    their loss by 0). Here the encoder sees only the real positions of the batch and the MLM
    head only the real prediction slots (`collate_examples` lists both), which leaves the losses
    as they were and saves about a third of the work at d2l's shapes. `bert` stays the module
    whose state_dict is saved.
    """

    def __init__(self, bert: BERTModel):
        super().__init__()
        self.bert = bert

    def forward(self, b: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """MLM loss and accuracy over the real slots, NSP logits (B, 2)."""
        bert = self.bert
        X = bert.encoder.forward_packed(b["tokens"], b["segments"], b["packing"])  # (N, H)
        nsp_logits = bert.nsp(bert.hidden(X[b["cls_rows"]]))  # (B, 2)
        *hidden, output = bert.mlm.mlp  # MaskLM's head on its slots: Linear-ReLU-LN, Linear
        features = nn.Sequential(*hidden)(X[b["slot_rows"]])  # (S, H)
        mlm, mlm_acc = linear_cross_entropy(features, output, b["slot_labels"], b["slot_weights"])
        return mlm, mlm_acc, nsp_logits


def _pretrain_step(net: nn.Module, opt: torch.optim.Optimizer, b: Batch, rt: Runtime) -> Tensor:
    with autocast(rt):
        mlm, mlm_acc, nsp_logits = net(b)  # (), (), (B, 2)
    nsp = nsp_loss(nsp_logits, b["nsp_labels"])
    opt.zero_grad(set_to_none=True)
    (mlm + nsp).backward()
    opt.step()
    with torch.no_grad():
        nsp_acc = (nsp_logits.argmax(-1) == b["nsp_labels"]).float().mean()
    return torch.stack([mlm.detach(), nsp.detach(), mlm_acc, nsp_acc])  # (4,)


def pretrain(
    model: BERTModel, examples: Arrays, cfg: config.PretrainConfig, rt: Runtime, live: Any = None
) -> dict[str, Any]:
    """d2l's train_bert: `cfg.num_steps` Adam steps on MLM + NSP loss; returns the metrics."""
    gen = torch.Generator().manual_seed(cfg.seed)
    plan = pretraining_plan(len(examples["nsp_labels"]), cfg.batch_size, cfg.num_steps, gen)
    torch.manual_seed(cfg.seed + rt.rank)  # dropout: reproducible, different on every rank
    net, opt = prepare(PretrainObjective(model), rt), adam(model, cfg.lr, rt)
    model.train()
    log.info("pretraining: %d steps of %d pairs on %s", len(plan), cfg.batch_size, rt.device)
    speed = Throughput(rt)
    args = (examples, plan, collate_examples, rt, live, PRETRAIN_CURVES, 0, speed, "pretrain")
    steps = _run_steps(_pretrain_step, net, opt, *args)  # (num_steps, 4)
    speed.stop()
    mean, last = steps.mean(axis=0), steps[-1]
    metrics = {
        "mlm_loss": round(float(mean[0]), 4),  # mean over all steps, as d2l prints
        "nsp_loss": round(float(mean[1]), 4),
        "mlm_loss_last": round(float(last[0]), 4),
        "nsp_loss_last": round(float(last[1]), 4),
        "mlm_accuracy": round(float(mean[2]), 4),
        "nsp_accuracy": round(float(mean[3]), 4),
        "steps": len(steps),
        "pairs_per_sec": speed.rate(),
        "train_seconds": round(speed.seconds, 2),
        **rt.knobs(),
    }
    log.info("pretraining done: MLM loss %.3f, NSP loss %.3f, %s pairs/s",
             metrics["mlm_loss"], metrics["nsp_loss"], metrics["pairs_per_sec"])  # fmt: skip
    return metrics


# ----------------------------------------------------------------------------------------------
# Fine-tuning and prediction

FINETUNE_CURVES = ["train/batch_loss", "train/batch_accuracy"]


def _finetune_step(net: nn.Module, opt: torch.optim.Optimizer, b: Batch, rt: Runtime) -> Tensor:
    with autocast(rt):
        logits = net(b["tokens"], b["segments"], b["valid_lens"])  # (B, C)
    losses = F.cross_entropy(logits.float(), b["labels"], reduction="none")  # (B,)
    opt.zero_grad(set_to_none=True)
    losses.mean().backward()
    opt.step()
    correct = (logits.detach().argmax(-1) == b["labels"]).float()  # (B,)
    loss = losses.detach()
    return torch.stack([loss.mean(), correct.mean(), loss.sum(), correct.sum()])  # (4,)


def finetune(
    model: BERTClassifier,
    train: Arrays,
    test: Arrays,
    cfg: config.FinetuneConfig,
    rt: Runtime,
    live: Any = None,
) -> dict[str, Any]:
    """d2l's train_ch13 on length-bucketed batches; test accuracy after every epoch."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed + rt.rank)  # dropout: reproducible, different on every rank
    net, opt = prepare(model, rt), adam(model, cfg.lr, rt)
    lengths = snli_lengths(train)
    log.info("fine-tuning: %d epochs over %d pairs, batches of %d, test on %d pairs",
             cfg.num_epochs, len(lengths), cfg.batch_size, len(test["labels"]))  # fmt: skip
    speed, done, result = Throughput(rt), 0, {}
    for epoch in range(1, cfg.num_epochs + 1):
        plan = length_buckets(lengths, cfg.batch_size, gen)
        model.train()
        if done:
            speed.start()
        desc = f"finetune {epoch}/{cfg.num_epochs}"
        args = (train, plan, collate_snli, rt, live, FINETUNE_CURVES, done, speed, desc)
        steps = _run_steps(_finetune_step, net, opt, *args)  # (batches, 4)
        speed.stop()
        done += len(steps)
        # rows are averaged over ranks: times world_size gives the sums over all of them
        loss_sum, correct = steps[:, 2:].sum(axis=0) * rt.world_size
        num = sum(len(b) for b in split_for_rank(plan, rt)[0])
        result = {
            "loss": round(float(loss_sum) / num, 4),  # mean per example, last epoch (as d2l)
            "train_accuracy": round(float(correct) / num, 4),
            "test_accuracy": round(evaluate_accuracy(model, test, cfg.batch_size, rt), 4),
        }
        _log_rows(live, done, [f"epoch/{k}" for k in result], np.array([list(result.values())]))
        log.info("epoch %d: %s", epoch, result)
    return {**result, "epochs": cfg.num_epochs, "steps": done,
            "examples_per_sec": speed.rate(), "train_seconds": round(speed.seconds, 2),
            **rt.knobs()}  # fmt: skip


@torch.no_grad()
def _predictions(model: nn.Module, snli: Arrays, plan: list, rt: Runtime) -> Iterator:
    """(batch, predicted class (B,)) for every batch of `plan`, model in eval mode."""
    was_training = model.training
    model.eval()
    for b in batches(snli, plan, collate_snli, rt):
        with autocast(rt):
            logits = model(b["tokens"], b["segments"], b["valid_lens"])  # (B, C)
        yield b, logits.argmax(-1)
    model.train(was_training)


def evaluate_accuracy(model: nn.Module, snli: Arrays, batch_size: int, rt: Runtime) -> float:
    """Plain accuracy over every pair of `snli`; ranks share the batches."""
    plan = sorted_batches(snli_lengths(snli), batch_size)[rt.rank :: rt.world_size]
    correct = torch.zeros((), device=rt.device)
    for b, predicted in _predictions(model, snli, plan, rt):
        correct += (predicted == b["labels"]).sum()
    return _reduce_sum(correct, rt).item() / max(len(snli["labels"]), 1)


def predict(model: nn.Module, snli: Arrays, batch_size: int, rt: Runtime) -> np.ndarray:
    """Predicted class of every pair of `snli`, in file order: (N,) int64."""
    model.to(rt.device)
    found = list(_predictions(model, snli, sorted_batches(snli_lengths(snli), batch_size), rt))
    out = np.empty(len(snli["labels"]), dtype=np.int64)
    if found:
        index = torch.cat([b["index"] for b, _ in found]).cpu().numpy()
        out[index] = torch.cat([p for _, p in found]).cpu().numpy()
    return out


# ----------------------------------------------------------------------------------------------
# Checkpoints


def bert_meta(cfg: config.ModelConfig, vocab_size: int, vocab_sha1: str) -> dict[str, Any]:
    return {
        "kind": "bert",
        "model": dataclasses.asdict(cfg),
        "vocab_size": vocab_size,
        "vocab_sha1": vocab_sha1,
    }


def classifier_meta(pretrained: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    return {**pretrained, "kind": "classifier", "num_classes": len(labels), "labels": labels}


def _load(path: str | Path, kind: str) -> tuple[dict[str, Tensor], dict[str, Any], Any]:
    if not Path(path).is_file():
        stage = "pretrain" if kind == "bert" else "finetune"
        raise UserError(f"{path}: no such checkpoint; run the {stage} stage first")
    tensors, meta = artifacts.load_checkpoint(path)
    if meta.get("kind") != kind:
        raise UserError(f"{path}: expected a '{kind}' checkpoint, found '{meta.get('kind')}'")
    cfg = config.parse_section(config.ModelConfig, meta.get("model"), f"{path}: meta model")
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
