"""Make BERT pretraining examples: NSP pairs, MLM masking (80/10/10), padding; seeded.

Reads:  --corpus (data/tokenize_wikitext/)
Writes: --out (data/make_examples/: token_ids.npy, segments.npy, valid_lens.npy,
        pred_positions.npy, mlm_labels.npy, mlm_weights.npy, nsp_labels.npy, meta.json),
        --metrics (metrics/make_examples.json)
Params: make_examples
"""

from __future__ import annotations

import logging
from pathlib import Path

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
    log.info("loaded %d sentences from %s", corpus.num_sentences, args.corpus)
    examples = make_examples.make_examples(corpus, vocab, cfg)
    n = len(examples["nsp_labels"])
    if n == 0:
        raise UserError(
            f"{args.corpus}: no sentence pair fits make_examples.max_len={cfg.max_len}; "
            f"raise max_len in {args.params} or use a corpus with shorter sentences"
        )
    log.info("made %d examples (max_len %d, %d MLM slots each)", n, cfg.max_len, num_slots)
    meta = {
        "num_examples": n,
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
    with artifacts.atomic_dir(args.out) as tmp:
        artifacts.EXAMPLES.save(tmp, examples, meta)
    log.info("wrote %s", args.out)

    metrics = {
        "num_examples": n,
        "nsp_positive_rate": round(float(examples["nsp_labels"].mean()), 6),
        "mean_masked_positions": round(float(examples["mlm_weights"].sum(axis=1).mean()), 6),
        "mean_valid_len": round(float(examples["valid_lens"].mean()), 6),
    }
    artifacts.write_json(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
