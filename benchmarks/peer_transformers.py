"""The peer a user would otherwise pick, Hugging Face `transformers`, on this pipeline's own work.

Each sub-command prints one JSON line (figures) on stdout, as `ours.py` does, and is run in a
fresh process by `compare_d2l.py --peer`, beside `ours.py` and d2l, alternating:

  peer_transformers.py pretrain --wiki FILE [--steps 5]           BertForPreTraining
  peer_transformers.py finetune --snli-file FILE --wiki FILE [--steps 5]
                                                                   BertForSequenceClassification

Both read what `ours.py` reads (the examples and the SNLI pairs built by the package functions
the stages call, ids of our vocabulary) at d2l's shape (`ours.MODEL`: 2 blocks, 128 hidden, 2
heads, FFN 256, ReLU, dropout 0.2, 1,000 positions) with d2l's optimiser (Adam, lr 0.01 / 1e-4)
and batch 512; attention is PyTorch's scaled_dot_product_attention ("sdpa"). The first step is
not timed; the timed steps include building the batches, as ours do.

- pretrain: the batches of `pretrain.pretrain`'s own seeded plan, each padded to max_len 64
  with an attention mask, `labels` -100 everywhere but the real prediction slots, and
  `next_sentence_label` (0 = the true next sentence, transformers' convention). Its MLM head
  scores every position (batch x 64 x vocabulary), ours only the real slots.
- finetune: batches of 512 pairs drawn at random (a seeded permutation) and padded to their
  longest pair, as `DataCollatorWithPadding` leaves them; ours groups pairs of similar length.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import ours
import torch

from bertpipe import batches


def bert_config(vocab_size: int, num_labels: int = 2) -> Any:
    """transformers' BertConfig at d2l's shape (ours.MODEL)."""
    from transformers import BertConfig

    m = ours.MODEL
    return BertConfig(vocab_size=vocab_size, hidden_size=m.num_hiddens,
                      num_hidden_layers=m.num_blks, num_attention_heads=m.num_heads,
                      intermediate_size=m.ffn_num_hiddens, hidden_act="relu",
                      hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.dropout,
                      max_position_embeddings=m.max_position, type_vocab_size=2,
                      num_labels=num_labels, attn_implementation="sdpa")  # fmt: skip


def attention_mask(valid_lens: np.ndarray | torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) 1 on each row's first valid_len positions, 0 on padding."""
    lens = torch.as_tensor(np.asarray(valid_lens, dtype=np.int64))
    return (torch.arange(width) < lens[:, None]).long()


def pretraining_batch(ex: batches.Arrays, idx: np.ndarray) -> dict[str, torch.Tensor]:
    """BertForPreTraining's inputs for examples `idx`: padded rows, labels on real slots only."""
    tokens = torch.from_numpy(ex["token_ids"][idx].astype(np.int64))  # (B, L)
    labels = torch.full_like(tokens, -100)  # (B, L) -100: not scored in the loss
    real = ex["mlm_weights"][idx] > 0  # (B, P)
    rows = np.broadcast_to(np.arange(len(idx))[:, None], real.shape)[real]  # (S,)
    positions = ex["pred_positions"][idx][real].astype(np.int64)  # (S,)
    labels[rows, positions] = torch.from_numpy(ex["mlm_labels"][idx][real].astype(np.int64))
    return {
        "input_ids": tokens,
        "token_type_ids": torch.from_numpy(ex["segments"][idx].astype(np.int64)),
        "attention_mask": attention_mask(ex["valid_lens"][idx], tokens.shape[1]),
        "labels": labels,
        "next_sentence_label": torch.from_numpy(1 - ex["nsp_labels"][idx].astype(np.int64)),
    }


