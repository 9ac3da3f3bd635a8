"""Read a WikiText .tokens file with d2l's rules, build the vocabulary and store the ids; encode
the held-out split with that vocabulary.

Reads:  --tokens (data/download_wikitext/wiki.train.tokens),
        --valid (data/download_wikitext/wiki.valid.tokens)
Writes: --out (data/tokenize_wikitext/: vocab.json, token_ids.npy, sentence_offsets.npy,
        paragraph_offsets.npy, meta.json; valid/: the held-out split in the same files, its ids
        from the same vocabulary), --metrics (metrics/tokenize_wikitext.json)
Params: tokenize_wikitext

Speed knob (not a param): --workers.
"""

from __future__ import annotations

import logging
from typing import Any

from bertpipe import artifacts, config, wikitext
from bertpipe.cli import add_workers_arg, processes, run, stage_parser
from bertpipe.vocab import Vocab

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--tokens", required=True, help="WikiText .tokens file to read")
    parser.add_argument("--valid", required=True, help="held-out WikiText .tokens file")
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
    # the held-out text in the training vocabulary: its words the training text lacks are <unk>
    valid = wikitext.encode(wikitext.read_paragraphs(args.valid), vocab)
    log.info("read %d held-out sentences from %s", valid.num_sentences, args.valid)
    with artifacts.atomic_dir(args.out) as tmp:
        wikitext.save(tmp, corpus, vocab)
        wikitext.save(tmp / artifacts.HELD_OUT, valid, vocab)
    log.info("wrote %d token ids (and %d held-out) to %s", corpus.num_tokens, valid.num_tokens,
             args.out)  # fmt: skip

    metrics = {
        **counts(corpus, vocab),
        "vocab_size": len(vocab),
        "workers": workers,
        artifacts.HELD_OUT: counts(valid, vocab),
    }
    artifacts.write_json(args.metrics, metrics)


def counts(corpus: wikitext.Corpus, vocab: Vocab) -> dict[str, Any]:
    """A corpus's paragraphs, sentences, tokens and share of <unk> tokens."""
    unk_rate = float((corpus.token_ids == vocab.unk_id).mean()) if corpus.num_tokens else 0.0
    return {
        "num_paragraphs": corpus.num_paragraphs,
        "num_sentences": corpus.num_sentences,
        "num_tokens": corpus.num_tokens,
        "unk_rate": round(unk_rate, 6),
    }


if __name__ == "__main__":
    run(main)
