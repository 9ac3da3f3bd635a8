"""Where training runs: the device, threads, the torchrun process group, compilation, autocast.

Everything here changes how fast a stage runs, never what it computes, so none of it is a param:
the stage scripts take `--device`, `--workers` and `--compile` flags whose defaults come from
environment variables, and record the values used in their metrics (`Runtime.knobs`).

Under torchrun (WORLD_SIZE > 1) `runtime()` joins the process group (NCCL on CUDA, Gloo on CPU);
`reduce_sum` is how the ranks agree on a figure.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from bertpipe.cli import UserError

log = logging.getLogger(__name__)


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


CPU = Runtime(torch.device("cpu"), compile=False, workers=0)  # one process, eager, no workers


def add_speed_args(parser: Any, training: bool = True) -> None:
    """--device, --workers (and for training --compile, --checkpoint-every): flags with env
    defaults, not params, because they change how fast a stage runs, never what it computes."""
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
    if not training:
        return
    parser.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default=env("BERTPIPE_COMPILE", "auto"),
        help="torch.compile the model; auto = on for CUDA only "
        "(default: $BERTPIPE_COMPILE or auto)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=int(env("BERTPIPE_CHECKPOINT_EVERY", "100")),
        help="steps between resume checkpoints; 0: none "
        "(default: $BERTPIPE_CHECKPOINT_EVERY or 100)",
    )


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` (CUDA, then MPS, then CPU), `cpu`, `cuda`, `cuda:N` or `mps`, checked usable."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"--device {name}: not a device (try auto, cpu, cuda, cuda:0, mps)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this torch build sees no CUDA device; use cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available here; use cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


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
    if workers < 0:
        raise UserError(f"--workers (or $BERTPIPE_WORKERS): expected 0 or more, got {workers}")
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
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


def autocast(rt: Runtime) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; float32 elsewhere (bf16 matmuls crawl on CPUs without bf16 units)."""
    if rt.cuda:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(rt: Runtime) -> None:
    """Wait for the device (so that a clock reading covers the work queued before it)."""
    if rt.cuda:
        torch.cuda.synchronize(rt.device)


def reduce_sum(values: Tensor, rt: Runtime) -> Tensor:
    """`values` summed over all ranks, in place (a no-op in one process)."""
    if rt.world_size > 1:
        dist.all_reduce(values)
    return values
