"""Turn SNLI's train/test (and dev, if present) files into compact token-id arrays for fine-tuning.

The ids are those of the model fine-tuning starts from, as its folder says: with a vocab.json
(pretrain, d2l_bert), d2l's cleaned, lower-cased binary parses in that vocabulary; with a
tokenizer.json (hf_bert), the raw sentences through that tokenizer.

Reads:  --tables (data/download_snli/: snli_1.0_{train,test,dev}.txt),
        --pretrained (data/pretrain/, or data/d2l_bert/<name>/ or data/hf_bert/<name>/ as
        finetune.pretrained says: the folder of the model fine-tuning starts from)
Writes: --out (data/make_snli/: meta.json, one folder of arrays per split),
        --metrics (metrics/make_snli.json)
Params: make_snli

Speed knob (not a param): --workers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bertpipe import artifacts, config, hf_bert, snli
from bertpipe.cli import add_workers_arg, processes, run, stage_parser
from bertpipe.errors import UserError
from bertpipe.vocab import Vocab

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--tables", required=True, help="folder with snli_1.0_<split>.txt")
    parser.add_argument("--pretrained", required=True, help="folder of the pretrained model")
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--metrics", required=True, help="metrics JSON file")
    add_workers_arg(parser, "encode the pairs")
    args = parser.parse_args(argv)
    workers = processes(parser, args.workers)
    cfg = config.load(args.params, "make_snli")

    files = snli.split_files(args.tables)
    encoder, vocab_meta = encoder_for(Path(args.pretrained), cfg.max_len)
    raw = isinstance(encoder, snli.TokenizerPairEncoder)  # the tokenizer normalises the text

    metrics: dict = {"workers": workers}
    with artifacts.atomic_dir(args.out) as out:
        for split, path in files.items():
            pairs = snli.read_snli(path, raw=raw)
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
            **vocab_meta,
            "max_len": cfg.max_len,
            "splits": list(files),
            "labels": list(snli.LABELS),
            "id_dtype": encoder.dtype.name,
        }
        artifacts.SNLI.save(out, {}, meta)
    log.info("wrote %s (splits: %s)", args.out, ", ".join(files))
    artifacts.write_json(args.metrics, metrics)


def encoder_for(
    folder: Path, max_len: int
) -> tuple[snli.PairEncoder | snli.TokenizerPairEncoder, dict]:
    """The encoder for the ids of the model in `folder`, and the facts of its vocabulary."""
    if (folder / "vocab.json").is_file():
        vocab = Vocab.load(folder / "vocab.json")
        meta = {"vocab_size": len(vocab), "vocab_sha1": vocab.sha1, **vocab.special_ids()}
        return snli.PairEncoder.of(vocab, max_len), meta  # specials wherever vocab puts them
    if (folder / hf_bert.TOKENIZER_FILE).is_file():
        tokenizer = hf_bert.load_tokenizer(folder)
        encoder = snli.TokenizerPairEncoder.of(tokenizer, max_len)
        sha1 = hf_bert.tokenizer_sha1(folder)
        meta = {"vocab_size": len(tokenizer), "vocab_sha1": sha1, **hf_bert.special_ids(tokenizer)}
        return encoder, meta
    raise UserError(
        f"{folder}: neither vocab.json nor {hf_bert.TOKENIZER_FILE} here: not the folder of a "
        "pretrained model (dvc repro the stage that writes it)"
    )


if __name__ == "__main__":
    run(main)
