"""The CPU kernels under `model`: attention (padded and packed), dropout, softmax, LayerNorm,
linear layers.

`model` reads like d2l's chapter; what makes it fast and thread-independent on CPU is here.

Packed batches: `BERTEncoder.forward_packed` runs the encoder on the real positions of a batch
only, as an (N, H) matrix laid out by `Packing`; only attention pads, group by group of similar
lengths, to find each position's keys (`packed_attention`). Outputs at real positions are those
of the padded forward, because padding is never a key.

Dropout: on CPU, `dropout` draws 16 random bits per element, a quarter of the random numbers
PyTorch's sampler draws there.

Same numbers at any thread count: on CPU, training's results do not depend on how many threads
run it (so the thread count can follow the cores that are free, see runtime.Threads). Two of
PyTorch's CPU kernels sum in an order that does: LayerNorm's weight and bias gradients (one
partial sum per thread) and the softmax backward. `LayerNorm` and `softmax` below compute those
with reductions whose order is fixed. (MKL's matmuls are held to one order by its strict
reproducible mode, which `bertpipe/__init__` sets.)

Under bf16 autocast the matmuls run in bf16; softmax (forward and backward), LayerNorm and the
dropout scale stay float32 (`widened`): in bf16 the softmax backward's w·(g − Σ w·g) cancels,
and 1 / 0.9 rounds to 1.109, which would shift dropout's mean.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def widened(X: Tensor) -> Tensor:
    """X in float32 if it is in a narrower float type (bf16, fp16), else X itself."""
    return X if X.dtype in (torch.float32, torch.float64) else X.float()


# ----------------------------------------------------------------------------------------------
# Linear layers whose bf16 matmuls reuse their kernels


def padded_rows(n: int) -> int:
    """n rounded up to one of 32 steps per power of two (at most 1/32 more rows)."""
    step = max(16, 2 ** (n.bit_length() - 6))
    return -(-n // step) * step


def linear(X: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F.linear; under CPU autocast with X's rows zero-padded to `padded_rows` for the matmul.

    oneDNN, which runs CPU bf16 matmuls, builds a kernel for every new shape (about 7 ms each
    on this project's Intel machine), and packed batches have a new number of rows at every
    step: a few dozen new kernels a step, a third of a bf16 pretraining step at d2l's shapes.
    Padded, the row counts repeat and the kernels come from oneDNN's cache. The pad rows are
    zeros: they change no output row and add nothing to the weight's gradient.
    """
    if X.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return F.linear(X, weight, bias)
    rows = X.reshape(-1, X.shape[-1])  # (n, in)
    n = rows.shape[0]
    out = F.linear(F.pad(rows, (0, 0, 0, padded_rows(n) - n)), weight, bias)[:n]
    return out.view(*X.shape[:-1], out.shape[-1])


class Linear(nn.Linear):
    """nn.Linear (same state dict) through `linear`."""

    def forward(self, X: Tensor) -> Tensor:
        return linear(X, self.weight, self.bias)


# ----------------------------------------------------------------------------------------------
# Dropout from 16 random bits per element


def dropout(X: Tensor, p: float, training: bool) -> Tensor:
    """`F.dropout`; on CPU with a mask from 16 random bits per element (`dropout_scale`)."""
    if not training or not 0.0 < p < 1.0 or X.device.type != "cpu":
        return F.dropout(X, p, training)
    return X * dropout_scale(X, p)