def classification_batch(snli: batches.Arrays, idx: np.ndarray) -> dict[str, torch.Tensor]:
    """BertForSequenceClassification's inputs: pairs `idx` padded to their longest pair."""
    b = batches.collate_snli(snli, idx)  # (B, T) tokens and segments, padded with 0
    return {
        "input_ids": b["tokens"],
        "token_type_ids": b["segments"],
        "attention_mask": attention_mask(b["valid_lens"], b["tokens"].shape[1]),
        "labels": b["labels"],
    }


def train(model: Any, plan: list, inputs: Any, lr: float) -> tuple[float, float]:
    """Adam steps on every batch of `plan`; (seconds of all but the first step, last loss)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    start = 0.0
    for i, idx in enumerate(plan):
        if i == 1:
            start = time.perf_counter()  # the first step (warm-up) is not timed
        loss = model(**inputs(idx)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start, float(loss.detach())


def timing(args: argparse.Namespace, seconds: float, rate: str) -> dict:
    """The figures compare_d2l checks (steps, batch size, threads) and the rate, named `rate`."""
    return {"steps": args.steps, "batch_size": args.batch_size,
            rate: round(args.steps * args.batch_size / seconds, 1),
            "train_seconds": round(seconds, 3), "threads": torch.get_num_threads()}  # fmt: skip


def cmd_pretrain(args: argparse.Namespace) -> dict:
    from transformers import BertForPreTraining

    ex, vocab, _ = ours.examples(args.wiki)
    gen = torch.Generator().manual_seed(args.seed)  # pretrain.pretrain's plan: the same batches
    plan = batches.pretraining_plan(len(ex["nsp_labels"]), args.batch_size, args.steps + 1, gen)
    torch.manual_seed(args.seed)
    model = BertForPreTraining(bert_config(len(vocab)))
    seconds, loss = train(model, [b.idx for b in plan], lambda i: pretraining_batch(ex, i), 0.01)
    return {
        "what": "transformers BertForPreTraining",
        **timing(args, seconds, "pairs_per_sec"),
        "last_loss": round(loss, 3),
        "examples": len(ex["nsp_labels"]),
        "vocab_size": len(vocab),
        "peak_rss_mb": ours.peak_rss_mb(),
    }


def cmd_finetune(args: argparse.Namespace) -> dict:
    from transformers import BertForSequenceClassification

    _, vocab = ours.tokenize(args.wiki)
    data = ours.snli_arrays(args.snli_file, vocab, 1)
    lengths = batches.snli_lengths(data)
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(args.seed))
    plan = np.array_split(order.numpy(), range(args.batch_size, len(lengths), args.batch_size))
    plan = plan[: args.steps + 1]
    torch.manual_seed(args.seed)
    model = BertForSequenceClassification(bert_config(len(vocab), num_labels=3))
    seconds, loss = train(model, plan, lambda i: classification_batch(data, i), 1e-4)
    real = [lengths[b] for b in plan[1:]]  # the timed batches' pair lengths
    padded = np.array([r.max() for r in real])  # (steps,) each batch's width
    return {
        "what": "transformers BertForSequenceClassification",
        **timing(args, seconds, "examples_per_sec"),
        "mean_padded_len": round(float(padded.mean()), 1),
        "padding_share": round(1 - np.concatenate(real).mean() / padded.mean(), 3),
        "last_loss": round(loss, 3),
        "pairs": len(lengths),
        "peak_rss_mb": ours.peak_rss_mb(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)  # what both sub-commands take
    common.add_argument("--wiki", type=Path, required=True)
    common.add_argument("--steps", type=int, default=5)
    common.add_argument("--batch-size", type=int, default=512)
    common.add_argument("--seed", type=int, default=0)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("pretrain", parents=[common]).set_defaults(run=cmd_pretrain)
    p = sub.add_parser("finetune", parents=[common])
    p.add_argument("--snli-file", type=Path, required=True)
    p.set_defaults(run=cmd_finetune)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(json.dumps(args.run(args)), flush=True)


if __name__ == "__main__":
    main()
