"""BERT as in d2l.ai 1.0.3 (`d2l.BERTModel`), with attention through PyTorch's fused SDPA.

Same architecture, initialisation (PyTorch defaults) and state-dict key names as d2l, so d2l's
published weights (`bert.small`, `bert.base`) load with `load_state_dict` and numbers compare:

- embeddings: token + segment + a learnable positional table (1, max_position, H) drawn from
  N(0, 1); no embedding LayerNorm, no embedding dropout, no sqrt(H) scaling;
- post-LN encoder blocks: X = LayerNorm(X + dropout(attention(X))), then the same around a
  Linear-ReLU-Linear FFN;
- multi-head self-attention with biased q/k/v/o projections, keys at positions >= valid_len
  masked out, dropout on the attention weights;
- MLM head Linear-ReLU-LayerNorm-Linear on the gathered prediction positions; NSP head and
  classifier: a Linear on Linear+Tanh of the <cls> vector.

d2l builds its layers lazily (sizes inferred on a first forward pass); here every size is
explicit, so a model is complete, and its optimiser can be built, as soon as it is constructed.

Speed: `BERTEncoder.forward_packed` runs the encoder on the real positions of a batch only, as
a (N, H) matrix (see `Packing`); only attention pads, group by group of similar lengths, to
find each position's keys. Outputs at real positions are those of the padded forward, because
padding is never a key. On CPU, dropout draws 16 random bits per element (`dropout`), a quarter
of the random numbers PyTorch's sampler draws there.

Same numbers at 1 and 2 threads: on CPU, training's results do not depend on whether one or
two threads run it (so the thread count can follow the cores that are free, see
runtime.Threads). Two of PyTorch's CPU kernels sum in an order that does: LayerNorm's weight and
bias gradients (one partial sum per thread) and the softmax backward. `LayerNorm` and `softmax`
below compute those with reductions whose order is fixed. (At 3 or more threads MKL's matmuls
round differently.)
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

from bertpipe.config import ModelConfig
from bertpipe.errors import UserError


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
    kept ones scaled by the inverse of the keep rate, so the mean stays exactly X's.
    """
    dropped = round(p * 65536)  # of every 65536 values of a 16-bit lane
    bits = torch.empty((X.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    lanes = bits.view(torch.int16)[: X.numel()].view(X.shape)  # uniform in [-32768, 32767]
    keep = lanes >= dropped - 32768
    return keep.to(X.dtype).mul_(65536 / (65536 - dropped))  # 0 or 1 / keep rate


class Dropout(nn.Dropout):
    """nn.Dropout through `dropout` (its `p` and train/eval switch work as usual)."""

    def forward(self, X: Tensor) -> Tensor:
        return dropout(X, self.p, self.training)


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
    PyTorch's CPU kernel adds up one partial weight gradient per thread."""

    def forward(self, X: Tensor) -> Tensor:
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
    """Softmax over the last dim; on CPU with a backward that does not depend on the thread
    count (PyTorch's CPU softmax backward does)."""
    if scores.device.type != "cpu" or not torch.is_grad_enabled():
        return scores.softmax(dim=-1)
    return _SoftmaxFunction.apply(scores)


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
    dropout masks are drawn as `_attend` draws them: with dropout on, the results are its bits.
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
            scores = torch.bmm(q, k.transpose(1, 2)).mul_(d**-0.5)  # (nh * e, s, s)
            scores.view(nh, e, s, s).masked_fill_(~mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            keep = dropout_scale(weights, p) if p > 0 else torch.ones(())
            torch.bmm(weights * keep, v, out=out[to : to + n].view(nh * e, s, d))
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
            torch.bmm((weights * keep).transpose(1, 2), g, out=grad_v)
            wg = torch.bmm(g, v.transpose(1, 2)).mul_(keep).mul_(weights)  # (nh * e, s, s)
            scores = _softmax_backward(wg, weights).mul_(d**-0.5)
            torch.bmm(scores, k, out=grad_q)
            torch.bmm(scores.transpose(1, 2), q, out=grad_k)
            at, to = at + 3 * n, to + n
        return grad, None, None, None, None


class MultiHeadAttention(nn.Module):
    """Self-attention; head h uses features h*d:(h+1)*d of each projection (d = H / heads)."""

    def __init__(self, num_hiddens: int, num_heads: int, dropout: float):
        super().__init__()
        if num_hiddens % num_heads:  # config.ModelConfig refuses such params
            raise ValueError(f"{num_hiddens} hidden units do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.dropout = dropout
        self.W_q = nn.Linear(num_hiddens, num_hiddens)
        self.W_k = nn.Linear(num_hiddens, num_hiddens)
        self.W_v = nn.Linear(num_hiddens, num_hiddens)
        self.W_o = nn.Linear(num_hiddens, num_hiddens)

    def forward(self, X: Tensor, attn_mask: Tensor, no_keys: Tensor) -> Tensor:
        B, T, H = X.shape
        q = self.W_q(X).masked_fill(no_keys, 0.0)  # (B, T, H)
        q, k, v = (
            t.view(B, T, self.num_heads, H // self.num_heads).transpose(1, 2)  # (B, nh, T, d)
            for t in (q, self.W_k(X), self.W_v(X))
        )
        out = self._attend(q, k, v, attn_mask)  # (B, nh, T, d)
        return self.W_o(out.transpose(1, 2).reshape(B, T, H))  # heads concatenated: (B, T, H)

    def forward_packed(self, X: Tensor, packing: Packing, masks: list[Tensor]) -> Tensor:
        """X (N, H): the real positions of a batch laid out by `packing` -> (N, H).

        q, k and v come from one matmul; one index_copy lays them out per group and heads first,
        (nh, examples, T, d), so that the attention matmuls read them without copies, and one
        index_select brings the outputs back, heads concatenated.
        """
        N, H = X.shape
        nh, d = self.num_heads, H // self.num_heads
        weight = torch.cat([self.W_q.weight, self.W_k.weight, self.W_v.weight])  # (3H, H)
        bias = torch.cat([self.W_q.bias, self.W_k.bias, self.W_v.bias])
        qkv = F.linear(X, weight, bias).view(N * 3 * nh, d)  # rows: (position, part)
        sizes = [examples * steps for examples, steps in packing.groups]
        # zeros: padding rows of v meet weights of 0, and 0 * garbage could be NaN
        padded = qkv.new_zeros(3 * nh * sum(sizes), d).index_copy(0, packing.index(3 * nh), qkv)
        if X.device.type == "cpu" and torch.is_grad_enabled():
            p = self.dropout if self.training else 0.0
            out = _PackedAttention.apply(padded, packing.groups, masks, nh, p)
        else:  # SDPA's fused kernels (CUDA), or inference
            outs = []
            for (examples, steps), mask, part in zip(
                packing.groups, masks, padded.split([3 * nh * n for n in sizes]), strict=True
            ):
                q, k, v = part.view(3, nh, examples, steps, d)  # (nh, examples, T, d) each
                outs.append(self._attend(q, k, v, mask).reshape(nh * examples * steps, d))
            out = torch.cat(outs)  # (nh * Σ examples * steps, d)
        out = out.index_select(0, packing.index(nh))  # (N * nh, d)
        return self.W_o(out.view(N, H))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor) -> Tensor:
        """softmax(q kᵀ / sqrt(d), visible keys) v, with dropout on the weights as in d2l."""
        p = self.dropout if self.training else 0.0
        if p == 0.0 or q.device.type != "cpu":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        # With dropout, SDPA on CPU falls back to this same math, with the slow sampler.
        scores = (q @ k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5)  # (..., T, T)
        weights = softmax(scores.masked_fill_(~attn_mask, float("-inf")))
        return dropout(weights, p, True) @ v


class AddNorm(nn.Module):
    """Post-LN residual: LayerNorm(X + dropout(Y))."""

    def __init__(self, num_hiddens: int, dropout: float):
        super().__init__()
        self.dropout = Dropout(dropout)
        self.ln = LayerNorm(num_hiddens)

    def forward(self, X: Tensor, Y: Tensor) -> Tensor:
        return self.ln(self.dropout(Y) + X)


class PositionWiseFFN(nn.Module):
    def __init__(self, num_hiddens: int, ffn_num_hiddens: int):
        super().__init__()
        self.dense1 = nn.Linear(num_hiddens, ffn_num_hiddens)
        self.dense2 = nn.Linear(ffn_num_hiddens, num_hiddens)

    def forward(self, X: Tensor) -> Tensor:
        return self.dense2(F.relu(self.dense1(X)))


class TransformerEncoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention = MultiHeadAttention(cfg.num_hiddens, cfg.num_heads, cfg.dropout)
        self.addnorm1 = AddNorm(cfg.num_hiddens, cfg.dropout)
        self.ffn = PositionWiseFFN(cfg.num_hiddens, cfg.ffn_num_hiddens)
        self.addnorm2 = AddNorm(cfg.num_hiddens, cfg.dropout)

    def forward(self, X: Tensor, attn_mask: Tensor, no_keys: Tensor) -> Tensor:
        Y = self.addnorm1(X, self.attention(X, attn_mask, no_keys))  # (B, T, H)
        return self.addnorm2(Y, self.ffn(Y))

    def forward_packed(self, X: Tensor, packing: Packing, masks: list[Tensor]) -> Tensor:
        Y = self.addnorm1(X, self.attention.forward_packed(X, packing, masks))  # (N, H)
        return self.addnorm2(Y, self.ffn(Y))


class BERTEncoder(nn.Module):
    def __init__(self, vocab_size: int, cfg: ModelConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, cfg.num_hiddens)
        self.segment_embedding = nn.Embedding(2, cfg.num_hiddens)
        self.blks = nn.ModuleList(TransformerEncoderBlock(cfg) for _ in range(cfg.num_blks))
        self.pos_embedding = nn.Parameter(torch.randn(1, cfg.max_position, cfg.num_hiddens))

    def forward(self, tokens: Tensor, segments: Tensor, valid_lens: Tensor) -> Tensor:
        seq_len = tokens.shape[1]
        self._check_length(seq_len)
        X = self.token_embedding(tokens) + self.segment_embedding(segments)  # (B, T, H)
        X = X + self.pos_embedding[:, :seq_len]
        attn_mask, no_keys = key_mask(valid_lens, seq_len)
        for blk in self.blks:
            X = blk(X, attn_mask, no_keys)
        return X  # (B, T, H)

    def forward_packed(self, tokens: Tensor, segments: Tensor, packing: Packing) -> Tensor:
        """tokens, segments (N,) of the real positions in `packing` -> (N, H), equal to the
        padded forward's rows at those positions."""
        self._check_length(packing.max_steps)
        X = self.token_embedding(tokens) + self.segment_embedding(segments)  # (N, H)
        # a lookup, not `pos_embedding[0, positions]`: indexing's backward accumulates repeated
        # positions in an order that varies with thread scheduling; embedding's does not
        X = X + F.embedding(packing.positions, self.pos_embedding[0])
        masks = packing.masks()
        for blk in self.blks:
            X = blk.forward_packed(X, packing, masks)
        return X  # (N, H)

    def _check_length(self, seq_len: int) -> None:
        max_position = self.pos_embedding.shape[1]
        if seq_len > max_position:
            raise UserError(
                f"sequences of {seq_len} tokens are longer than model.max_position "
                f"({max_position}); raise model.max_position or shorten max_len"
            )


class MaskLM(nn.Module):
    def __init__(self, vocab_size: int, num_hiddens: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(num_hiddens, num_hiddens),
            nn.ReLU(),
            LayerNorm(num_hiddens),
            nn.Linear(num_hiddens, vocab_size),
        )

    def forward(self, X: Tensor, pred_positions: Tensor) -> Tensor:
        # X (B, T, H), pred_positions (B, P); padding slots point at position 0, like d2l's.
        index = pred_positions.long()[:, :, None].expand(-1, -1, X.shape[-1])  # (B, P, H)
        return self.mlp(torch.gather(X, 1, index))  # (B, P, V)

    def transform(self, X: Tensor) -> Tensor:
        """The head up to its output layer (Linear-ReLU-LayerNorm): (..., H) -> (..., H)."""
        return self.mlp[:3](X)

    @property
    def decoder(self) -> nn.Linear:
        """The output layer, H -> vocabulary logits."""
        return self.mlp[3]


class NextSentencePred(nn.Module):
    def __init__(self, num_hiddens: int):
        super().__init__()
        self.output = nn.Linear(num_hiddens, 2)

    def forward(self, X: Tensor) -> Tensor:
        return self.output(X)  # (B, H) -> (B, 2)


class BERTModel(nn.Module):
    """The pretraining model: encoder plus MLM and NSP heads."""

    def __init__(self, vocab_size: int, cfg: ModelConfig):
        super().__init__()
        self.vocab_size = vocab_size
        self.cfg = cfg
        H = cfg.num_hiddens
        self.encoder = BERTEncoder(vocab_size, cfg)
        self.hidden = nn.Sequential(nn.Linear(H, H), nn.Tanh())
        self.mlm = MaskLM(vocab_size, H)
        self.nsp = NextSentencePred(H)

    def forward(
        self,
        tokens: Tensor,
        segments: Tensor,
        valid_lens: Tensor,
        pred_positions: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """tokens, segments (B, T) int64; valid_lens (B,); pred_positions (B, P) int64.

        Returns encoded (B, T, H), MLM logits (B, P, V) or None, NSP logits (B, 2).
        """
        encoded = self.encoder(tokens, segments, valid_lens)  # (B, T, H)
        mlm_logits = None if pred_positions is None else self.mlm(encoded, pred_positions)
        nsp_logits = self.nsp(self.hidden(encoded[:, 0]))  # from <cls>: (B, 2)
        return encoded, mlm_logits, nsp_logits


class BERTClassifier(nn.Module):
    """Sentence-pair classifier: shares `bert`'s encoder and <cls> Linear+Tanh, adds a Linear."""

    def __init__(self, bert: BERTModel, num_classes: int = 3):
        super().__init__()
        self.encoder = bert.encoder
        self.hidden = bert.hidden
        self.output = nn.Linear(bert.cfg.num_hiddens, num_classes)

    def forward(self, tokens: Tensor, segments: Tensor, valid_lens: Tensor) -> Tensor:
        encoded = self.encoder(tokens, segments, valid_lens)  # (B, T, H)
        return self.output(self.hidden(encoded[:, 0]))  # (B, num_classes)


def num_parameters(module: nn.Module) -> int:
    """Number of scalar parameters (d2l's pretraining model: 5,632,546; shared ones once)."""
    return sum(p.numel() for p in module.parameters())
