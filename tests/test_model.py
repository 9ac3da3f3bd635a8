"""The model equals d2l's BERT: attention through SDPA matches d2l's masked-softmax formula, the
whole encoder matches a plain re-statement of d2l's, padding is invisible, d2l's state-dict
names load strictly, and the model can learn (it overfits one batch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bertpipe.config import ModelConfig
from bertpipe.errors import UserError
from bertpipe.kernels import Packing, dropout, key_mask
from bertpipe.model import BERTClassifier, BERTModel, MultiHeadAttention, num_parameters

V, H, FFN, HEADS, BLKS, MAX_POS = 37, 12, 20, 3, 2, 50


def tiny_cfg(dropout: float = 0.0) -> ModelConfig:
    return ModelConfig(
        num_hiddens=H,
        ffn_num_hiddens=FFN,
        num_heads=HEADS,
        num_blks=BLKS,
        dropout=dropout,
        max_position=MAX_POS,
    )


def tiny_model(dropout: float = 0.0, seed: int = 0) -> BERTModel:
    torch.manual_seed(seed)
    return BERTModel(V, tiny_cfg(dropout))


def random_batch(B: int = 5, T: int = 11, P: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (B, T), generator=g)
    segments = torch.randint(0, 2, (B, T), generator=g)
    valid_lens = torch.randint(1, T + 1, (B,), generator=g)
    valid_lens[0] = T  # one row with no padding at all
    pred_positions = torch.randint(0, T, (B, P), generator=g) % valid_lens[:, None]
    return tokens, segments, valid_lens, pred_positions


def d2l_attention(mha, X, valid_lens):
    """d2l's MultiHeadAttention: heads split/concatenated, masked keys' scores set to -1e6."""
    B, T, _ = X.shape
    nh, d = mha.num_heads, H // mha.num_heads

    def split(t):  # (B, T, H) -> (B*nh, T, d)
        return t.reshape(B, T, nh, d).permute(0, 2, 1, 3).reshape(B * nh, T, d)

    q, k, v = split(mha.W_q(X)), split(mha.W_k(X)), split(mha.W_v(X))
    scores = q @ k.transpose(1, 2) / math.sqrt(d)  # (B*nh, T, T)
    lens = valid_lens.repeat_interleave(nh).float()  # (B*nh,)
    keep = torch.arange(T, dtype=torch.float32)[None, None, :] < lens[:, None, None]
    weights = torch.where(keep, scores, torch.tensor(-1e6)).softmax(dim=-1)
    out = (weights @ v).reshape(B, nh, T, d).permute(0, 2, 1, 3).reshape(B, T, H)
    return mha.W_o(out)


def d2l_encoder(encoder, tokens, segments, valid_lens):
    """d2l's BERTEncoder written out: embeddings summed, post-LN blocks, ReLU FFN."""
    T = tokens.shape[1]
    X = encoder.token_embedding(tokens) + encoder.segment_embedding(segments)
    X = X + encoder.pos_embedding[:, :T, :]
    for blk in encoder.blks:
        Y = blk.addnorm1.ln(X + d2l_attention(blk.attention, X, valid_lens))
        ffn = blk.ffn.dense2(torch.relu(blk.ffn.dense1(Y)))
        X = blk.addnorm2.ln(Y + ffn)
    return X


