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

The CPU kernels underneath (packed attention, dropout from 16 random bits per element, softmax
and LayerNorm whose gradients do not depend on the thread count) are in `kernels`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertpipe.config import ModelConfig
from bertpipe.errors import UserError
from bertpipe.kernels import (
    Dropout,
    LayerNorm,
    Linear,
    Packing,
    attention,
    key_mask,
    linear,
    packed_attention,
)


class MultiHeadAttention(nn.Module):
    """Self-attention; head h uses features h*d:(h+1)*d of each projection (d = H / heads)."""

    def __init__(self, num_hiddens: int, num_heads: int, dropout: float):
        super().__init__()
        if num_hiddens % num_heads:  # config.ModelConfig refuses such params
            raise ValueError(f"{num_hiddens} hidden units do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.dropout = dropout
        self.W_q = Linear(num_hiddens, num_hiddens)
        self.W_k = Linear(num_hiddens, num_hiddens)
        self.W_v = Linear(num_hiddens, num_hiddens)
        self.W_o = Linear(num_hiddens, num_hiddens)

    def forward(self, X: Tensor, attn_mask: Tensor, no_keys: Tensor) -> Tensor:
        B, T, H = X.shape
        q = self.W_q(X).masked_fill(no_keys, 0.0)  # (B, T, H)
        q, k, v = (
            t.view(B, T, self.num_heads, H // self.num_heads).transpose(1, 2)  # (B, nh, T, d)
            for t in (q, self.W_k(X), self.W_v(X))
        )
        out = attention(q, k, v, attn_mask, self._dropout_p())  # (B, nh, T, d)
        return self.W_o(out.transpose(1, 2).reshape(B, T, H))  # heads concatenated: (B, T, H)

    def forward_packed(self, X: Tensor, packing: Packing, masks: list[Tensor]) -> Tensor:
        """X (N, H): the real positions of a batch laid out by `packing` -> (N, H).

        q, k and v come from one matmul, attention runs on them as `kernels.packed_attention`
        lays them out, and its output goes through W_o as in `forward`.
        """
        weight = torch.cat([self.W_q.weight, self.W_k.weight, self.W_v.weight])  # (3H, H)
        bias = torch.cat([self.W_q.bias, self.W_k.bias, self.W_v.bias])
        qkv = linear(X, weight, bias)  # (N, 3H)
        return self.W_o(packed_attention(qkv, packing, masks, self.num_heads, self._dropout_p()))

    def _dropout_p(self) -> float:
        """The dropout rate on the attention weights: d2l's, in training only."""
        return self.dropout if self.training else 0.0


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
        self.dense1 = Linear(num_hiddens, ffn_num_hiddens)
        self.dense2 = Linear(ffn_num_hiddens, num_hiddens)

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
            Linear(num_hiddens, num_hiddens),
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
