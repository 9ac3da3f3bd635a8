"""Import d2l's published BERT weights as a pretrained checkpoint of this pipeline.

Reads `pretrained.params` without running code from it (see bertpipe.d2l_bert), infers the
model's sizes from the tensors' shapes, loads them strictly into our BERTModel and writes the
same kind of checkpoint as the pretrain stage, next to the vocabulary that defines its ids.

Reads:  --weights (data/download_bert/: pretrained.params, vocab.json)
Writes: --out (data/import_bert/: model.safetensors, vocab.json),
        --metrics (metrics/import_bert.json)
Params: import_bert (num_heads and dropout; every size comes from the weights)
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from bertpipe import artifacts, config, d2l_bert, training
from bertpipe.cli import run, stage_parser
from bertpipe.model import num_parameters

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--weights", required=True, help="folder with d2l's two files")
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--metrics", required=True, help="metrics JSON file to write")
    args = parser.parse_args(argv)
    cfg = config.load(args.params, "import_bert")

    model, vocab = d2l_bert.load(args.weights, cfg)
    sources = {
        name: artifacts.sha1_of_file(Path(args.weights) / name)
        for name in (d2l_bert.PARAMS_FILE, d2l_bert.VOCAB_FILE)
    }
    with artifacts.atomic_dir(args.out) as out:
        vocab.save(out / "vocab.json")  # our canonical bytes; vocab.sha1 is theirs now
        # training.bert_meta: the same checkpoint meta as the pretrain stage's
        meta = training.bert_meta(model.cfg, len(vocab), vocab.sha1)
        meta["imported_from"] = {"format": "d2l", "sha1": sources}
        artifacts.save_checkpoint(out / "model.safetensors", model.state_dict(), meta)
    log.info("wrote %s: d2l BERT %s, vocabulary of %d", args.out, model.cfg, len(vocab))

    metrics = {
        "num_parameters": num_parameters(model),
        "vocab_size": len(vocab),
        "model": dataclasses.asdict(model.cfg),
        "special_ids": vocab.special_ids(),
        "source_sha1": sources,
    }
    artifacts.write_json(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
