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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertpipe.cli import UserError
from bertpipe.config import ModelConfig


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


class MultiHeadAttention(nn.Module):
    """Self-attention; head h uses features h*d:(h+1)*d of each projection (d = H / heads)."""

    def __init__(self, num_hiddens: int, num_heads: int, dropout: float):
        super().__init__()
        if num_hiddens % num_heads:
            raise UserError(
                f"model.num_hiddens ({num_hiddens}) must be a multiple of model.num_heads "
                f"({num_heads}); change one of them in params.yaml"
            )
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
        # Dropout acts on the attention weights, as in d2l; on CPU a nonzero dropout_p makes
        # SDPA use its generic math kernel instead of the flash kernel.
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, d)
        return self.W_o(out.transpose(1, 2).reshape(B, T, H))  # heads concatenated: (B, T, H)


class AddNorm(nn.Module):
    """Post-LN residual: LayerNorm(X + dropout(Y))."""

    def __init__(self, num_hiddens: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.ln = nn.LayerNorm(num_hiddens)

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


class BERTEncoder(nn.Module):
    def __init__(self, vocab_size: int, cfg: ModelConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, cfg.num_hiddens)
        self.segment_embedding = nn.Embedding(2, cfg.num_hiddens)
        self.blks = nn.ModuleList(TransformerEncoderBlock(cfg) for _ in range(cfg.num_blks))
        self.pos_embedding = nn.Parameter(torch.randn(1, cfg.max_position, cfg.num_hiddens))

    def forward(self, tokens: Tensor, segments: Tensor, valid_lens: Tensor) -> Tensor:
        seq_len, max_position = tokens.shape[1], self.pos_embedding.shape[1]
        if seq_len > max_position:
            raise UserError(
                f"sequences of {seq_len} tokens are longer than model.max_position "
                f"({max_position}); raise model.max_position or shorten max_len"
            )
        X = self.token_embedding(tokens) + self.segment_embedding(segments)  # (B, T, H)
        X = X + self.pos_embedding[:, :seq_len]
        attn_mask, no_keys = key_mask(valid_lens, seq_len)
        for blk in self.blks:
            X = blk(X, attn_mask, no_keys)
        return X  # (B, T, H)


class MaskLM(nn.Module):
    def __init__(self, vocab_size: int, num_hiddens: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(num_hiddens, num_hiddens),
            nn.ReLU(),
            nn.LayerNorm(num_hiddens),
            nn.Linear(num_hiddens, vocab_size),
        )

    def forward(self, X: Tensor, pred_positions: Tensor) -> Tensor:
        # X (B, T, H), pred_positions (B, P); padding slots point at position 0, like d2l's.
        index = pred_positions.long()[:, :, None].expand(-1, -1, X.shape[-1])  # (B, P, H)
        return self.mlp(torch.gather(X, 1, index))  # (B, P, V)


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
