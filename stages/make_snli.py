"""Turn SNLI's train/test (and dev, if present) files into compact token-id arrays for fine-tuning.

Reads:  --tables (data/download_snli/: snli_1.0_{train,test,dev}.txt),
        --vocab (data/pretrain/vocab.json, or data/d2l_bert/<name>/ as finetune.pretrained
        says: the vocabulary of the model fine-tuning starts from)
Writes: --out (data/make_snli/: meta.json, one folder of arrays per split),
        --metrics (metrics/make_snli.json)
Params: make_snli

Speed knob (not a param): --workers.
"""

from __future__ import annotations

import logging

import numpy as np

from bertpipe import artifacts, config, snli
from bertpipe.cli import add_workers_arg, processes, run, stage_parser
from bertpipe.vocab import Vocab

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--tables", required=True, help="folder with snli_1.0_<split>.txt")
    parser.add_argument("--vocab", required=True, help="vocab.json of the pretraining vocabulary")
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--metrics", required=True, help="metrics JSON file")
    add_workers_arg(parser, "encode the pairs")
    args = parser.parse_args(argv)
    workers = processes(parser, args.workers)
    cfg = config.load(args.params, "make_snli")

    files = snli.split_files(args.tables)
    vocab = Vocab.load(args.vocab)
    encoder = snli.PairEncoder.of(vocab, cfg.max_len)

    metrics: dict = {"workers": workers}
    with artifacts.atomic_dir(args.out) as out:
        for split, path in files.items():
            pairs = snli.read_snli(path)
            encoded = snli.encode_pairs(
                encoder, pairs.premises, pairs.hypotheses, workers, desc=f"encode {split}"
            )
            counts = {
                "dropped_no_label": pairs.dropped_no_label,
                "dropped_unknown_label": pairs.dropped_unknown_label,
                "blank_lines": pairs.blank_lines,
                "truncated": encoded.truncated,
                "label_counts": pairs.label_counts(),
            }
            meta = {
                "num_pairs": len(pairs.labels),
                **counts,
                "max_valid_len": int(np.diff(encoded.offsets).max()),
            }
            (out / split).mkdir()
            arrays = {**encoded.arrays(), "labels": pairs.labels}
            artifacts.SNLI_SPLIT.save(out / split, arrays, meta, encoder.dtype.name)
            metrics[split] = {"num_pairs": len(pairs.labels), **counts}
        meta = {
            "vocab_size": len(vocab),
            "vocab_sha1": vocab.sha1,
            "max_len": cfg.max_len,
            "splits": list(files),
            "labels": list(snli.LABELS),
            "id_dtype": encoder.dtype.name,
            **vocab.special_ids(),  # where this vocabulary puts them (d2l's moves them)
        }
        artifacts.SNLI.save(out, {}, meta)
    log.info("wrote %s (splits: %s)", args.out, ", ".join(files))
    artifacts.write_json(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