@torch.no_grad()
def dropout_scale(X: Tensor, p: float) -> Tensor:
    """A CPU dropout mask for X: 0 where dropped, else 1 / keep rate; 4 elements per 64-bit draw.

    PyTorch's CPU generator makes random numbers one by one on one thread; `F.dropout`'s
    Bernoulli sampler and `torch.rand` take one draw per element. A quarter of the draws made
    dropout 3x faster on this project's CPU machine (8 instead of 24 ms per (23683, 128) tensor).
    An element is dropped with probability round(65536 p) / 65536 (0.199997 for 0.2) and the
    kept ones scaled by the inverse of the keep rate, so the mean stays exactly X's (the mask
    is float32 for a bf16 X: in bf16 the scale itself would round).
    """
    dropped = round(p * 65536)  # of every 65536 values of a 16-bit lane
    bits = torch.empty((X.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    lanes = bits.view(torch.int16)[: X.numel()].view(X.shape)  # uniform in [-32768, 32767]
    keep = lanes >= dropped - 32768
    return widened(keep.to(X.dtype)).mul_(65536 / (65536 - dropped))  # 0 or 1 / keep rate


class Dropout(nn.Dropout):
    """nn.Dropout through `dropout` (its `p` and train/eval switch work as usual)."""

    def forward(self, X: Tensor) -> Tensor:
        return dropout(X, self.p, self.training)


# ----------------------------------------------------------------------------------------------
# LayerNorm and softmax with backward passes that do not depend on the thread count


class _LayerNormFunction(torch.autograd.Function):
    """F.layer_norm over the last dim, with weight and bias gradients summed row by row."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        y, mean, rstd = torch.native_layer_norm(x, weight.shape, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)  # mean, rstd: (..., 1)
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple:
        x, weight, bias, mean, rstd = ctx.saved_tensors
        dx = torch.ops.aten.native_layer_norm_backward(
            dy, x, weight.shape, mean, rstd, weight, bias, [True, False, False]
        )[0]
        H = weight.shape[0]
        dy = dy.reshape(-1, H)  # (M, H)
        x_hat = (x - mean).mul_(rstd).reshape(-1, H)  # (M, H)
        return dx, x_hat.mul_(dy).sum(0), dy.sum(0), None


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same state dict) whose CPU gradients do not depend on the thread count:
    PyTorch's CPU kernel adds up one partial weight gradient per thread. In float32 for a bf16
    input (CUDA's autocast does the same; CPU's would keep bf16)."""

    def forward(self, X: Tensor) -> Tensor:
        X = widened(X)
        if X.device.type != "cpu" or not torch.is_grad_enabled():
            return super().forward(X)
        return _LayerNormFunction.apply(X, self.weight, self.bias, self.eps)


def _softmax_backward(wg: Tensor, weights: Tensor) -> Tensor:
    """The softmax's input gradient w·(g − Σ w·g) from wg = w·g (..., T), in place in wg.

    The row sums run along the last dim, one row per output, so their order does not depend on
    the thread count (PyTorch's CPU softmax backward's does)."""
    return wg.addcmul_(weights, wg.sum(dim=-1, keepdim=True), value=-1.0)


class _SoftmaxFunction(torch.autograd.Function):
    """softmax over the last dim, with `_softmax_backward`."""

    @staticmethod
    def forward(ctx: Any, scores: Tensor) -> Tensor:
        weights = scores.softmax(dim=-1)
        ctx.save_for_backward(weights)
        return weights

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (weights,) = ctx.saved_tensors
        return _softmax_backward(grad * weights, weights)


def softmax(scores: Tensor) -> Tensor:
    """Softmax over the last dim, in float32 for bf16 scores; on CPU with a backward that does
    not depend on the thread count (PyTorch's CPU softmax backward does)."""
    scores = widened(scores)
    if scores.device.type != "cpu" or not torch.is_grad_enabled():
        return scores.softmax(dim=-1)
    return _SoftmaxFunction.apply(scores)


# ----------------------------------------------------------------------------------------------
# Attention over padded batches


def key_mask(valid_lens: Tensor, num_steps: int) -> tuple[Tensor, Tensor]:
    """The attention mask for keys at positions >= valid_len, built once per batch.

    Returns `attn_mask` (B, 1, 1, T), True where a key may be attended to, and `no_keys`
    (B, 1, 1), True for rows where no key is visible (valid_len <= 0). SDPA turns such a row into
    NaN; d2l fills masked scores with -1e6, which makes the row attend uniformly to all T keys.
    We reproduce that: those rows see every key and get a zero query (all scores 0, softmax
    uniform). `valid_lens` may have any integer or float dtype (d2l compares `arange(T) < len`).
    """
    positions = torch.arange(num_steps, device=valid_lens.device)  # (T,)
    visible = positions < valid_lens.reshape(-1, 1)  # (B, T), a prefix of each row
    no_keys = ~visible[:, :1]  # (B, 1): a prefix without position 0 is empty
    attn_mask = (visible | no_keys)[:, None, None, :]  # (B, 1, 1, T)
    return attn_mask, no_keys[:, :, None]


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor, p: float) -> Tensor:
    """softmax(q kᵀ / sqrt(d), visible keys) v, with dropout p on the weights as in d2l.

    q, k, v (..., T, d) and attn_mask broadcastable to (..., T, T) -> (..., T, d)."""
    if p == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
    # With dropout, SDPA on CPU falls back to this same math, with the slow sampler.
    scores = widened(q @ k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5)  # (..., T, T)
    weights = softmax(scores.masked_fill_(~attn_mask, float("-inf")))
    return dropout(weights, p, True) @ v


# ----------------------------------------------------------------------------------------------
# Packed batches: the layout and attention over it


@dataclass(frozen=True)
class Packing:
    """Where the N real positions of B examples sit in a packed (N, H) batch.

    Rows go example by example, each example's positions in order. Examples are cut into
    consecutive groups; attention pads each group to its own longest member (examples sorted by
    length waste little), laying out the groups one after the other. Build it with `Packing.of`
    on the host, then move it with `to`.
    """

    positions: Tensor  # (N,) int64: position of each row within its example
    valid_lens: Tensor  # (B,) int64, in row order; every one >= 1
    slots: Tensor  # (N,) int64: flat index of each row in its group's (examples, steps) layout
    group_starts: Tensor  # (N,) int64: where that layout starts among all groups' layouts
    group_sizes: Tensor  # (N,) int64: examples * steps of that group
    groups: tuple[tuple[int, int], ...]  # (examples, steps) of each group, in order

    @classmethod
    def of(cls, valid_lens: np.ndarray, num_groups: int = 1) -> Packing:
        """The packing of examples with these lengths, cut into `num_groups` (near) equal groups."""
        lens = np.asarray(valid_lens, dtype=np.int64)  # (B,)
        if lens.size == 0 or lens.min() < 1:
            raise ValueError("every packed example needs at least one position")
        bounds = np.linspace(0, len(lens), min(num_groups, len(lens)) + 1).round().astype(int)
        groups = tuple((int(b - a), int(lens[a:b].max())) for a, b in itertools.pairwise(bounds))
        examples, steps = (np.array(column) for column in zip(*groups, strict=True))
        sizes = examples * steps  # (G,)
        group_of = np.repeat(np.arange(len(groups)), examples)  # (B,)
        local = np.arange(len(lens)) - bounds[:-1][group_of]  # (B,) index within its group
        positions = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)  # (N,)
        slots = np.repeat(local * steps[group_of], lens) + positions  # (N,)
        row_group = np.repeat(group_of, lens)  # (N,)
        starts = (np.cumsum(sizes) - sizes)[row_group]  # (N,)
        arrays = (positions, lens, slots, starts, sizes[row_group])
        return cls(*map(torch.from_numpy, arrays), groups)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Packing:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Packing:
        return self._map(Tensor.pin_memory)

    def _map(self, move: Callable[[Tensor], Tensor]) -> Packing:
        tensors = [f.name for f in dataclasses.fields(self) if f.name != "groups"]
        return dataclasses.replace(self, **{name: move(getattr(self, name)) for name in tensors})

    @property
    def max_steps(self) -> int:
        return max(steps for _, steps in self.groups)

    def index(self, parts: int) -> Tensor:
        """Where `parts` feature blocks of every row go when each group's layout is repeated
        `parts` times, block after block: (N * parts,), in row-major (row, part) order."""
        part = torch.arange(parts, device=self.slots.device)  # (parts,)
        rows = (parts * self.group_starts + self.slots)[:, None]  # (N, 1)
        return (rows + part[None, :] * self.group_sizes[:, None]).flatten()

    def masks(self) -> list[Tensor]:
        """Each group's key mask, (1, examples, 1, steps) for tensors laid out heads first."""
        out, first = [], 0
        for examples, steps in self.groups:
            lens = self.valid_lens[first : first + examples]
            out.append(key_mask(lens, steps)[0].view(1, examples, 1, steps))
            first += examples
        return out


