"""Tests for bertpipe.kernels: the packed layout, dropout's random bits, and backward passes
that are the true gradients (gradcheck) whichever path computes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bertpipe.kernels import (
    LayerNorm,
    Packing,
    dropout,
    linear,
    packed_attention,
    padded_rows,
    softmax,
)

H, HEADS = 12, 3


def test_packing_layout():
    packing = Packing.of(np.array([2, 3, 1]), num_groups=2)
    assert packing.groups == ((2, 3), (1, 1))  # (examples, steps) per group
    assert packing.positions.tolist() == [0, 1, 0, 1, 2, 0]
    assert packing.slots.tolist() == [0, 1, 3, 4, 5, 0]  # rows in (examples, steps) layouts
    assert packing.group_starts.tolist() == [0, 0, 0, 0, 0, 6]  # group 2's layout after 2 x 3
    # two feature blocks per row: group 1's layout twice (12 rows), then group 2's twice
    assert packing.index(2).tolist() == [0, 6, 1, 7, 3, 9, 4, 10, 5, 11, 12, 13]
    assert [m.shape for m in packing.masks()] == [(1, 2, 1, 3), (1, 1, 1, 1)]
    moved = packing.to("cpu")
    assert moved.groups == packing.groups and torch.equal(moved.slots, packing.slots)
    with pytest.raises(ValueError, match="at least one position"):
        Packing.of(np.array([2, 0]))


def test_dropout_drops_p_and_keeps_the_mean():
    X = torch.full((1000, 1000), 2.0)
    torch.manual_seed(0)
    out = dropout(X, 0.2, training=True)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.002  # 1M draws: sd 0.0004
    assert torch.unique(out).tolist() == [0.0, pytest.approx(2.0 / (1 - 13107 / 65536))]
    assert out.double().mean().item() == pytest.approx(2.0, abs=0.01)
    torch.manual_seed(0)
    assert torch.equal(dropout(X, 0.2, training=True), out)  # seeded: the same mask
    assert torch.equal(dropout(X, 0.2, training=False), X)


def test_layer_norm_and_softmax_backward_are_the_true_gradients():
    """Their CPU backward passes are written here (sums in a fixed order); gradcheck compares
    them with finite differences."""
    g = torch.Generator().manual_seed(0)
    ln = LayerNorm(H).double()
    with torch.no_grad():  # away from 1 and 0, so that a wrong weight or bias term shows
        ln.weight.copy_(torch.randn(H, generator=g, dtype=torch.float64))
        ln.bias.copy_(torch.randn(H, generator=g, dtype=torch.float64))
    X = torch.randn(4, 5, H, generator=g, dtype=torch.float64, requires_grad=True)
    params = (X, ln.weight, ln.bias)
    assert torch.autograd.gradcheck(lambda x, w, b: ln(x), params)
    assert torch.autograd.gradcheck(softmax, (X,))


def packed_attention_case(dtype=torch.float32):
    """q, k, v (N, 3H) of a packed batch of 9 examples in 3 groups, and its packing."""
    lens = np.array([1, 2, 4, 5, 5, 7, 8, 9, 11])
    packing = Packing.of(lens, 3)
    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(int(lens.sum()), 3 * H, dtype=dtype, generator=g)
    return qkv.requires_grad_(), packing


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_packed_attention_backward_passes_gradcheck(p):
    qkv, packing = packed_attention_case(torch.float64)

    def attend(qkv):
        torch.manual_seed(3)  # the same dropout masks at every evaluation
        return packed_attention(qkv, packing, packing.masks(), HEADS, p)

    assert torch.autograd.gradcheck(attend, (qkv,))


def test_packed_attention_forward_is_the_per_group_loop_bit_for_bit_with_dropout():
    """The CPU training path (_PackedAttention, taken with autograd on) against the per-group
    `attention` loop (inference, CUDA): the same dropout masks, the same bits. Its gradients are
    checked by gradcheck above."""
    qkv, packing = packed_attention_case()
    outs = []
    for grad in (True, False):
        torch.manual_seed(3)
        with torch.set_grad_enabled(grad):
            outs.append(packed_attention(qkv, packing, packing.masks(), HEADS, 0.3))
    assert outs[0].grad_fn is not None and outs[1].grad_fn is None
    assert torch.equal(outs[0].detach(), outs[1])


def test_under_bf16_autocast_softmax_layer_norm_and_the_dropout_scale_are_float32():
    """bf16 in, float32 out: in bf16 the softmax backward cancels, and 1 / keep rate rounds."""
    g = torch.Generator().manual_seed(4)
    X = torch.randn(6, H, generator=g).bfloat16().requires_grad_()
    ln = LayerNorm(H)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ln(X) + softmax(X)
    out.sum().backward()
    assert out.dtype == torch.float32 and X.grad.dtype == torch.bfloat16
    assert ln.weight.grad.dtype == torch.float32
    reference = LayerNorm(H)(X.detach().float()) + softmax(X.detach().float())
    assert torch.equal(out.detach(), reference.detach())  # X widened, then as in float32
    torch.manual_seed(0)
    kept = dropout(torch.ones(100, 100, dtype=torch.bfloat16), 0.1, training=True).unique()
    # 6,554 of every 65,536 dropped; in bf16 the scale would be 1.109375
    assert kept.dtype == torch.float32 and kept.tolist() == [
        0.0,
        pytest.approx(65536 / 58982, rel=1e-7),
    ]


def test_packed_attention_under_bf16_autocast():
    """bf16 matmuls, float32 softmax: the training path's forward is the per-group loop's bits,
    and its gradient is the float32 one to bf16's precision."""
    qkv, packing = packed_attention_case()
    grads, outs = [], []
    for grad, low in ((True, True), (False, True), (True, False)):
        x = qkv.detach().bfloat16().float().requires_grad_()  # the same inputs in both dtypes
        torch.manual_seed(3)
        with torch.set_grad_enabled(grad), torch.autocast("cpu", torch.bfloat16, enabled=low):
            out = packed_attention(x.to(torch.bfloat16) if low else x, packing, packing.masks(),
                                   HEADS, 0.3)  # fmt: skip
        outs.append(out)
        if grad:
            out.float().pow(2).sum().backward()
            grads.append(x.grad)
    assert outs[0].dtype == torch.bfloat16 and torch.equal(outs[0].detach(), outs[1])
    torch.testing.assert_close(outs[0].detach().float(), outs[2].detach(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(grads[0], grads[1], rtol=5e-2, atol=5e-2)


def test_linear_pads_rows_under_cpu_autocast_without_changing_a_bit_of_the_real_ones():
    """Padded to a row count of few values (oneDNN then reuses its bf16 kernels); the real rows'
    outputs and every gradient are those of the unpadded matmul."""
    assert [padded_rows(n) for n in (1, 17, 1000, 23001, 23040)] == [16, 32, 1008, 23040, 23040]
    layer = torch.nn.Linear(H, 5)
    X = torch.randn(23, H, generator=torch.Generator().manual_seed(5), requires_grad=True)
    results = []
    for run in (lambda: linear(X, layer.weight, layer.bias), lambda: layer(X)):
        layer.zero_grad()
        X.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = run()
        out.float().sum().backward()
        results.append([out, X.grad, layer.weight.grad, layer.bias.grad])
    assert results[0][0].shape == (23, 5)
    for ours, plain in zip(*results, strict=True):
        torch.testing.assert_close(ours, plain, rtol=0, atol=0)
