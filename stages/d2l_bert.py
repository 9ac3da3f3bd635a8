"""Download one of d2l's published BERT archives and import it as a pretrained checkpoint.

d2l's `bert.small.torch.zip` / `bert.base.torch.zip` come from the first mirror whose SHA-1
matches (a download cut short is resumed by the next run, from `.<name>.partial/` beside the
output); for these two archives, `num_heads` must be the one they were trained with.
`pretrained.params` is read without running code from it (see bertpipe.d2l_bert),
the model's sizes come from the tensors' shapes, and the weights load strictly into our
BERTModel. The output is what the pretrain stage writes: a checkpoint and the vocabulary that
defines its ids (d2l's, whose special tokens sit wherever its sorted list puts them).

Reads:
Writes: --out (data/d2l_bert/<name>/: model.safetensors, vocab.json),
        --metrics (metrics/d2l_bert/<name>.json)
Params: d2l_bert.<name> (its own entry only)
"""

from __future__ import annotations

import dataclasses
import logging
import shutil

from bertpipe import artifacts, checkpoints, config, d2l_bert, download
from bertpipe.cli import run, stage_parser
from bertpipe.model import num_parameters

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--name", required=True, help="which entry of the d2l_bert params")
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--metrics", required=True, help="metrics JSON file to write")
    args = parser.parse_args(argv)
    cfg = config.load_entry(args.params, "d2l_bert", args.name)
    d2l_bert.check_heads(cfg, f"{args.params}: d2l_bert.{args.name}")
    files = dict.fromkeys((d2l_bert.PARAMS_FILE, d2l_bert.VOCAB_FILE))
    source = config.DownloadConfig(cfg.mirrors, cfg.sha1, files)

    with artifacts.atomic_dir(args.out) as out:
        # The archive is extracted into this temporary folder, which a failure or the next run
        # deletes; an interrupted download is kept beside the output instead, to be resumed.
        partials = download.partials_for(args.out)
        fetched = download.fetch(source, out / "archive", partials=partials)
        model, vocab = d2l_bert.load(out / "archive", cfg, source=fetched["mirror"])
        vocab.save(out / "vocab.json")  # our canonical bytes of d2l's list: the same ids
        header = checkpoints.bert_meta(model.cfg, len(vocab), vocab.sha1)
        checkpoints.save(out / artifacts.WEIGHTS_FILE, model, header)
        shutil.rmtree(out / "archive")
    log.info("wrote %s: d2l's BERT %s, vocabulary of %d", args.out, model.cfg, len(vocab))
    metrics = {
        "num_parameters": num_parameters(model),
        "vocab_size": len(vocab),
        "model": dataclasses.asdict(model.cfg),
        "special_ids": vocab.special_ids(),
        "archive_sha1": fetched["archive_sha1"],
        "mirror": fetched["mirror"],
    }
    artifacts.write_json(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
