"""Pretrain BERT on the WikiText-2 examples (MLM + NSP), d2l's fixed number of optimiser steps.

Reads:  --examples (data/make_examples/, and its held-out valid/ split),
        --corpus (data/tokenize_wikitext/: the vocabulary, and the token counts of the unigram
        reference)
Writes: --out (data/pretrain/: model.safetensors, and vocab.json, the vocabulary that gives its
        ids meaning), --metrics (metrics/pretrain.json: training losses, held-out figures),
        --live (metrics/pretrain_live/: DVCLive curves under plots/metrics/, x = step)
Params: pretrain, model

Speed knobs (not params): --device, --threads, --workers, --compile, --checkpoint-every. Launch with
torchrun for DDP. A killed run resumes from its last checkpoint (data/.pretrain.resume/).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from bertpipe import artifacts, batches, checkpoints, config, curves, heldout, runtime, wikitext
from bertpipe.cli import run, stage_parser
from bertpipe.errors import UserError
from bertpipe.heldout import HeldOut
from bertpipe.masking import Specials
from bertpipe.model import BERTModel, num_parameters
from bertpipe.pretrain import pretrain
from bertpipe.resume import Resume, fingerprint
from bertpipe.vocab import Vocab

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--examples", required=True, help="make_examples output folder")
    parser.add_argument("--corpus", required=True, help="tokenize_wikitext output folder")
    parser.add_argument("--out", required=True, help="output folder for model.safetensors")
    parser.add_argument("--metrics", required=True, help="metrics JSON file to write")
    parser.add_argument("--live", required=True, help="DVCLive folder for the training curves")
    runtime.add_speed_args(parser)
    args = parser.parse_args(argv)
    cfg = config.load(args.params, "pretrain")
    model_cfg = config.load(args.params, "model")
    examples, meta = batches.load_examples(args.examples)
    if meta["max_len"] > model_cfg.max_position:
        raise UserError(
            f"{args.params}: model.max_position {model_cfg.max_position} is shorter than the "
            f"examples' max_len {meta['max_len']} ({args.examples}); raise model.max_position"
        )
    held = held_out(args.examples, args.corpus, meta)
    params = {"pretrain": dataclasses.asdict(cfg), "model": dataclasses.asdict(model_cfg)}
    resume = Resume.beside(
        args.out, fingerprint(params, [args.examples, args.corpus, __file__]), args.checkpoint_every
    )

    with runtime.runtime(args.device, args.workers, args.compile, distributed=True,
                         threads=args.threads, precision=cfg.precision) as rt:  # fmt: skip
        torch.manual_seed(cfg.seed)
        model = BERTModel(meta["vocab_size"], model_cfg)
        log.info("BERT with %d parameters, %d examples", num_parameters(model),
                 meta["num_examples"])  # fmt: skip
        with curves.curves(args.live, rt) as live:
            metrics = pretrain(model, examples, cfg, rt, live, resume, held, Specials.of(meta))
        if not rt.is_main:
            return
        with artifacts.atomic_dir(args.out) as out:
            header = checkpoints.bert_meta(
                model_cfg, meta["vocab_size"], meta["vocab_sha1"], cfg.precision
            )
            checkpoints.save(out / artifacts.WEIGHTS_FILE, model, header)
            shutil.copyfile(Path(args.corpus) / "vocab.json", out / "vocab.json")
        log.info("wrote %s", args.out)
    resume.clear()
    metrics |= {"num_parameters": num_parameters(model), "num_examples": meta["num_examples"]}
    artifacts.write_json(args.metrics, metrics)


def held_out(examples: str, corpus: str, meta: dict[str, Any]) -> HeldOut:
    """The held-out examples beside the training ones, and the training corpus's unigram model;
    all three must come from one vocabulary."""
    arrays, held_meta = batches.load_examples(Path(examples) / artifacts.HELD_OUT)
    counted = wikitext.load(corpus)  # checks its vocab.json against its ids
    vocab = Vocab.load(Path(corpus) / "vocab.json")
    for where, sha1 in ((f"{examples}/{artifacts.HELD_OUT}", held_meta["vocab_sha1"]),
                        (corpus, counted.vocab_sha1)):  # fmt: skip
        if sha1 != meta["vocab_sha1"]:
            raise UserError(
                f"{where}: not from the vocabulary of {examples}; rerun "
                "make_examples and what it reads (dvc repro make_examples)"
            )
    log_probs = heldout.unigram_log_probs(counted.token_ids, len(vocab))
    return HeldOut(arrays, log_probs, vocab.mask_id, vocab.unk_id)


if __name__ == "__main__":
    run(main)
