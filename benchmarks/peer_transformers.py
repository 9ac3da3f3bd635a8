"""The peer a user would otherwise pick, Hugging Face `transformers`, on this pipeline's own work.

Each sub-command prints one JSON line (figures) on stdout, as `ours.py` does, and is run in a
fresh process by `compare_d2l.py --peer`, beside `ours.py` and d2l, alternating:

  peer_transformers.py pretrain --wiki FILE [--steps 5]           BertForPreTraining
  peer_transformers.py finetune --snli-file FILE --wiki FILE [--steps 5]
                                                                   BertForSequenceClassification

and, as a harness of its own, the hf_bert route's seconds per epoch of full SNLI at BERT-Tiny's
and bert-base's shapes (estimates, see `cmd_epochs`):

  peer_transformers.py epochs [--shared ../shared/data] [--repeats 3] [--runs MODEL:BATCH:STEPS ...]

pretrain and finetune read what `ours.py` reads (the examples and the SNLI pairs built by the
package functions the stages call, ids of our vocabulary) at d2l's shape (`ours.HF_SHAPES`:
2 blocks, 128 hidden, 2 heads, FFN 256, ReLU, dropout 0.2, 1,000 positions) with d2l's
optimiser (Adam, lr 0.01 / 1e-4) and batch 512; attention is PyTorch's
scaled_dot_product_attention ("sdpa"). The first step is not timed; the timed steps include
building the batches, as ours do.

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
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import compare_d2l
import numpy as np
import ours
import torch

from bertpipe import batches

HERE = Path(__file__).resolve().parent
SNLI_TRAIN_PAIRS = 550_152  # snli_1.0_train.txt's rows (shared/data/README.md)


def bert_config(vocab_size: int, num_labels: int = 2) -> Any:
    """transformers' BertConfig at d2l's shape (the hf_bert route's at it: ours.HF_SHAPES)."""
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, num_labels=num_labels, attn_implementation="sdpa",
                      **ours.HF_SHAPES["hf-d2l"])  # fmt: skip


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


def train_tokenizer(shared: Path, out: Path) -> Path:
    """An uncased WordPiece tokenizer of bert-base-uncased's size (30,522), trained by
    `tokenizers` on the shared WikiText and SNLI text (no Hub here), saved to `out`.

    It stands in for Google's vocabulary so that the pairs have WordPiece lengths: its training
    is the tests' (tests/hf_tiny.py), reused rather than written twice.
    """
    sys.path.insert(0, str(HERE.parent / "tests"))
    import hf_tiny

    wiki = compare_d2l.real_data.wiki_valid_and_test(shared).decode("utf-8").splitlines()
    pairs = ours.snli.read_snli(shared / "snli_1.0" / "snli_1.0_dev.txt", raw=True)
    tokenizer = hf_tiny.train_tokenizer(wiki + pairs.premises + pairs.hypotheses, 30_522)
    tokenizer.save_pretrained(out)
    return out


def padded_per_pair(snli_file: Path, tokenizer: Path, batch_size: int, seed: int) -> float:
    """Padded tokens per pair of one whole length-bucketed epoch of `snli_file` (finetune's)."""
    data, _ = ours.hf_snli_arrays(snli_file, tokenizer)
    lengths = batches.snli_lengths(data)
    plan = batches.length_buckets(lengths, batch_size, torch.Generator().manual_seed(seed))
    return sum(len(b) * int(lengths[b].max()) for b in plan) / len(lengths)


def cmd_epochs(args: argparse.Namespace) -> dict:
    """Seconds per epoch of SNLI's 550,152 training pairs on the hf_bert route, estimated.

    Each of --runs (model:batch size:steps) is `ours.py finetune --model M --tokenizer T`: the
    route's own loop on SNLI dev (the representative sample, 9,842 pairs; the training file is
    not here), its first length-bucketed batches of an epoch, in fresh processes, alternating,
    best of --repeats, at --threads (on this route the stage keeps one thread count). Its time
    per padded token (batch size x longest pair, summed) times the padded tokens per pair of a
    whole epoch of dev at that batch size, times 550,152 pairs, is the estimate. bert-base takes
    seconds a step, so it is timed on a few small batches; the estimate is for an epoch at that
    batch size, whose per-step costs (the optimiser's update of 110 M parameters) the per-token
    figure includes.
    """
    snli_file = args.shared / "snli_1.0" / "snli_1.0_dev.txt"
    wiki = args.shared / "wikitext-2" / "wiki.valid.tokens"  # ours.py's --wiki: unread here
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    shapes = {spec: spec.split(":") for spec in args.runs}  # "hf-tiny:512:10" -> name, batch, steps
    with tempfile.TemporaryDirectory(prefix="bertpipe-epochs-") as tmp:
        tokenizer = train_tokenizer(args.shared, Path(tmp) / "tokenizer")
        load_start = compare_d2l.wait_quiet(args.quiet, args.wait_max)
        runs: dict[str, list] = {spec: [] for spec in shapes}
        for r in range(args.repeats):
            for spec in list(shapes) if r % 2 == 0 else list(shapes)[::-1]:
                name, batch, steps = shapes[spec]
                cmd = [sys.executable, str(HERE / "ours.py"), "finetune", "--model", name,
                       "--tokenizer", str(tokenizer), "--snli-file", str(snli_file),
                       "--wiki", str(wiki), "--batch-size", batch, "--steps", steps,
                       "--threads", str(args.threads)]  # fmt: skip
                print(f"{spec}: run {r + 1}/{args.repeats} (load {compare_d2l.load1():.2f})",
                      file=sys.stderr)  # fmt: skip
                runs[spec].append(compare_d2l.run_json(cmd, env))
        load_end = compare_d2l.load1()
        figures = {}
        for spec, (_, batch, _) in shapes.items():
            fastest = compare_d2l.best(runs[spec], "examples_per_sec", True)
            seconds = fastest["timed_examples"] / fastest["examples_per_sec"]
            per_token = seconds / fastest["padded_tokens"]
            per_pair = padded_per_pair(snli_file, tokenizer, int(batch), 0)
            figures[spec] = {
                "examples_per_sec": fastest["examples_per_sec"],
                "threads_mean": fastest["threads_mean"],
                "padded_tokens_per_pair": round(per_pair, 2),
                "seconds_per_epoch_estimate": round(per_token * per_pair * SNLI_TRAIN_PAIRS),
            }
    info = compare_d2l.machine(
        args.threads,
        {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()},
    )
    return {**info, "load_start": load_start, "load_end": load_end, "repeats": args.repeats,
            "figures": figures, "runs": runs}  # fmt: skip


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
    p = sub.add_parser("epochs")
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--repeats", type=int, default=3, help="runs per shape (best counts)")
    p.add_argument("--runs", nargs="+", default=["hf-tiny:512:10", "hf-tiny:32:40", "hf-base:32:8"],
                   help="model:batch size:timed steps")  # fmt: skip
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch/OMP threads")
    p.add_argument("--quiet", type=float, default=0.7, help="load average to wait for")
    p.add_argument("--wait-max", type=float, default=600, help="seconds to wait at most")
    p.set_defaults(run=cmd_epochs)
    p = sub.add_parser("finetune", parents=[common])
    p.add_argument("--snli-file", type=Path, required=True)
    p.set_defaults(run=cmd_finetune)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(json.dumps(args.run(args)), flush=True)


if __name__ == "__main__":
    main()
