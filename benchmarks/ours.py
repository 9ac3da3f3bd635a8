"""Our side of `compare_d2l.py`: the package functions the stages call, timed on given files.

Each sub-command mirrors one of `shared/bench/d2l_reference.py` and prints one JSON line
(figures) on stdout; logs go to stderr. Run by `compare_d2l.py` in a fresh process per
measurement, so `peak_rss_mb` is this side's alone.

  ours.py vocab    --wiki FILE --out vocab.json          (untimed set-up for `snli`)
  ours.py examples --wiki FILE                           tokenize_wikitext + make_examples
  ours.py snli     --snli-file FILE --vocab vocab.json   make_snli's work on one split
      (or --tokenizer FOLDER: the hf_bert route's, SNLI's raw text in a BERT tokenizer's ids)
  ours.py pretrain --wiki FILE [--steps 5]               pretrain's step (pretrain.pretrain)
  ours.py finetune --snli-file FILE --wiki FILE [--steps 5]   finetune's step
      [--model hf-d2l|hf-tiny|hf-base]   the hf_bert route's classifier (transformers' BertModel,
                                          random weights) at d2l's, BERT-Tiny's or bert-base's shape
      [--tokenizer FOLDER]               SNLI's raw text in a BERT tokenizer's ids, as make_snli
                                          encodes it on the hf_bert route (else our vocabulary)

  (both also take --threads, as the stages do: auto by default, --precision fp32|bf16 (the
   param), and --controls: the README's warm-up 0.1, linear decay, weight decay 0.01 and
   clipping at 1; both print `weights_sha1`)
  ours.py matmul [--precision bf16] [--shape M K N]      matmul FLOP/s (the MFU yardstick)

Model and optimiser settings are d2l's (params.yaml defaults): 2 blocks, 128 hidden, 2 heads,
FFN 256, dropout 0.2, max_len 64 / 128, batch 512, Adam lr 0.01 / 1e-4.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bertpipe import config, make_examples, snli, wikitext
from bertpipe.vocab import Vocab

# torch (and the modules that import it) is imported only by the training commands, as only
# the training stages import it: the data stages' peak memory does not include it.

MODEL = config.ModelConfig(
    num_hiddens=128, ffn_num_hiddens=256, num_heads=2, num_blks=2, dropout=0.2, max_position=1000
)
EXAMPLES = config.MakeExamplesConfig(max_len=64, mask_rate=0.15, next_sentence_prob=0.5, seed=0)
SNLI_MAX_LEN = 128
# The hf_bert route's encoder (BertConfig keys) at d2l's shape (MODEL's: the same work as ours),
# and at Google's BERT-Tiny's and bert-base's (GELU, dropout 0.1, 512 positions: BertConfig's
# defaults; their vocabulary size, which a tokenizer given with --tokenizer must fit in)
HF_SHAPES = {
    "hf-d2l": {"hidden_size": MODEL.num_hiddens, "num_hidden_layers": MODEL.num_blks,
               "num_attention_heads": MODEL.num_heads, "intermediate_size": MODEL.ffn_num_hiddens,
               "hidden_act": "relu", "hidden_dropout_prob": MODEL.dropout,
               "attention_probs_dropout_prob": MODEL.dropout,
               "max_position_embeddings": MODEL.max_position},
    "hf-tiny": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 512, "vocab_size": 30522},
    "hf-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                "intermediate_size": 3072, "vocab_size": 30522},
}  # fmt: skip


def peak_rss_mb() -> float:
    """Peak resident memory of this process or its largest child (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024, 1)


WORKERS = os.cpu_count() or 1  # the data stages' default


def tokenize(path: Path, workers: int = WORKERS) -> tuple[wikitext.Corpus, Vocab]:
    """What the tokenize_wikitext stage computes: d2l's reading rules, vocabulary, ids."""
    return wikitext.tokenize(path, 5, workers)


def examples(path: Path, workers: int = WORKERS) -> tuple[dict[str, np.ndarray], Vocab, int]:
    """make_examples' arrays, the vocabulary and the number of corpus tokens."""
    corpus, vocab = tokenize(path, workers)
    return make_examples.make_examples(corpus, vocab, EXAMPLES), vocab, corpus.num_tokens


