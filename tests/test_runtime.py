"""runtime.Threads: fixed counts, and auto following the cores other processes leave free."""

from __future__ import annotations

import time

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


def test_auto_takes_two_threads_on_free_cores(monkeypatch):
    torch.set_num_threads(2)
    monkeypatch.setattr(runtime.Threads, "WINDOW", 0.3)
    threads = runtime.Threads("auto")
    if not threads.auto:
        pytest.skip("needs /proc/stat")
    torch.set_num_threads(1)
    for _ in range(10):  # other work on this machine may take a while to end
        time.sleep(0.35)
        threads.adjust()
        if torch.get_num_threads() == 2:
            break
    assert torch.get_num_threads() == 2
