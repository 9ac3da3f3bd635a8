"""Turn SNLI's train/test (and dev, if present) files into compact token-id arrays for fine-tuning.

Reads:  data/download_snli/snli_1.0_{train,test,dev}.txt, data/tokenize_wikitext/vocab.json
Writes: data/make_snli/{meta.json, <split>/}, metrics/make_snli.json
Params: make_snli
"""

from __future__ import annotations

import logging
import os

import numpy as np

from bertpipe import artifacts, config, snli
from bertpipe.cli import run, stage_parser
from bertpipe.vocab import Vocab

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--snli", required=True, help="folder with snli_1.0_<split>.txt")
    parser.add_argument("--vocab", required=True, help="vocab.json of the pretraining vocabulary")
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--metrics", required=True, help="metrics JSON file")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.environ.get("BERTPIPE_WORKERS") or os.cpu_count() or 1,
        help="worker processes (default: $BERTPIPE_WORKERS, else the CPU count: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers (or $BERTPIPE_WORKERS): expected at least 1, got {args.workers}")
    cfg = config.load(args.params, "make_snli")

    files = snli.split_files(args.snli)
    vocab = Vocab.load(args.vocab)
    encoder = snli.PairEncoder(
        token_to_id={t: i for i, t in enumerate(vocab.tokens)},
        max_len=cfg.max_len,
        dtype=artifacts.id_dtype(len(vocab)),
        unk_id=vocab.unk_id,
        cls_id=vocab.cls_id,
        sep_id=vocab.sep_id,
    )

    metrics: dict = {"workers": args.workers}
    with artifacts.atomic_dir(args.out) as out:
        for split, path in files.items():
            pairs = snli.read_snli(path)
            encoded = snli.encode_pairs(
                encoder, pairs.premises, pairs.hypotheses, args.workers, desc=f"encode {split}"
            )
            (out / split).mkdir()
            artifacts.save_arrays(out / split, {**encoded.arrays(), "labels": pairs.labels})
            counts = {
                "dropped_no_label": pairs.dropped_no_label,
                "truncated": encoded.truncated,
                "label_counts": pairs.label_counts(),
            }
            max_valid_len = int(np.diff(encoded.offsets).max())
            meta = {"num_pairs": len(pairs.labels), **counts, "max_valid_len": max_valid_len}
            artifacts.write_json(out / split / "meta.json", meta)
            metrics[split] = {"pairs": len(pairs.labels), **counts}
        artifacts.write_json(
            out / "meta.json",
            {
                "vocab_size": len(vocab),
                "vocab_sha1": vocab.sha1,
                "max_len": cfg.max_len,
                "splits": list(files),
                "labels": list(snli.LABELS),
                "id_dtype": encoder.dtype.name,
                **vocab.special_ids(),  # pad_id pads batches; d2l's vocabularies move it
            },
        )
    log.info("wrote %s (splits: %s)", args.out, ", ".join(files))
    artifacts.write_json(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