def snli_arrays(path: Path, vocab: Vocab, workers: int) -> dict[str, np.ndarray]:
    """make_snli's arrays for one split file."""
    pairs = snli.read_snli(path)
    encoded = snli.encode_pairs(
        snli.PairEncoder.of(vocab, SNLI_MAX_LEN), pairs.premises, pairs.hypotheses, workers
    )
    return {**encoded.arrays(), "labels": pairs.labels}


def hf_snli_arrays(path: Path, folder: Path, workers: int = 1) -> tuple[dict[str, np.ndarray], int]:
    """make_snli's arrays on the hf_bert route (raw text, the tokenizer in `folder`) and the
    tokenizer's size."""
    from bertpipe import hf_bert

    tokenizer = hf_bert.load_tokenizer(folder)
    encoder = snli.TokenizerPairEncoder.of(tokenizer, SNLI_MAX_LEN)
    pairs = snli.read_snli(path, raw=True)
    encoded = snli.encode_pairs(encoder, pairs.premises, pairs.hypotheses, workers)
    return {**encoded.arrays(), "labels": pairs.labels}, len(tokenizer)


def finetune_data(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], int]:
    """The SNLI arrays fine-tuning reads (ids of --tokenizer, or of our vocabulary of --wiki)
    and the size of their vocabulary."""
    if args.tokenizer is not None:
        return hf_snli_arrays(args.snli_file, args.tokenizer)
    _, vocab = tokenize(args.wiki)
    return snli_arrays(args.snli_file, vocab, 1), len(vocab)


def classifier(name: str, vocab_size: int) -> Any:
    """Our BERTClassifier at MODEL's shape, or the hf_bert route's at HF_SHAPES[name]."""
    if name == "ours":
        from bertpipe.model import BERTClassifier, BERTModel

        return BERTClassifier(BERTModel(vocab_size, MODEL), num_classes=3)
    from transformers import BertConfig, BertModel

    from bertpipe.hf_model import ATTENTION, HFClassifier

    cfg = BertConfig(**{"vocab_size": vocab_size, **HF_SHAPES[name]}, attn_implementation=ATTENTION)
    if vocab_size > cfg.vocab_size:
        sys.exit(f"a tokenizer of {vocab_size} ids does not fit {name}'s {cfg.vocab_size}")
    return HFClassifier(BertModel(cfg), num_classes=3)


def cmd_vocab(args: argparse.Namespace) -> dict:
    _, vocab = tokenize(args.wiki)
    vocab.save(args.out)
    return {"what": "ours vocab", "vocab_size": len(vocab)}