@pytest.mark.parametrize(
    "valid_lens",
    [
        torch.tensor([9, 1, 4, 7]),
        torch.tensor([9, 0, 4, 20], dtype=torch.int16),  # 0: uniform attention; 20 > T
        torch.tensor([2.5, 9.0, 0.0, 6.0]),  # d2l's pretraining loader gives float32 lengths
    ],
)
def test_sdpa_attention_equals_d2l_masked_softmax(valid_lens):
    model = tiny_model().eval()
    mha = model.encoder.blks[0].attention
    X = torch.randn(4, 9, H, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = mha(X, *key_mask(valid_lens, 9))
        expected = d2l_attention(mha, X, valid_lens)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_encoder_equals_d2l_formula():
    model = tiny_model().eval()
    tokens, segments, valid_lens, _ = random_batch()
    with torch.no_grad():
        ours = model.encoder(tokens, segments, valid_lens)
        expected = d2l_encoder(model.encoder, tokens, segments, valid_lens)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_padding_beyond_valid_len_changes_nothing():
    model = tiny_model().eval()
    tokens, segments, valid_lens, positions = random_batch()
    g = torch.Generator().manual_seed(3)
    junk_tokens = torch.cat([tokens, torch.randint(0, V, (5, 6), generator=g)], dim=1)
    junk_segments = torch.cat([segments, torch.randint(0, 2, (5, 6), generator=g)], dim=1)
    for b, n in enumerate(valid_lens.tolist()):  # junk also inside the original padding
        junk_tokens[b, n:] = torch.randint(0, V, (junk_tokens.shape[1] - n,), generator=g)
    with torch.no_grad():
        enc, mlm, nsp = model(tokens, segments, valid_lens, positions)
        enc2, mlm2, nsp2 = model(junk_tokens, junk_segments, valid_lens, positions)
    for b, n in enumerate(valid_lens.tolist()):
        torch.testing.assert_close(enc[b, :n], enc2[b, :n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mlm, mlm2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nsp, nsp2, atol=1e-5, rtol=1e-5)


def test_output_shapes():
    model = tiny_model()
    tokens, segments, valid_lens, positions = random_batch(B=5, T=11, P=3)
    encoded, mlm, nsp = model(tokens, segments, valid_lens, positions)
    assert (encoded.shape, mlm.shape, nsp.shape) == ((5, 11, H), (5, 3, V), (5, 2))
    encoded, mlm, nsp = model(tokens, segments, valid_lens)
    assert mlm is None and encoded.shape == (5, 11, H) and nsp.shape == (5, 2)
    classifier = BERTClassifier(model, num_classes=3)
    assert classifier(tokens, segments, valid_lens).shape == (5, 3)


def test_mlm_logits_are_the_head_on_the_gathered_positions():
    model = tiny_model().eval()
    tokens, segments, valid_lens, positions = random_batch()
    with torch.no_grad():
        encoded, mlm, _ = model(tokens, segments, valid_lens, positions)
        for b in range(tokens.shape[0]):
            for j, t in enumerate(positions[b].tolist()):
                torch.testing.assert_close(mlm[b, j], model.mlm.mlp(encoded[b, t]))


def packed(tokens, segments, valid_lens, num_groups):
    """The real positions of a padded batch, packed as `Packing` lays them out."""
    real = torch.arange(tokens.shape[1]) < valid_lens[:, None]  # (B, T), row-major = packed order
    return tokens[real], segments[real], Packing.of(valid_lens.numpy(), num_groups), real


@pytest.mark.parametrize("num_groups", [1, 2, 3, 5])
def test_packed_encoder_equals_the_padded_one_at_real_positions(num_groups):
    """Any grouping, lengths in any order: the same outputs and the same gradients."""
    model = tiny_model()
    tokens, segments, valid_lens, _ = random_batch(B=5, T=11)
    ids, segs, packing, real = packed(tokens, segments, valid_lens, num_groups)
    assert len(packing.groups) == num_groups and packing.max_steps == 11
    g = torch.Generator().manual_seed(7)
    weights = torch.randn(int(valid_lens.sum()), H, generator=g)  # a loss on real rows only
    results = []
    for run in (lambda: model.encoder(tokens, segments, valid_lens)[real],
                lambda: model.encoder.forward_packed(ids, segs, packing)):  # fmt: skip
        model.zero_grad()
        out = run()  # (N, H)
        (out * weights).sum().backward()
        results.append(
            (out.detach(), {n: p.grad.clone() for n, p in model.encoder.named_parameters()})
        )
    (padded, grads), (ours, our_grads) = results
    torch.testing.assert_close(ours, padded, atol=1e-5, rtol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(our_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_attention_dropout_on_cpu_keeps_the_expected_output():
    """Dropout on the attention weights (computed without SDPA on CPU) is unbiased and drops
    about p of them: averaged over many draws, the output is the dropout-free one."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(H, HEADS, dropout=0.3)
    X = torch.randn(4, 9, H, generator=torch.Generator().manual_seed(8))
    mask = key_mask(torch.tensor([9, 3, 6, 1]), 9)
    with torch.no_grad():
        expected = mha.eval()(X, *mask)
        mha.train()
        draws = torch.stack([mha(X, *mask) for _ in range(3000)])
    assert not torch.allclose(draws[0], expected)
    torch.testing.assert_close(draws.mean(0), expected, atol=0.03, rtol=0.0)
    weights = torch.ones(2000, 50)
    kept = (dropout(weights, 0.3, training=True) > 0).float().mean().item()
    assert kept == pytest.approx(0.7, abs=0.005)
    values = dropout(weights, 0.3, training=True).unique()
    torch.testing.assert_close(values, torch.tensor([0.0, 1 / 0.7]))
    assert torch.equal(dropout(weights, 0.3, training=False), weights)


def test_longer_than_max_position_is_a_user_error():
    model = tiny_model()
    tokens = torch.zeros(1, MAX_POS + 1, dtype=torch.long)
    with pytest.raises(UserError, match="max_position"):
        model(tokens, tokens, torch.tensor([3]))


def d2l_state_dict_shapes(num_blks: int) -> dict[str, tuple[int, ...]]:
    """d2l 1.0.3 BERTModel's state-dict keys and shapes, written out by hand."""
    shapes = {
        "encoder.pos_embedding": (1, MAX_POS, H),
        "encoder.token_embedding.weight": (V, H),
        "encoder.segment_embedding.weight": (2, H),
        "hidden.0.weight": (H, H),
        "hidden.0.bias": (H,),
        "mlm.mlp.0.weight": (H, H),
        "mlm.mlp.0.bias": (H,),
        "mlm.mlp.2.weight": (H,),
        "mlm.mlp.2.bias": (H,),
        "mlm.mlp.3.weight": (V, H),
        "mlm.mlp.3.bias": (V,),
        "nsp.output.weight": (2, H),
        "nsp.output.bias": (2,),
    }
    for i in range(num_blks):
        block = f"encoder.blks.{i}"
        for w in ("W_q", "W_k", "W_v", "W_o"):
            shapes[f"{block}.attention.{w}.weight"] = (H, H)
            shapes[f"{block}.attention.{w}.bias"] = (H,)
        for ln in ("addnorm1", "addnorm2"):
            shapes[f"{block}.{ln}.ln.weight"] = (H,)
            shapes[f"{block}.{ln}.ln.bias"] = (H,)
        shapes[f"{block}.ffn.dense1.weight"] = (FFN, H)
        shapes[f"{block}.ffn.dense1.bias"] = (FFN,)
        shapes[f"{block}.ffn.dense2.weight"] = (H, FFN)
        shapes[f"{block}.ffn.dense2.bias"] = (H,)
    return shapes


def test_d2l_state_dict_loads_strictly():
    shapes = d2l_state_dict_shapes(BLKS)
    g = torch.Generator().manual_seed(4)
    d2l_weights = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    model = tiny_model()
    model.load_state_dict(d2l_weights, strict=True)
    ours = model.state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == shapes
    assert all(torch.equal(ours[k], d2l_weights[k]) for k in shapes)
    assert num_parameters(model) == sum(math.prod(s) for s in shapes.values())


def test_classifier_keys_and_sharing():
    model = tiny_model()
    classifier = BERTClassifier(model, num_classes=3)
    keys = set(classifier.state_dict())
    encoder_keys = {k for k in d2l_state_dict_shapes(BLKS) if k.startswith("encoder.")}
    expected = encoder_keys | {"hidden.0.weight", "hidden.0.bias", "output.weight", "output.bias"}
    assert keys == expected
    assert classifier.encoder is model.encoder and classifier.hidden is model.hidden
    assert classifier.output.weight.shape == (3, H)


def test_dropout_active_in_train_mode_only():
    model = tiny_model(dropout=0.3)
    tokens, segments, valid_lens, _ = random_batch()
    model.train()
    first, second = model(tokens, segments, valid_lens)[0], model(tokens, segments, valid_lens)[0]
    assert not torch.allclose(first, second)
    for blk in model.encoder.blks:  # residual dropout off: the attention weights' stays on
        blk.addnorm1.dropout.p = blk.addnorm2.dropout.p = 0.0
    first, second = model(tokens, segments, valid_lens)[0], model(tokens, segments, valid_lens)[0]
    assert not torch.allclose(first, second)
    model.eval()
    first, second = model(tokens, segments, valid_lens)[0], model(tokens, segments, valid_lens)[0]
    assert torch.equal(first, second)


def test_gradients_reach_every_parameter_and_used_positions_only():
    model = tiny_model(dropout=0.1)
    tokens, segments, valid_lens, positions = random_batch(T=11)
    _, mlm, nsp = model(tokens, segments, valid_lens, positions)
    (mlm.sum() + nsp.sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    pos_grad = model.encoder.pos_embedding.grad[0]  # (MAX_POS, H)
    assert pos_grad[:11].abs().sum(dim=1).gt(0).all()
    assert torch.equal(pos_grad[11:], torch.zeros_like(pos_grad[11:]))


def weighted_mlm_loss(logits, labels, weights):
    per_slot = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), reduction="none")
    return (per_slot * weights.reshape(-1)).sum() / (weights.sum() + 1e-8)


def test_overfits_one_pretraining_batch():
    model = tiny_model()
    tokens, segments, valid_lens, positions = random_batch(B=8, T=12, P=3)
    g = torch.Generator().manual_seed(5)
    mlm_labels = torch.randint(0, V, positions.shape, generator=g)
    mlm_weights = torch.ones(positions.shape)
    mlm_weights[:, -1] = 0.0  # padding slots: their (random) labels must not matter
    nsp_labels = torch.randint(0, 2, (8,), generator=g)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        optimizer.zero_grad()
        _, mlm, nsp = model(tokens, segments, valid_lens, positions)
        mlm_loss = weighted_mlm_loss(mlm, mlm_labels, mlm_weights)
        loss = mlm_loss + F.cross_entropy(nsp, nsp_labels)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05, loss.item()


def test_classifier_overfits_one_batch():
    classifier = BERTClassifier(tiny_model(), num_classes=3)
    tokens, segments, valid_lens, _ = random_batch(B=16, T=10)
    labels = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(6))
    optimizer = torch.optim.Adam(classifier.parameters(), lr=0.01)
    for _ in range(100):
        optimizer.zero_grad()
        F.cross_entropy(classifier(tokens, segments, valid_lens), labels).backward()
        optimizer.step()
    with torch.no_grad():
        predictions = classifier.eval()(tokens, segments, valid_lens).argmax(dim=1)
    assert torch.equal(predictions, labels)


def test_packed_gradients_do_not_depend_on_thread_scheduling():
    """Two backward passes of one packed batch at 2 threads give bit-identical gradients.

    Repeated positions are summed into the positional embedding's gradient; indexing's backward
    (`table[positions]`) does that in an order that follows thread scheduling on CPU, which made
    two identical training runs differ from the fifth step on.
    """
    torch.set_num_threads(2)  # the one_thread fixture restores its own count afterwards
    g = torch.Generator().manual_seed(0)
    cfg = ModelConfig(128, 256, 2, 1, 0.0, 64)
    torch.manual_seed(0)
    encoder = BERTModel(V, cfg).encoder
    lens = torch.randint(20, 64, (256,), generator=g).numpy()  # about 10k packed rows
    packing = Packing.of(np.sort(lens), 4)
    n = int(lens.sum())
    tokens, segments = (
        torch.randint(0, V, (n,), generator=g),
        torch.randint(0, 2, (n,), generator=g),
    )
    upstream = torch.randn(n, 128, generator=g)

    def grads() -> list[torch.Tensor]:
        encoder.zero_grad()
        encoder.forward_packed(tokens, segments, packing).backward(upstream)
        return [p.grad.clone() for p in encoder.parameters()]

    first = grads()
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(first, grads(), strict=True))


@pytest.mark.parametrize("packed", [True, False])
def test_gradients_do_not_depend_on_the_thread_count(packed):
    """One training forward and backward, dropout on, at 1 and 2 threads: the same bits.

    PyTorch's CPU LayerNorm backward adds one partial weight gradient per thread, and its CPU
    softmax backward rounds by thread too; with nn.LayerNorm or Tensor.softmax this fails.
    (At 3 or more threads MKL's matmuls round differently: runtime.Threads never goes there.)
    """
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = BERTModel(V, ModelConfig(64, 128, 2, 1, 0.2, 64)).train()
    lens = np.sort(torch.randint(20, 64, (128,), generator=g).numpy())  # about 5k rows
    n = int(lens.sum())
    tokens = torch.randint(0, V, (n,), generator=g)
    segments = torch.randint(0, 2, (n,), generator=g)
    packing = Packing.of(lens, 4)
    slots = torch.randperm(n, generator=g)[: n // 7]  # distinct rows, as prediction slots are

    def grads(threads: int) -> list[torch.Tensor]:
        torch.set_num_threads(threads)  # the one_thread fixture restores its own count
        torch.manual_seed(1)  # the same dropout masks
        model.zero_grad()
        if packed:
            X = model.encoder.forward_packed(tokens, segments, packing)  # (N, H)
        else:
            padded = torch.zeros(len(lens), 64, dtype=torch.long)
            padded[torch.arange(64) < torch.from_numpy(lens)[:, None]] = tokens
            X = model.encoder(padded, torch.zeros_like(padded), torch.from_numpy(lens))
            X = X.reshape(-1, 64)
        mlm = model.mlm.mlp(X.reshape(-1, 64)[slots])  # (S, V): the head's LayerNorm too
        (mlm.square().mean() + model.hidden(X[:3]).sum()).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    assert all(torch.equal(a, b) for a, b in zip(grads(1), grads(2), strict=True))
