"""Tests for bertpipe.losses: the weighted MLM loss and its fused, blockwise twin."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bertpipe import losses


def test_mlm_loss_is_the_weighted_mean_over_real_slots_only():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 11, generator=g)
    labels = torch.randint(0, 11, (3, 4), generator=g)
    weights = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)
    by_hand = [
        -torch.log_softmax(logits[b, p], -1)[labels[b, p]]
        for b in range(3) for p in range(4) if weights[b, p]
    ]  # fmt: skip
    loss = losses.mlm_loss(logits, labels, weights)
    torch.testing.assert_close(loss, torch.stack(by_hand).mean(), rtol=1e-6, atol=1e-6)

    pad = weights == 0
    noisy_logits = torch.where(pad[..., None], torch.randn(3, 4, 11, generator=g) * 50, logits)
    noisy_logits[0, 3, 0] = float("inf")  # even a non-finite padding slot changes nothing
    noisy_labels = torch.where(pad, torch.randint(0, 11, (3, 4), generator=g), labels)
    assert losses.mlm_loss(noisy_logits, noisy_labels, weights).item() == loss.item()


@pytest.mark.parametrize("block", [3, 8, 1024])  # vocabulary columns per block of logits
def test_linear_cross_entropy_equals_mlm_loss_accuracy_and_their_gradients(monkeypatch, block):
    monkeypatch.setattr(losses, "LOGIT_BLOCK", block)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 6, generator=g)
    layer = torch.nn.Linear(6, 11)
    labels = torch.randint(0, 11, (9,), generator=g)
    labels[:3] = torch.tensor([0, 10, 7])  # the first and last columns, inside a block
    weights = torch.rand(9, generator=g) + 0.5  # real slots; any positive weight
    results = []
    for fused in (False, True):
        xg = x.clone().requires_grad_()
        layer.zero_grad()
        if fused:
            loss, acc = losses.linear_cross_entropy(xg, layer, labels, weights)
        else:
            logits = layer(xg)
            loss = losses.mlm_loss(logits, labels, weights)
            acc = losses.mlm_accuracy(logits, labels, weights)
        (3.0 * loss).backward()  # an upstream gradient other than 1
        results.append([loss.detach(), acc, xg.grad, layer.weight.grad, layer.bias.grad])
    for plain, fused in zip(*results, strict=True):
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


def test_linear_cross_entropy_under_autocast_matches_f_linear():
    """Matmuls in the autocast dtype (as F.linear's would be), softmax in float32."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 8, generator=g, requires_grad=True)
    layer = torch.nn.Linear(8, 30)
    labels = torch.randint(0, 30, (16,), generator=g)
    weights = torch.ones(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = losses.linear_cross_entropy(x, layer, labels, weights)
        expected = losses.mlm_loss(layer(x), labels, weights)
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == torch.float32
    assert layer.weight.grad.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=2e-2)


def test_nsp_loss_and_accuracies():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0]])
    labels = torch.tensor([0, 0, 0])
    by_hand = -torch.log_softmax(logits, -1)[:, 0].mean()
    torch.testing.assert_close(losses.nsp_loss(logits, labels), by_hand)
    mlm_logits = F.one_hot(torch.tensor([[1, 2, 0]]), 3).float()  # argmax = 1, 2, 0
    acc = losses.mlm_accuracy(mlm_logits, torch.tensor([[1, 0, 2]]), torch.tensor([[1, 1, 0.0]]))
    assert acc.item() == pytest.approx(0.5)  # slot 3 is padding


def test_exact_sum_gives_the_same_bits_at_1_and_2_threads():
    """PyTorch's CPU sum of more than 32,768 numbers into one rounds by thread; exact_sum not."""
    x = torch.randn(100_003, generator=torch.Generator().manual_seed(0)) * 1e3
    torch.set_num_threads(1)  # the one_thread fixture restores its own count
    one, plain_one = losses.exact_sum(x), x.sum()
    torch.set_num_threads(2)
    assert not torch.equal(x.sum(), plain_one)  # the control: PyTorch's sum splits by thread
    assert torch.equal(losses.exact_sum(x), one)
    assert losses.exact_sum(x).item() == pytest.approx(x.double().sum().item(), rel=1e-5)


def test_linear_cross_entropy_in_bf16_keeps_the_gradient_of_confident_slots():
    """Under autocast: the loss and the gradients are those of float64 from the same
    bf16-rounded inputs, to bf16's precision, a slot whose softmax − 1 cancels included (slot
    0's label is predicted with probability 0.999)."""
    g = torch.Generator().manual_seed(2)
    layer = torch.nn.Linear(8, 40)
    x = torch.randn(12, 8, generator=g)
    labels = torch.randint(0, 40, (12,), generator=g)
    with torch.no_grad():  # slot 0: its label's logit 7 above the rest
        logits = layer(x[:1])[0]
        layer.bias[labels[0]] += 7.0 + logits.max() - logits[labels[0]]
    weights = torch.ones(12)
    results = []
    for low in (True, False):
        layer.zero_grad()
        if low:
            xg = x.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, _ = losses.linear_cross_entropy(xg, layer, labels, weights)
            assert loss.dtype == torch.float32
        else:
            xg = x.bfloat16().double().requires_grad_()
            w, b = (t.detach().bfloat16().double().requires_grad_() for t in layer.parameters())
            loss = F.cross_entropy(xg @ w.t() + b, labels)  # all weights 1: the plain mean
        loss.backward()
        grads = (xg.grad, layer.weight.grad if low else w.grad, layer.bias.grad if low else b.grad)
        results.append([loss.detach(), *grads])
    for ours, exact in zip(*results, strict=True):
        scale = exact.abs().max().item()
        torch.testing.assert_close(ours.double(), exact, rtol=0.02, atol=0.02 * scale)