def cmd_examples(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    ex, vocab, tokens = examples(args.wiki, args.workers)
    seconds = time.perf_counter() - start
    return {
        "what": "ours examples",
        "seconds": round(seconds, 3),
        "workers": args.workers,
        "tokens": tokens,
        "examples": len(ex["nsp_labels"]),
        "vocab_size": len(vocab),
        "array_mb": round(sum(a.nbytes for a in ex.values()) / 2**20, 2),
        "peak_rss_mb": peak_rss_mb(),
    }


def cmd_snli(args: argparse.Namespace) -> dict:
    """make_snli's work: d2l's cleaning in our vocabulary, or (--tokenizer) the hf_bert route's
    raw text in a BERT tokenizer's ids; loading the vocabulary or tokenizer is timed too."""
    start = time.perf_counter()
    if args.tokenizer is not None:
        arrays, _ = hf_snli_arrays(args.snli_file, args.tokenizer, args.workers)
    else:
        vocab = Vocab.load(args.vocab)  # as the stage does: the vocabulary is an input
        arrays = snli_arrays(args.snli_file, vocab, args.workers)
    seconds = time.perf_counter() - start
    return {
        "what": "hf_bert snli arrays" if args.tokenizer else "ours snli arrays",
        "seconds": round(seconds, 3),
        "pairs": len(arrays["labels"]),
        "workers": args.workers,
        "tensor_mb": round(sum(a.nbytes for a in arrays.values()) / 2**20, 2),
        "peak_rss_mb": peak_rss_mb(),
    }


def useful_flops(valid_lens: np.ndarray, slots: np.ndarray, vocab_size: int) -> float:
    """Model FLOPs of one training step (forward + backward = 3 x forward) on real work only.

    Per example with L real tokens: per block the q/k/v/o projections (4 * 2LH^2), attention
    scores and weighted values over the L real keys (2 * 2L^2 H) and the FFN (2 * 2LHF); the
    <cls> pooler (2H^2) and NSP output (2 * 2H); per real prediction slot the MLM head (2H^2 +
    2HV). Embedding lookups, norms, softmax and the optimiser are not counted.
    """
    H, F = MODEL.num_hiddens, MODEL.ffn_num_hiddens
    L = valid_lens.astype(np.float64)
    per_block = 8 * L * H * H + 4 * L * L * H + 4 * L * H * F
    forward = MODEL.num_blks * per_block.sum() + len(L) * (2 * H * H + 4 * H)
    forward += float(slots.sum()) * (2 * H * H + 2 * H * vocab_size)
    return 3.0 * forward


# the README's training controls, which `--controls` turns on (d2l's plain Adam otherwise)
CONTROLS = {"warmup_fraction": 0.1, "lr_schedule": "linear", "weight_decay": 0.01,
            "grad_clip": 1.0}  # fmt: skip


def optimiser(args: argparse.Namespace) -> dict:
    return CONTROLS if args.controls else {}


def weights_sha1(model: Any) -> str:
    """SHA-1 of every parameter's bytes, in state-dict order: equal only if bit-identical."""
    digest = hashlib.sha1()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def thread_figures(rt: Any) -> dict:
    """threads: the most used (compare_d2l holds it equal to d2l's), the setting, the mean."""
    knobs = rt.threads.knobs()  # threads (auto or the count) and threads_mean
    return {"threads": rt.threads.most, "threads_setting": knobs["threads"],
            "threads_mean": knobs["threads_mean"]}  # fmt: skip


def cmd_pretrain(args: argparse.Namespace) -> dict:
    import torch

    from bertpipe import batches, runtime
    from bertpipe.model import BERTModel
    from bertpipe.pretrain import pretrain

    ex, vocab, _ = examples(args.wiki)
    cfg = config.PretrainConfig(batch_size=args.batch_size, lr=0.01, num_steps=args.steps + 1,
                                seed=args.seed, **optimiser(args))  # fmt: skip
    # pretrain() draws its plan from this seeded generator first: the same batches
    plan = batches.pretraining_plan(
        len(ex["nsp_labels"]),
        cfg.batch_size,
        cfg.num_steps,
        torch.Generator().manual_seed(cfg.seed),
    )
    timed = np.concatenate([b.idx for b in plan[1:]])  # the first step is not timed
    flops = useful_flops(ex["valid_lens"][timed], ex["mlm_weights"][timed], len(vocab))
    with runtime.runtime("cpu", args.workers, args.compile, False, args.threads,
                         args.precision) as rt:  # fmt: skip
        torch.manual_seed(args.seed)
        model = BERTModel(len(vocab), MODEL)
        metrics = pretrain(model, ex, cfg, rt)
    return {
        "what": "ours pretrain",
        "steps": args.steps,
        "batch_size": args.batch_size,
        "pairs_per_sec": metrics["pairs_per_sec"],
        "useful_flops_per_sec": round(flops / metrics["train_seconds"], 1),
        "train_seconds": metrics["train_seconds"],
        **thread_figures(rt),
        "compile": rt.compile,
        "mean_valid_len": round(float(ex["valid_lens"][timed].mean()), 2),
        "last_mlm_loss": metrics["mlm_loss_last"],
        "last_nsp_loss": metrics["nsp_loss_last"],
        "weights_sha1": weights_sha1(model),
        "examples": len(ex["nsp_labels"]),
        "vocab_size": len(vocab),
        "peak_rss_mb": peak_rss_mb(),
    }


def cmd_finetune(args: argparse.Namespace) -> dict:
    import torch

    from bertpipe import batches, runtime
    from bertpipe.finetune import step
    from bertpipe.loop import Trainer

    data, vocab_size = finetune_data(args)
    cfg = config.FinetuneConfig(
        batch_size=args.batch_size, lr=1e-4, num_epochs=1, seed=args.seed, **optimiser(args)
    )
    lengths = batches.snli_lengths(data)
    # the first steps of finetune's first epoch: length-bucketed, bucket order shuffled
    gen = torch.Generator().manual_seed(args.seed)
    plan = batches.length_buckets(lengths, args.batch_size, gen)[: args.steps + 1]
    with runtime.runtime("cpu", args.workers, args.compile, False, args.threads,
                         args.precision) as rt:  # fmt: skip
        torch.manual_seed(args.seed)
        model = classifier(args.model, vocab_size)
        model.train()
        trainer = Trainer(model, runtime.prepare(model, rt), cfg, len(plan), rt, None, [])
        stats = trainer.run(step, data, plan, batches.collate_snli, 0, "finetune")
    speed = trainer.speed
    timed = np.concatenate([lengths[b] for b in plan[1:]])
    padded = sum(len(b) * int(lengths[b].max()) for b in plan[1:])
    return {
        "what": "ours finetune",
        "model": args.model,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "examples_per_sec": speed.rate(),
        **thread_figures(rt),
        "compile": rt.compile,
        "padding_share": round(1 - timed.sum() / padded, 3),
        "timed_examples": len(timed),
        "padded_tokens": padded,  # of the timed steps: batch size x longest pair, summed
        "last_loss": round(float(stats[-1, 0]), 3),
        "weights_sha1": weights_sha1(model),
        "pairs": len(data["labels"]),
        "peak_rss_mb": peak_rss_mb(),
    }


def cmd_matmul(args: argparse.Namespace) -> dict:
    """Best of `repeats` M x K x N matmuls in fp32 or bf16: the machine's practical matmul peak
    (2048^3), or its speed at one of the model's shapes."""
    import torch

    import bertpipe  # noqa: F401  (its MKL and oneDNN settings, as the stages have them)

    m, k, n = args.shape
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    out = torch.empty(m, n, dtype=dtype)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return {
        "what": f"{args.precision} matmul",
        "shape": [m, k, n],
        "flops_per_sec": round(2 * m * k * n / best, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("vocab")
    p.add_argument("--wiki", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("examples")
    p.add_argument("--wiki", type=Path, required=True)
    p.add_argument("--workers", type=int, default=WORKERS)
    p = sub.add_parser("snli")
    p.add_argument("--snli-file", type=Path, required=True)
    snli_source = p.add_mutually_exclusive_group(required=True)
    snli_source.add_argument("--vocab", type=Path, help="our vocab.json (d2l's cleaning)")
    snli_source.add_argument("--tokenizer", type=Path, help="a BERT tokenizer's folder (raw text)")
    p.add_argument("--workers", type=int, default=WORKERS)
    for name in ("pretrain", "finetune"):
        p = sub.add_parser(name)
        p.add_argument("--wiki", type=Path, required=True)
        if name == "finetune":
            p.add_argument("--snli-file", type=Path, required=True)
            p.add_argument("--model", choices=["ours", *HF_SHAPES], default="ours")
            p.add_argument("--tokenizer", type=Path, help="a BERT tokenizer's folder")
        p.add_argument("--steps", type=int, default=5)
        p.add_argument("--batch-size", type=int, default=512)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--workers", type=int, default=0, help="data-loading workers")
        p.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
        p.add_argument("--threads", default="auto", help="as the stages' --threads")
        p.add_argument("--controls", action="store_true", help="warm-up, linear decay, AdamW, clip")
        p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p = sub.add_parser("matmul")
    p.add_argument(
        "--shape", type=int, nargs=3, default=[2048, 2048, 2048], metavar=("M", "K", "N")
    )
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    command = globals()[f"cmd_{args.cmd}"]
    print(json.dumps(command(args)), flush=True)


if __name__ == "__main__":
    main()
