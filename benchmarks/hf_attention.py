"""The hf_bert route's attention choice: transformers' `eager` or `sdpa`, timed and bit-checked.

    python benchmarks/hf_attention.py [--steps 6] [--batch 128]

For each implementation, a BertModel at BERT-Tiny's shape (2 blocks, 128 hidden, 2 heads, FFN
512, bert-base-uncased's 30,522-token vocabulary; random weights) under hf_model.HFClassifier
trains on random pairs of 20-59 tokens padded to the longest of their batch, with Adam, in a
fresh process per thread count (1, then 2). Prints the median seconds per step (the first
step untimed) and the SHA-1 of the weights after the last step; then, for one step from the
same start, the parameters whose gradients differ between 1 and 2 threads, with dropout on and
off.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time

import torch
from transformers import BertConfig, BertModel

from bertpipe.hf_model import HFClassifier  # importing bertpipe sets MKL's strict mode

SHAPE = {"vocab_size": 30522, "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
         "intermediate_size": 512, "max_position_embeddings": 512}  # fmt: skip


def model(attention: str, dropout: float) -> HFClassifier:
    torch.manual_seed(0)
    cfg = BertConfig(**SHAPE, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                     attn_implementation=attention)  # fmt: skip
    return HFClassifier(BertModel(cfg), num_classes=3)


def batch(gen: torch.Generator, size: int) -> tuple[torch.Tensor, ...]:
    """Random pairs of 20-59 tokens, padded to the longest: tokens, segments, valid_lens, y."""
    lens = torch.randint(20, 60, (size,), generator=gen)
    T = int(lens.max())
    real = torch.arange(T)[None] < lens[:, None]  # (B, T)
    tokens = torch.randint(5, SHAPE["vocab_size"], (size, T), generator=gen).masked_fill(~real, 0)
    segments = ((torch.arange(T)[None] >= (lens // 2)[:, None]) & real).long()
    return tokens, segments, lens, torch.randint(0, 3, (size,), generator=gen)


def train(attention: str, threads: int, steps: int, size: int) -> dict:
    """Run in a child process: `steps` Adam steps; seconds per step and the weights' SHA-1."""
    torch.set_num_threads(threads)
    net = model(attention, dropout=0.1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    gen, seconds = torch.Generator().manual_seed(1), []
    for _ in range(steps):
        tokens, segments, lens, y = batch(gen, size)
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(tokens, segments, lens), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seconds.append(time.perf_counter() - start)
    digest = hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in net.parameters()))
    return {"s_per_step": round(statistics.median(seconds[1:]), 4), "sha1": digest.hexdigest()}


def differing_gradients(attention: str, dropout: float, size: int) -> list[str]:
    """Parameters whose gradient after one step differs between 1 and 2 threads."""
    grads = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        net = model(attention, dropout)
        tokens, segments, lens, y = batch(torch.Generator().manual_seed(1), size)
        torch.manual_seed(5)  # the dropout masks
        torch.nn.functional.cross_entropy(net(tokens, segments, lens), y).backward()
        grads.append({n: p.grad for n, p in net.named_parameters()})
    return [n for n in grads[0] if not torch.equal(grads[0][n], grads[1][n])]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument(
        "--child", nargs=2, metavar=("ATTENTION", "THREADS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(train(args.child[0], int(args.child[1]), args.steps, args.batch)))
        return
    for attention in ("eager", "sdpa"):
        for threads in (1, 2):
            child = [sys.executable, __file__, "--steps", str(args.steps), "--batch",
                     str(args.batch), "--child", attention, str(threads)]  # fmt: skip
            out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
            result = json.loads(out.splitlines()[-1])
            print(f"{attention} {threads} threads: {result['s_per_step']} s/step, "
                  f"weights {result['sha1'][:12]}", flush=True)  # fmt: skip
        for dropout in (0.0, 0.1):
            names = differing_gradients(attention, dropout, args.batch)
            shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            print(f"{attention}, dropout {dropout}: gradients differing at 1 and 2 threads: "
                  f"{len(names)} ({shown or 'none'})", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
