"""Read a WikiText .tokens file with d2l's rules, build the vocabulary and store the ids.

Reads:  --tokens (data/download_wikitext/wiki.train.tokens)
Writes: --out (data/tokenize_wikitext/: vocab.json, token_ids.npy, sentence_offsets.npy,
        paragraph_offsets.npy, meta.json), --metrics (metrics/tokenize_wikitext.json)
Params: tokenize_wikitext

Speed knob (not a param): --workers.
"""

from __future__ import annotations

import logging

from bertpipe import artifacts, config, wikitext
from bertpipe.cli import add_workers_arg, processes, run, stage_parser

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--tokens", required=True, help="WikiText .tokens file to read")
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--metrics", required=True, help="metrics JSON file to write")
    add_workers_arg(parser, "split the text")
    args = parser.parse_args(argv)
    workers = processes(parser, args.workers)
    cfg = config.load(args.params, "tokenize_wikitext")

    corpus, vocab = wikitext.tokenize(args.tokens, cfg.min_freq, workers)
    log.info(
        "read %d paragraphs, %d sentences from %s; vocabulary: %d tokens (min_freq %d)",
        corpus.num_paragraphs,
        corpus.num_sentences,
        args.tokens,
        len(vocab),
        cfg.min_freq,
    )
    with artifacts.atomic_dir(args.out) as tmp:
        wikitext.save(tmp, corpus, vocab)
    log.info("wrote %d token ids to %s", corpus.num_tokens, args.out)

    unk_rate = float((corpus.token_ids == vocab.unk_id).mean()) if corpus.num_tokens else 0.0
    metrics = {
        "num_paragraphs": corpus.num_paragraphs,
        "num_sentences": corpus.num_sentences,
        "num_tokens": corpus.num_tokens,
        "vocab_size": len(vocab),
        "unk_rate": round(unk_rate, 6),
        "workers": workers,
    }
    artifacts.write_json(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