class _PackedAttention(torch.autograd.Function):
    """Attention over the groups of a packed batch (CPU training), with its own backward.

    `padded` (3 * nh * Σ examples * steps, d) holds q, k, v of every group, one group after the
    other, each laid out (3, nh * examples, steps, d). Each group's output is written straight
    into one (nh * Σ examples * steps, d) tensor, and in backward each group's q, k and v
    gradients straight into one tensor shaped like `padded`: autograd through per-group views
    would concatenate and stack them instead (24 ms of 142 per layer at d2l's shapes). The
    dropout masks are drawn as `attention` draws them: with dropout on, the results are its bits.
    """

    @staticmethod
    def forward(ctx: Any, padded: Tensor, groups: tuple, masks: list[Tensor], nh: int,
                p: float) -> Tensor:  # fmt: skip
        d = padded.shape[1]
        out = padded.new_empty(nh * sum(e * s for e, s in groups), d)
        saved, at, to = [], 0, 0
        for (e, s), mask in zip(groups, masks, strict=True):
            n = nh * e * s
            q, k, v = padded[at : at + 3 * n].view(3, nh * e, s, d)
            scores = widened(torch.bmm(q, k.transpose(1, 2))).mul_(d**-0.5)  # (nh * e, s, s)
            scores.view(nh, e, s, s).masked_fill_(~mask, float("-inf"))
            weights = scores.softmax(dim=-1)  # float32
            keep = dropout_scale(weights, p) if p > 0 else torch.ones(())
            dropped = (weights * keep).to(v.dtype)
            torch.bmm(dropped, v, out=out[to : to + n].view(nh * e, s, d))
            saved += [weights, keep]
            at, to = at + 3 * n, to + n
        ctx.save_for_backward(padded, *saved)
        ctx.groups, ctx.nh = groups, nh
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple:
        padded, *saved = ctx.saved_tensors
        nh, d = ctx.nh, padded.shape[1]
        grad = torch.empty_like(padded)
        at, to = 0, 0
        for (e, s), weights, keep in zip(ctx.groups, saved[0::2], saved[1::2], strict=True):
            n = nh * e * s
            q, k, v = padded[at : at + 3 * n].view(3, nh * e, s, d)
            grad_q, grad_k, grad_v = grad[at : at + 3 * n].view(3, nh * e, s, d)
            g = grad_out[to : to + n].view(nh * e, s, d)
            torch.bmm((weights * keep).to(g.dtype).transpose(1, 2), g, out=grad_v)
            wg = widened(torch.bmm(g, v.transpose(1, 2))).mul_(keep).mul_(weights)  # (nh*e, s, s)
            scores = _softmax_backward(wg, weights).mul_(d**-0.5).to(k.dtype)
            torch.bmm(scores, k, out=grad_q)
            torch.bmm(scores.transpose(1, 2), q, out=grad_k)
            at, to = at + 3 * n, to + n
        return grad, None, None, None, None


