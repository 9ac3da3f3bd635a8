"""Where training runs: the device, threads, the torchrun process group, compilation, precision.

All but the precision changes how fast a stage runs, never what it computes, so none of it is a
param: the stage scripts take `--device`, `--threads`, `--workers` and `--compile` flags whose
defaults come from environment variables, and record the values used in their metrics
(`Runtime.knobs`). The precision does change what is computed: it is the training stages'
`precision` param (fp32 or bf16), and evaluate and `bertpipe predict` take the one their
checkpoint records. `autocast` applies it on every device: fp32 is fp32 on CUDA too (no TF32),
bf16 is autocast with fp32 weights and optimiser state. bf16 is refused on a CPU without native
bf16 matmuls (`check_precision`), where it would run 50-100x slower than fp32.

Under torchrun (WORLD_SIZE > 1) `runtime()` joins the process group (NCCL on CUDA, Gloo on CPU);
`reduce_sum` is how the ranks agree on a figure.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from bertpipe.config import PRECISIONS
from bertpipe.errors import UserError

log = logging.getLogger(__name__)


def _busy_seconds(cpus: set[int]) -> float | None:
    """CPU seconds the kernel has counted as busy (not idle or waiting on I/O) on `cpus`, by
    every process together, since boot; None where /proc/stat is not there to tell."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
            ticks += user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK")


class Threads:
    """How many threads the CPU kernels use: a fixed count, or `auto`.

    auto, with 2 threads to use (this project's machines; OMP_NUM_THREADS=2 elsewhere): 1
    thread while other processes keep a core busy, 2 otherwise, re-read between training
    steps. PyTorch's OpenMP threads spin-wait for each other after every parallel op: beside one
    other busy process, a 2-thread training step ran 2.8x slower than a 1-thread one
    (BENCHMARKS.md). On a CPU, training gives the same bits at any thread count (kernels.py
    fixes the order of the reductions PyTorch splits by thread; `bertpipe/__init__` puts MKL's
    matmuls in strict reproducible mode), so the switch changes no output. With more than 2
    threads to use, auto keeps their count fixed: the 1-or-2 rule is what was measured.

    Other processes' load is the busy time /proc/stat counts on our cores minus our own CPU
    time, over at least WINDOW seconds. `follow_load=False` keeps auto's count fixed: bf16
    training does (its matmuls, oneDNN's, split long sums by thread count, so a switch would
    change the bits).
    """

    WINDOW = 0.2  # seconds of CPU accounting behind each choice

    def __init__(self, setting: str = "auto", follow_load: bool = True):
        if setting != "auto" and not (setting.isdigit() and int(setting) > 0):
            raise UserError(f"--threads (or $BERTPIPE_THREADS): expected auto or a count "
                            f"of 1 or more, got {setting!r}")  # fmt: skip
        if setting != "auto":
            torch.set_num_threads(int(setting))
        self.most = torch.get_num_threads()  # auto: $OMP_NUM_THREADS, else the usable cores
        self.cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        self.auto = (setting == "auto" and follow_load and self.most == 2
                     and _busy_seconds(self.cpus) is not None)  # fmt: skip
        self.setting, self.steps, self.thread_steps = setting, 0, 0
        self._since = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        """(wall clock, busy seconds on our cores, our own CPU seconds)"""
        busy = _busy_seconds(self.cpus) if self.auto else 0.0
        return time.monotonic(), busy or 0.0, time.process_time()

    def adjust(self) -> None:
        """Between steps: (auto) follow the free cores; count the threads this step uses."""
        if self.auto and self.steps == 0:  # the first step too runs on a count chosen from load
            time.sleep(max(0.0, self.WINDOW - (time.monotonic() - self._since[0])))
        if self.auto and time.monotonic() - self._since[0] >= self.WINDOW:
            now = self._sample()
            wall = now[0] - self._since[0]
            others = ((now[1] - self._since[1]) - (now[2] - self._since[2])) / wall  # cores
            count = self.count_for(others, len(self.cpus))
            if count != torch.get_num_threads():
                log.info("other processes keep %.1f of %d cores busy: %d threads",
                         others, len(self.cpus), count)  # fmt: skip
                torch.set_num_threads(count)
            self._since = now
        self.steps += 1
        self.thread_steps += torch.get_num_threads()

    @staticmethod
    def count_for(others: float, cores: int) -> int:
        """auto's choice: 2 threads while 1.5 of our cores or more are free of others' work."""
        return 2 if cores - others >= 1.5 else 1

    def knobs(self) -> dict[str, Any]:
        mean = self.thread_steps / self.steps if self.steps else torch.get_num_threads()
        setting = self.setting if self.setting == "auto" else int(self.setting)
        return {"threads": setting, "threads_mean": round(mean, 2)}


