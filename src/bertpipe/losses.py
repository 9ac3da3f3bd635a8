"""The pretraining losses: MLM as the weighted mean over real prediction slots, and NSP.

`mlm_loss` is the definition, d2l's intended one (its PyTorch code averages over padding slots
too, d2l issue #2582). Pretraining computes the same number, and its gradient, with
`linear_cross_entropy`, which never materialises the whole (slots, vocabulary) logit matrix at
once; tests hold the two equal.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertpipe.kernels import padded_rows

LOGIT_BLOCK = 512  # MLM logits per block of vocabulary columns on CPU (_LinearCrossEntropy)


def exact_sum(x: Tensor) -> Tensor:
    """x.sum(), in an order that does not depend on the thread count.

    PyTorch's CPU sum of more than 32,768 numbers into one splits them among the threads, so its
    rounding depends on how many there are; a sum along a dim does not. Rows of 1,024 summed row
    by row, then the row sums: the same bits at any thread count.
    """
    x = x.reshape(-1)
    while x.numel() > 32768:
        x = F.pad(x, (0, -x.numel() % 1024)).view(-1, 1024).sum(dim=1)
    return x.sum()


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
    """Σ w·[argmax = label] / (Σ w + 1e-8): the share of real prediction slots predicted right."""
    hits = (logits.argmax(-1) == labels).float() * weights  # (B, P)
    return hits.sum() / (weights.float().sum() + 1e-8)


def nsp_loss(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), labels)


class _LinearCrossEntropy(torch.autograd.Function):
    """`mlm_loss` and `mlm_accuracy` of the logits x Wᵀ + b, and their gradients, fast.

    The (S, V) logits are the largest tensor of a pretraining step. Here they are made in blocks
    of LOGIT_BLOCK vocabulary columns (on CPU; one block elsewhere), and each block's maximum,
    exp and sum are taken while it is still in cache (an online softmax, as in flash
    attention). The blocks then become, in place, the loss's gradient with respect to the
    logits, w/D · (softmax − onehot), which is all backward needs: no log-softmax copy, no
    zero-filled gradient, no argmax pass (a slot is a hit when its label's logit is the row's
    maximum). D is the denominator of the weighted mean: Σw + 1e-8 over the slots given, or over
    the whole batch when ranks share it.

    Under autocast the matmuls run in the autocast dtype, as F.linear's would, and the blocks
    are kept in it for backward (bf16: half the memory traffic); the softmax statistics and
    exps, the loss, and the gradient at each label (softmax − 1, which cancels) are float32,
    in a float32 copy of the blocks (mixed-dtype elementwise ops are several times slower).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, labels: Tensor,
                weights: Tensor, denominator: Tensor) -> tuple[Tensor, Tensor]:  # fmt: skip
        kind, (S, V) = x.device.type, (len(labels), len(weight))
        low = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
        x_low, w_low, b_low = x.to(low), weight.to(low), bias.to(low)
        width = LOGIT_BLOCK if kind == "cpu" else V
        columns = [slice(j, min(j + width, V)) for j in range(0, V, width)]
        # every block (S, width) one after the other, each contiguous; float32 exps beside them
        flat = x_low.new_empty(S * V)
        flat32 = flat if low == torch.float32 else flat.new_empty(S * V, dtype=torch.float32)
        rows = torch.arange(S, device=x.device)
        blocks, exps, stats = [], [], []
        label_logit = torch.empty(S, device=x.device)  # as the blocks hold it
        with torch.autocast(kind, enabled=False):
            for cols in columns:
                at = slice(S * cols.start, S * cols.stop)
                block = torch.addmm(b_low[cols], x_low, w_low[cols].t(), out=flat[at].view(S, -1))
                inside = (labels >= cols.start) & (labels < cols.stop)
                label_logit[inside] = block[rows[inside], labels[inside] - cols.start].float()
                exp = flat32[at].view(S, -1)
                if exp.data_ptr() != block.data_ptr():
                    exp.copy_(block)
                top = exp.amax(dim=1)  # (S,)
                total = exp.sub_(top[:, None]).exp_().sum(dim=1)  # exp: exp(logit - top)
                blocks.append(block)
                exps.append(exp)
                stats.append((top, total, inside))
        best, total, inside = (torch.stack(column) for column in zip(*stats, strict=True))  # (n, S)
        top = best.amax(dim=0)  # (S,) the row maximum
        rescale = torch.exp(best - top)  # (n, S): from each block's maximum to the row's
        total = (total * rescale).sum(dim=0)  # (S,) Σ exp(logit - top)
        target = (x.float() * weight[labels].float()).sum(dim=1) + bias[labels].float()  # (S,)
        w = weights.float()
        scale = w / denominator  # (S,)
        loss = exact_sum((top + total.log() - target) * scale)
        accuracy = exact_sum((label_logit >= top).float() * w) / denominator
        # at each label: scale · (softmax − 1), in float32 from the label's own logit
        at_label = scale * (torch.exp(target - top) / total - 1.0)  # (S,)
        factor = rescale * (scale / total)  # (n, S)
        for block, exp, f, mine, cols in zip(blocks, exps, factor, inside, columns, strict=True):
            exp.mul_(f[:, None])  # exp(logit - block max) -> scale · softmax
            exp[rows[mine], labels[mine] - cols.start] = at_label[mine]
            if exp.data_ptr() != block.data_ptr():
                block.copy_(exp)
        ctx.save_for_backward(x, weight, *blocks)
        ctx.low, ctx.columns = low, columns
        ctx.mark_non_differentiable(accuracy)
        return loss, accuracy

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, _: Tensor) -> tuple:
        x, weight, *blocks = ctx.saved_tensors  # blocks of d loss / d logits: (S, width) each
        x_low, w_low = x.to(ctx.low), weight.to(ctx.low)
        grad_x = torch.zeros_like(x, dtype=torch.float32)  # summed over the blocks in float32
        grad_w = torch.empty_like(w_low)
        for block, cols in zip(blocks, ctx.columns, strict=True):
            grad_x += torch.mm(block, w_low[cols])
            torch.mm(block.t(), x_low, out=grad_w[cols])
        grad_b = torch.cat([block.sum(dim=0) for block in blocks]).float()  # (V,)
        return (grad_x.to(x.dtype).mul_(grad_loss), grad_w.to(weight.dtype).mul_(grad_loss),
                grad_b.mul_(grad_loss), None, None, None)  # fmt: skip


def linear_cross_entropy(
    x: Tensor, layer: nn.Linear, labels: Tensor, weights: Tensor, total: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(mlm_loss, mlm_accuracy) of `layer(x)` for S slots: x (S, H), labels, weights (S,).

    Both are Σ over the slots of w·(CE or hit) / (total + 1e-8); `total` defaults to Σ w, which
    makes them `mlm_loss` and `mlm_accuracy`. Give the whole batch's Σ w when ranks share it.
    """
    total = exact_sum(weights.float()) if total is None else total.float()
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        # slots of weight 0 up to a row count whose bf16 kernels oneDNN has (`kernels.linear`)
        pad = padded_rows(len(labels)) - len(labels)
        x, labels, weights = (
            F.pad(x, (0, 0, 0, pad)),
            F.pad(labels, (0, pad)),
            F.pad(weights, (0, pad)),
        )
    return _LinearCrossEntropy.apply(x, layer.weight, layer.bias, labels, weights, total + 1e-8)