def packed_attention(
    qkv: Tensor, packing: Packing, masks: list[Tensor], nh: int, p: float
) -> Tensor:
    """Attention over the real positions of a packed batch: qkv (N, 3H) -> (N, H).

    qkv holds each row's q, k and v side by side, each split into `nh` heads of d = H / nh
    features; `masks` are `packing.masks()`. One index_copy lays them out per group and heads
    first, (nh, examples, T, d), so that the attention matmuls read them without copies, and one
    index_select brings the outputs back, heads concatenated.
    """
    N, d = qkv.shape[0], qkv.shape[1] // (3 * nh)
    qkv = qkv.view(N * 3 * nh, d)  # rows: (position, part)
    sizes = [examples * steps for examples, steps in packing.groups]
    # zeros: padding rows of v meet weights of 0, and 0 * garbage could be NaN
    padded = qkv.new_zeros(3 * nh * sum(sizes), d).index_copy(0, packing.index(3 * nh), qkv)
    if qkv.device.type == "cpu" and torch.is_grad_enabled():
        out = _PackedAttention.apply(padded, packing.groups, masks, nh, p)
    else:  # SDPA's fused kernels (CUDA), or inference
        outs = []
        for (examples, steps), mask, part in zip(
            packing.groups, masks, padded.split([3 * nh * n for n in sizes]), strict=True
        ):
            q, k, v = part.view(3, nh, examples, steps, d)  # (nh, examples, T, d) each
            outs.append(attention(q, k, v, mask, p).reshape(nh * examples * steps, d))
        out = torch.cat(outs)  # (nh * Σ examples * steps, d)
    return out.index_select(0, packing.index(nh)).view(N, nh * d)  # (N, H)