ANY_CPU_BF16 = "BERTPIPE_BF16_ANY_CPU"  # "1": run bf16 on any CPU (the tests do: CI may lack it)


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware: x86's AVX512_BF16 or AMX (as
    oneDNN uses them). torch's CPU capability string does not tell (it says AVX512 either way)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse what cannot run as asked: an unknown precision, or bf16 on a CPU without native
    bf16 matmuls (measured at 1-2.5 GFLOP/s on such a CPU, 50-100x below its fp32)."""
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision != "bf16" or device.type != "cpu" or native_bf16():
        return
    if os.environ.get(ANY_CPU_BF16) == "1":
        return
    raise UserError(
        "precision bf16: this CPU has no native bf16 matrix multiply (x86's AVX512_BF16 or "
        "AMX instructions), so bf16 would run 50-100x slower than fp32; set precision: fp32, "
        f"or run on a GPU or a CPU that has them ({ANY_CPU_BF16}=1 runs it anyway, slowly)"
    )


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    compile: bool
    workers: int
    rank: int = 0
    world_size: int = 1
    threads: Threads = field(default_factory=lambda: Threads(str(torch.get_num_threads())))
    precision: str = "fp32"  # a param, not a speed knob: see `autocast`

    def __post_init__(self) -> None:
        check_precision(self.precision, self.device)

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
            **self.threads.knobs(),
            "world_size": self.world_size,
        }


CPU = Runtime(torch.device("cpu"), compile=False, workers=0)  # one process, eager, no workers


def add_speed_args(parser: Any, training: bool = True) -> None:
    """--device, --threads, --workers (and for training --compile, --checkpoint-every): flags
    with env defaults, not params: on a CPU they change how fast a stage runs, never what it
    computes (on CUDA, see the README's "Same params, same model")."""
    env = os.environ.get
    parser.add_argument(
        "--device",
        default=env("BERTPIPE_DEVICE", "auto"),
        help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps "
        "(default: $BERTPIPE_DEVICE or auto)",
    )
    parser.add_argument(
        "--threads",
        default=env("BERTPIPE_THREADS", "auto"),
        help="CPU threads: a count, or auto = with 2 threads to use ($OMP_NUM_THREADS or the "
        "usable cores), 1 while other processes keep a core busy and 2 otherwise, re-read "
        "between steps (with more, or with precision bf16, their count); on a CPU in fp32 the "
        "results are the same bits at any count (default: $BERTPIPE_THREADS or auto)",
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
def runtime(device: str, workers: int, compile: str, distributed: bool,
            threads: str = "auto", precision: str = "fp32") -> Iterator[Runtime]:  # fmt: skip
    """Choose the device and threads, check the precision; under torchrun (WORLD_SIZE > 1) also
    join the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not distributed:
        raise UserError("this stage runs in one process; launch it without torchrun")
    if workers < 0:
        raise UserError(f"--workers (or $BERTPIPE_WORKERS): expected 0 or more, got {workers}")
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    threads_before = torch.get_num_threads()
    dev = pick_device(device, local_rank)
    check_precision(precision, dev)  # before joining a process group: one line, no hang
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (cudnn's default is on)
        torch.backends.cudnn.allow_tf32 = False
    elif dev.type == "cpu":
        _keep_freed_memory()
    if world_size > 1:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if rank != 0:  # one voice: the other ranks only warn
        logging.getLogger().setLevel(logging.WARNING)
    use_compile = compile == "on" or (compile == "auto" and dev.type == "cuda")
    # bf16 on CPU: the matmuls' bits depend on the thread count, so auto keeps it fixed
    pinned = precision == "bf16" and dev.type == "cpu"
    threads_used = Threads(threads, follow_load=not pinned)
    rt = Runtime(dev, use_compile, workers, rank, world_size, threads_used, precision)
    log.info(
        "running on %s in %s, threads %s (at most %d), world size %d, compile %s, %d loader "
        "workers",
        dev,
        precision,
        threads,
        rt.threads.most,
        world_size,
        "on" if use_compile else "off",
        workers,
    )
    try:
        yield rt
    finally:
        torch.set_num_threads(threads_before)
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
    """The forward pass in `rt.precision`: bf16 autocast (matmuls in bf16; the weights, their
    gradients and the optimiser state stay fp32), or plain fp32, on any device."""
    if rt.precision == "bf16":
        return torch.autocast(rt.device.type, dtype=torch.bfloat16)
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
