"""`bertpipe predict` and `bertpipe encode` (also `python -m bertpipe ...`).

    bertpipe predict --model data/finetune/model.safetensors \\
        --vocab data/tokenize_wikitext/vocab.json "a man is sleeping ." "a person sleeps ."
    bertpipe predict --model ... --vocab ... --file pairs.tsv --format tsv > predictions.tsv
    bertpipe encode --model data/pretrain/model.safetensors \\
        --vocab data/tokenize_wikitext/vocab.json "a crane is flying"
    bertpipe encode --model ... --vocab ...           # d2l's "crane" demo

Sentences are tokenised as make_snli tokenises SNLI: brackets dropped, lower case, split on
whitespace (write punctuation as separate tokens, as SNLI's parses do). Errors are one line,
`error: ...`, with exit status 1.
"""

from __future__ import annotations

import argparse
import sys

from bertpipe import inference, runtime, use
from bertpipe.cli import run
from bertpipe.errors import UserError


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="bertpipe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser(
        "predict",
        help="SNLI label and probabilities for sentence pairs",
        description="Label (premise, hypothesis) pairs with a fine-tuned classifier.",
    )
    predict.add_argument("--model", required=True, help="classifier checkpoint (.safetensors)")
    predict.add_argument("--vocab", required=True, help="vocab.json the model was trained with")
    predict.add_argument("pair", nargs="*", metavar="PREMISE HYPOTHESIS", help="one pair")
    predict.add_argument("--file", help="pairs: .tsv (premise<TAB>hypothesis) or .jsonl")
    predict.add_argument(
        "--format", choices=["table", "tsv", "jsonl"], default="table", help="default: table"
    )
    predict.add_argument("--batch-size", type=int, default=256, help="default: %(default)s")
    predict.add_argument(
        "--max-len",
        type=int,
        help="truncate <cls> p <sep> h <sep> to this many tokens (default: the make_snli.max_len "
        "the model was fine-tuned with, recorded in its checkpoint; at most its max_position)",
    )
    predict.add_argument(
        "--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps (default: cpu)"
    )

    encode = commands.add_parser(
        "encode",
        help="contextual token vectors of a sentence or pair (d2l's get_bert_encoding)",
        description="Print BERT's vector for each token of a sentence or a sentence pair; "
        "without sentences, d2l's 'crane' demo: the word's vectors in two contexts compared.",
    )
    encode.add_argument("--model", required=True, help="a pretrain or d2l_bert checkpoint")
    encode.add_argument("--vocab", required=True, help="vocab.json the model was trained with")
    encode.add_argument("sentences", nargs="*", metavar="SENTENCE", help="one sentence or two")
    encode.add_argument("--dims", type=int, default=3, help="features shown (default: 3)")
    return top


def main(argv: list[str] | None = None) -> None:
    """The console script `bertpipe`."""
    args = parser().parse_args(argv)
    run(lambda: COMMANDS[args.command](args))


def predict(args: argparse.Namespace) -> None:
    if args.file and args.pair:
        raise UserError("give pairs on the command line or with --file, not both")
    if not args.file and len(args.pair) != 2:
        raise UserError(f"expected PREMISE HYPOTHESIS (two sentences), got {len(args.pair)}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size: expected at least 1, got {args.batch_size}")
    model, meta = use.load_classifier(args.model)
    vocab = use.load_vocab(args.vocab, meta, args.model)
    max_position = meta["model"]["max_position"]
    max_len = meta["max_len"] if args.max_len is None else args.max_len
    if not 3 <= max_len <= max_position:
        raise UserError(f"--max-len: expected 3 to {max_position} (the model's limit)")
    premises, hypotheses = (
        use.read_pairs(args.file) if args.file else ([args.pair[0]], [args.pair[1]])
    )
    pairs = use.encode_pairs(vocab, premises, hypotheses, max_len)
    rt = runtime.Runtime(runtime.pick_device(args.device), False, 0, threads=runtime.Threads())
    probs = inference.probabilities(model, pairs, args.batch_size, rt)
    rows = use.predictions(premises, hypotheses, probs, meta["labels"])
    sys.stdout.write(use.format_predictions(rows, meta["labels"], args.format))


def encode(args: argparse.Namespace) -> None:
    if len(args.sentences) > 2:
        raise UserError(f"expected one sentence or two, got {len(args.sentences)}")
    bert, meta = use.load_bert(args.model)
    vocab = use.load_vocab(args.vocab, meta, args.model)
    if not args.sentences:
        report, _ = use.crane_demo(bert, vocab, args.dims)
        sys.stdout.write(report)
        return
    encoding = use.encode(bert, vocab, *args.sentences)
    sys.stdout.write(use.format_encoding(encoding, vocab, args.dims))


COMMANDS = {"predict": predict, "encode": encode}

if __name__ == "__main__":
    main()
