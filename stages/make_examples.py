"""Make BERT pretraining examples: NSP pairs, MLM masking (80/10/10), padding; seeded. The same
for the held-out split, from draws of its own.

Reads:  --corpus (data/tokenize_wikitext/, and its valid/ split)
Writes: --out (data/make_examples/: token_ids.npy, segments.npy, valid_lens.npy,
        pred_positions.npy, mlm_labels.npy, mlm_weights.npy, nsp_labels.npy, meta.json; valid/:
        the held-out examples in the same files), --metrics (metrics/make_examples.json)
Params: make_examples
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from bertpipe import artifacts, config, make_examples, wikitext
from bertpipe.cli import run, stage_parser
from bertpipe.errors import UserError
from bertpipe.vocab import Vocab

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--corpus", required=True, help="tokenize_wikitext output folder")
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--metrics", required=True, help="metrics JSON file to write")
    args = parser.parse_args(argv)
    cfg = config.load(args.params, "make_examples")
    num_slots = make_examples.max_num_mlm_preds(cfg.max_len, cfg.mask_rate)

    corpus = wikitext.load(args.corpus)
    vocab = Vocab.load(Path(args.corpus) / "vocab.json")  # wikitext.load checked it: the ids
    valid_folder = Path(args.corpus) / artifacts.HELD_OUT
    valid = wikitext.load(valid_folder)
    if valid.vocab_sha1 != corpus.vocab_sha1:
        raise UserError(f"{valid_folder}: not encoded with the vocabulary of {args.corpus}; "
                        "rerun tokenize_wikitext")  # fmt: skip
    log.info("loaded %d sentences (%d held out) from %s", corpus.num_sentences,
             valid.num_sentences, args.corpus)  # fmt: skip
    made = []
    for where, split, held_out in ((args.corpus, corpus, False), (valid_folder, valid, True)):
        arrays = make_examples.make_examples(split, vocab, cfg, held_out)
        if len(arrays["nsp_labels"]) == 0:
            raise UserError(
                f"{where}: no sentence pair fits make_examples.max_len={cfg.max_len}; "
                f"raise max_len in {args.params} or use a corpus with shorter sentences"
            )
        made.append(arrays)
    examples, held_out = made
    log.info("made %d examples, %d held out (max_len %d, %d MLM slots each)",
             len(examples["nsp_labels"]), len(held_out["nsp_labels"]), cfg.max_len,
             num_slots)  # fmt: skip
    with artifacts.atomic_dir(args.out) as tmp:
        for folder, arrays in ((tmp, examples), (tmp / artifacts.HELD_OUT, held_out)):
            folder.mkdir(exist_ok=True)
            artifacts.EXAMPLES.save(folder, arrays, meta(arrays, corpus, vocab, cfg, num_slots))
    log.info("wrote %s", args.out)
    artifacts.write_json(args.metrics, {**summary(examples),
                                        artifacts.HELD_OUT: summary(held_out)})  # fmt: skip


def meta(examples: dict[str, np.ndarray], corpus: wikitext.Corpus, vocab: Vocab,
         cfg: config.MakeExamplesConfig, num_slots: int) -> dict[str, Any]:  # fmt: skip
    return {
        "num_examples": len(examples["nsp_labels"]),
        "max_len": cfg.max_len,
        "max_num_mlm_preds": num_slots,
        "vocab_size": corpus.vocab_size,
        "vocab_sha1": corpus.vocab_sha1,
        "pad_id": vocab.pad_id,
        "mask_id": vocab.mask_id,
        "cls_id": vocab.cls_id,
        "sep_id": vocab.sep_id,
        "id_dtype": artifacts.id_dtype(corpus.vocab_size).name,
    }


def summary(examples: dict[str, np.ndarray]) -> dict[str, Any]:
    """The metrics of one split's examples."""
    return {
        "num_examples": len(examples["nsp_labels"]),
        "nsp_positive_rate": round(float(examples["nsp_labels"].mean()), 6),
        "mean_masked_positions": round(float(examples["mlm_weights"].sum(axis=1).mean()), 6),
        "mean_valid_len": round(float(examples["valid_lens"].mean()), 6),
    }


if __name__ == "__main__":
    run(main)
