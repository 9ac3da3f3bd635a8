"""runtime.Threads: fixed counts, auto following the cores other processes leave free, and
matmuls whose bits do not depend on the thread count."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bertpipe import runtime
from bertpipe.errors import UserError


def test_a_fixed_count_is_set_and_recorded():
    threads = runtime.Threads("2")
    assert torch.get_num_threads() == 2 and not threads.auto
    threads.adjust()
    assert threads.knobs() == {"threads": 2, "threads_mean": 2.0}


@pytest.mark.parametrize("setting", ["0", "-1", "two", ""])
def test_a_bad_count_is_refused(setting):
    with pytest.raises(UserError, match="--threads"):
        runtime.Threads(setting)


def test_auto_keeps_more_than_two_threads_fixed():
    torch.set_num_threads(3)  # the one_thread fixture restores its own count
    threads = runtime.Threads("auto")
    assert not threads.auto and threads.most == 3


def test_auto_takes_one_thread_beside_a_busy_process_and_two_without(busy_core, monkeypatch):
    torch.set_num_threads(2)  # the one_thread fixture restores its own count
    monkeypatch.setattr(runtime.Threads, "WINDOW", 0.3)
    threads = runtime.Threads("auto")
    assert threads.auto and threads.most == 2
    time.sleep(0.35)
    threads.adjust()
    assert torch.get_num_threads() == 1
    assert threads.knobs() == {"threads": "auto", "threads_mean": 1.0}


@pytest.mark.parametrize(("others", "count"), [(0.0, 2), (0.4, 2), (0.6, 1), (1.0, 1), (2.0, 1)])
def test_auto_takes_two_threads_while_others_leave_one_and_a_half_cores_free(others, count):
    """The rule on a measured load (how busy the machine is, the test cannot choose)."""
    assert runtime.Threads.count_for(others, cores=2) == count


MATMULS = """
import sys, torch
g = torch.Generator().manual_seed(0)
shapes = [(m, k, n) for m in (33, 300) for k in (256, 1024, 2048) for n in (128, 512)]
pairs = [(torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)) for m, k, n in shapes]
torch.set_num_threads(1)
one = [a @ b for a, b in pairs]
differ = 0
for threads in (2, 4):
    torch.set_num_threads(threads)
    differ += sum(not torch.equal(a @ b, o) for (a, b), o in zip(pairs, one))
print(differ)
"""


def matmuls_that_differ_by_thread_count(env: dict[str, str], first: str) -> int:
    """How many of 24 (shape, thread count) matmuls at 2 and 4 threads differ from 1 thread,
    in a fresh process (MKL reads its settings once) that runs `first` before them."""
    code = first + MATMULS
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return int(run.stdout)


def test_matmuls_give_the_same_bits_at_any_thread_count_once_bertpipe_is_imported():
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    assert matmuls_that_differ_by_thread_count(env, "import bertpipe") == 0
    # the control: MKL's default summation order, which on some CPUs depends on the count
    plain = matmuls_that_differ_by_thread_count({**env, "MKL_CBWR": "AUTO"}, "")
    if plain == 0:
        pytest.skip("this CPU's MKL sums in the same order at 1, 2 and 4 threads anyway")


def test_bf16_is_refused_on_a_cpu_without_native_bf16_matmuls_unless_allowed(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv(runtime.ANY_CPU_BF16, raising=False)
    monkeypatch.setattr(runtime, "native_bf16", lambda: False)  # such a CPU
    with pytest.raises(UserError, match=r"AVX512_BF16 or AMX .* 50-100x slower") as refused:
        runtime.Runtime(cpu, False, 0, precision="bf16")
    assert "\n" not in str(refused.value) and runtime.ANY_CPU_BF16 in str(refused.value)
    runtime.check_precision("fp32", cpu)  # fp32 runs anywhere; bf16 on a GPU is not the CPU's
    runtime.check_precision("bf16", torch.device("cuda"))
    with pytest.raises(UserError, match="precision 'fp16': expected one of fp32, bf16"):
        runtime.check_precision("fp16", cpu)
    monkeypatch.setenv(runtime.ANY_CPU_BF16, "1")  # what the tests of bf16 training set
    assert runtime.Runtime(cpu, False, 0, precision="bf16").precision == "bf16"


def test_native_bf16_is_what_the_cpu_flags_say():
    """torch's probe against the kernel's list of the CPU's instruction sets (x86 Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = next((ln.split(":", 1)[1].split() for ln in (cpuinfo.read_text().splitlines()
                  if cpuinfo.exists() else []) if ln.startswith("flags")), None)  # fmt: skip
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags here")
    assert runtime.native_bf16() == bool({"avx512_bf16", "amx_bf16"} & set(flags))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_autocast_runs_matmuls_in_the_precision_and_nothing_else(precision, monkeypatch):
    monkeypatch.setenv(runtime.ANY_CPU_BF16, "1")
    rt = runtime.Runtime(torch.device("cpu"), False, 0, precision=precision)
    layer = torch.nn.Linear(4, 3)
    with runtime.autocast(rt):
        out = layer(torch.randn(2, 4))
    assert out.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    assert layer.weight.dtype == torch.float32  # the master weights stay fp32


def test_bf16_keeps_auto_threads_at_a_fixed_count(monkeypatch):
    """bf16 matmuls' bits depend on the thread count, so auto must not switch it."""
    monkeypatch.setenv(runtime.ANY_CPU_BF16, "1")
    torch.set_num_threads(2)  # the one_thread fixture restores its own count
    with runtime.runtime("cpu", 0, "off", False, "auto", "bf16") as rt:
        assert not rt.threads.auto and rt.threads.most == 2
    with runtime.runtime("cpu", 0, "off", False, "auto", "fp32") as rt:
        assert rt.threads.auto == (Path("/proc/stat").exists())
