"""The training loop both training stages share: optimiser, schedule, steps, curves, resume.

A stage describes one step as a function `step(net, batch, rt) -> (loss, stats)`; `Trainer.run`
does the rest for every batch of a plan: backward, optional gradient clipping, the optimiser and
learning-rate schedule, curves and throughput (`bertpipe.curves`), the progress bar, and a
resume checkpoint every `--checkpoint-every` steps (`bertpipe.resume`).

An `Evaluation` (optional) computes figures of the model as it stands every few steps and
after the last; they are kept with the steps' stats, so a resumed run replays them too, and
their time is not counted as training time.

`stats` is this rank's share of each per-step figure (the shares of all ranks add up to the
figure for the whole batch), so one all-reduce sum per LOG_EVERY steps makes every rank agree.
`loss` is the rank's share too, times world_size: DDP averages gradients over ranks, which
makes the gradient that of the whole batch's loss.

Defaults reproduce d2l: Adam (default betas/eps, no weight decay) at a constant learning rate,
no clipping. Optionally: a linear warm-up over a share of the steps, linear or cosine decay to
0, AdamW's decoupled weight decay on weight matrices and embeddings (not biases or LayerNorm,
as BERT), and clipping of the global gradient norm.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from bertpipe import batches
from bertpipe.curves import Throughput, log_rows
from bertpipe.resume import Resume, TrainState
from bertpipe.runtime import Runtime, reduce_sum

log = logging.getLogger(__name__)

LOG_EVERY = 10  # steps between host reads of the stats (progress bar, DVCLive, all_reduce)

Step = Callable[[nn.Module, batches.Batch, Runtime], tuple[Tensor, Tensor]]


class Schedule(Protocol):
    """The optimisation params both training sections share (see config.py)."""

    lr: float
    warmup_fraction: float
    lr_schedule: str
    weight_decay: float
    grad_clip: float


@dataclass(frozen=True)
class Evaluation:
    """Figures of the model as it stands (`figures()`), every `every` steps (0: none) and after
    the last, plotted as `<prefix>/<name>`."""

    every: int
    figures: Callable[[], dict[str, float]]
    prefix: str

    def due(self, step: int, total: int) -> bool:
        return step == total or (self.every > 0 and step % self.every == 0)


def optimizer(model: nn.Module, cfg: Schedule, rt: Runtime) -> torch.optim.Optimizer:
    """d2l's Adam, or AdamW with decay on matrices and embeddings when weight_decay > 0.

    The fused kernel (CUDA, and CPU since torch 2.4) updates every parameter in one pass: 3x
    faster than foreach on this project's CPU machine at d2l's shapes.
    """
    fast = {"fused": True} if rt.device.type in ("cuda", "cpu") else {"foreach": True}
    if cfg.weight_decay == 0:
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, **fast)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": rest, "weight_decay": 0.0}]  # fmt: skip
    return torch.optim.AdamW(groups, lr=cfg.lr, **fast)


def lr_factor(step: int, total: int, cfg: Schedule) -> float:
    """The learning rate of optimiser step `step` (0-based) over `cfg.lr`."""
    warmup = round(cfg.warmup_fraction * total)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if cfg.lr_schedule == "constant":
        return 1.0
    done = (step - warmup) / max(total - warmup, 1)  # 0 at the first step after warm-up
    return 1.0 - done if cfg.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * done))


class Trainer:
    """One training run: `total_steps` optimiser steps of `step`, over one or more plans.

    `model` is the module whose state is saved; `net` the one called (DDP-wrapped, compiled).
    `curve_names` label the first entries of each step's stats in DVCLive. With `resume`, the
    run starts from the last checkpoint that belongs to the same params and inputs, and writes
    one every `resume.every` steps. With `evaluation`, its figures are computed when due.
    """

    def __init__(self, model: nn.Module, net: nn.Module, cfg: Schedule, total_steps: int,
                 rt: Runtime, live: Any, curve_names: list[str], resume: Resume | None = None,
                 evaluation: Evaluation | None = None) -> None:  # fmt: skip
        self.model, self.net, self.cfg, self.rt = model, net, cfg, rt
        self.live, self.curve_names, self.resume = live, curve_names, resume
        self.evaluation, self.total_steps = evaluation, total_steps
        self.eval_seconds = 0.0  # spent in `evaluation` by this process
        self.opt = optimizer(model, cfg, rt)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda step: lr_factor(step, total_steps, cfg)
        )
        self.speed = Throughput(rt)
        self.ran = 0  # steps this process has run (a resumed run skips the ones done before)
        self.state = TrainState()  # steps done, their stats, the epochs' results
        restored = resume.load(model, self.opt, self.schedule, rt) if resume else None
        if restored is not None:
            self.state = restored
            self._replay()

    def run(self, step: Step, arrays: batches.Arrays, plan: list, collate: Callable,
            first: int, desc: str) -> np.ndarray:  # fmt: skip
        """Train on every batch of `plan`, whose first batch is global step `first` + 1.

        Batches that a resumed run has done already are skipped. Returns the stats of every
        step of the plan, (len(plan), m), summed over ranks.
        """
        todo = plan[max(self.state.step - first, 0) :]
        bar = tqdm(total=len(plan), initial=len(plan) - len(todo), desc=desc, unit="step",
                   disable=not self.rt.is_main)  # fmt: skip
        pending: list[Tensor] = []
        if self.ran:
            self.speed.start()
        for idx, batch in zip(todo, batches.batches(arrays, todo, collate, self.rt), strict=True):
            pending.append(self._step(step, batch))
            self.state.step += 1
            self.ran += 1
            self.speed.add(len(idx))
            if self.ran == 1:
                self.speed.start()  # after the first step: warm-up and compilation not timed
            last = self.state.step == first + len(plan)
            if self.state.step % LOG_EVERY == 0 or last:
                self._flush(pending)
                shown = self.state.history[-1][:2]
                bar.set_postfix({c.rsplit("/", 1)[-1]: f"{v:.3f}"
                                 for c, v in zip(self.curve_names, shown, strict=False)},
                                per_s=self.speed.rate())  # fmt: skip
            if self.evaluation and self.evaluation.due(self.state.step, self.total_steps):
                self._evaluate()
            if self.resume is not None and self.resume.due(self.state.step) and not last:
                self._flush(pending)
                self.resume.save(self.state, self.model, self.opt, self.schedule, self.rt)
            bar.update()
        bar.close()
        self.speed.stop()
        return np.asarray(self.state.history[first : first + len(plan)])

    def log_epoch(self, result: dict[str, float]) -> None:
        """Record (and plot) one epoch's figures, at the current step."""
        self.state.epochs.append((self.state.step, result))
        self._plot(self.state.step, "epoch", result)

    def _evaluate(self) -> None:
        """Compute, record and plot the evaluation's figures at the current step, off the clock."""
        with self.speed.paused():
            start = time.perf_counter()
            result = self.evaluation.figures()
            self.eval_seconds += time.perf_counter() - start
        self.state.evals.append((self.state.step, result))
        self._plot(self.state.step, self.evaluation.prefix, result)

    def _plot(self, step: int, prefix: str, result: dict[str, float]) -> None:
        names = [f"{prefix}/{k}" for k in result]
        log_rows(self.live, step, names, np.array([list(result.values())]))

    def _step(self, step: Step, batch: batches.Batch) -> Tensor:
        self.rt.threads.adjust()
        loss, stats = step(self.net, batch, self.rt)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.schedule.step()
        return stats.detach()

    def _flush(self, pending: list[Tensor]) -> None:
        """Per-step stats -> host, summed over ranks (one sync), into the history and DVCLive."""
        if not pending:
            return
        rows = reduce_sum(torch.stack(pending), self.rt).cpu().numpy().astype(np.float64)
        first = self.state.step - len(rows) + 1
        log_rows(self.live, first, self.curve_names, rows[:, : len(self.curve_names)])
        self.state.history.extend(rows.tolist())
        pending.clear()

    def _replay(self) -> None:
        """After a resume: the curves of the steps, epochs and evaluations done before, as they
        were."""
        rows = np.asarray(self.state.history)  # (steps, m)
        log_rows(self.live, 1, self.curve_names, rows[:, : len(self.curve_names)])
        for step, result in self.state.epochs:
            self._plot(step, "epoch", result)
        for step, result in self.state.evals:
            self._plot(step, self.evaluation.prefix, result)
