"""`bertpipe predict`, `bertpipe encode` and `bertpipe fill-mask` (also `python -m bertpipe ...`).

    bertpipe predict --model data/finetune/model.safetensors \\
        --vocab data/pretrain/vocab.json "a man is sleeping ." "a person sleeps ."
    bertpipe predict --model ... --vocab ... --file pairs.tsv --format tsv > predictions.tsv
    bertpipe predict --model data/finetune/model.safetensors --vocab data/hf_bert/<name> ...
    bertpipe encode --model data/pretrain "a crane is flying"
    bertpipe encode --model data/hf_bert/<name>       # d2l's "crane" demo
    bertpipe fill-mask --model data/hf_bert/<name> "who was jim henson ? jim [MASK] was a puppeteer"
    bertpipe fill-mask --model data/pretrain --top-k 10

On this pipeline's and d2l's models sentences are tokenised as make_snli tokenises SNLI:
brackets dropped, lower case, split on whitespace (write punctuation as separate tokens, as
SNLI's parses do). On a model of the hf_bert route (a Hub BERT) its own tokenizer reads the raw
text. Errors are one line, `error: ...`, with exit status 1.
"""

from __future__ import annotations

import argparse
import functools
import sys

from bertpipe import checkpoints, hf_bert, inference, runtime, use
from bertpipe.cli import run
from bertpipe.errors import UserError

MODEL_HELP = (
    "the pretrained model: a folder (data/pretrain, data/d2l_bert/<name>, data/hf_bert/<name>) "
    "or a pretrain/d2l_bert checkpoint (.safetensors)"
)
VOCAB_HELP = "vocab.json the model was trained with (default: the one beside it; not for hf_bert)"


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
    predict.add_argument(
        "--vocab",
        required=True,
        help="vocab.json the model was trained with, or for a model fine-tuned on the hf_bert "
        "route the data/hf_bert/<name> folder it started from (its tokenizer)",
    )
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
        "the model was fine-tuned with, recorded in its checkpoint; at most its positions)",
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
    encode.add_argument("--model", required=True, help=MODEL_HELP)
    encode.add_argument("--vocab", help=VOCAB_HELP)
    encode.add_argument("sentences", nargs="*", metavar="SENTENCE", help="one sentence or two")
    encode.add_argument("--dims", type=int, default=3, help="features shown (default: 3)")

    fill = commands.add_parser(
        "fill-mask",
        help="the MLM head's top tokens for each [MASK] of a sentence",
        description="Print the most probable tokens, with their probabilities, at each masked "
        "position of a sentence (write the mask as [MASK] or <mask>: either works on every "
        "model), from the MLM head of a Hub BERT (weights of BertForMaskedLM or "
        "BertForPreTraining), this pipeline's pretrained model or d2l's. Without a sentence: "
        f"{use.JIM_HENSON!r}.",
    )
    fill.add_argument("--model", required=True, help=MODEL_HELP)
    fill.add_argument("--vocab", help=VOCAB_HELP)
    fill.add_argument(
        "sentence",
        nargs="?",
        default=use.JIM_HENSON,
        metavar="SENTENCE",
        help="with [MASK] (or <mask>) where a word is to be guessed; several masks are guessed "
        "each on its own (default: the Jim Henson one)",
    )
    fill.add_argument("--top-k", type=int, default=5, help="tokens shown per mask (default: 5)")
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
    ids = use.load_ids(args.vocab, meta, args.model)
    max_position = checkpoints.max_position(meta)
    max_len = meta["max_len"] if args.max_len is None else args.max_len
    if not 3 <= max_len <= max_position:
        raise UserError(f"--max-len: expected 3 to {max_position} (the model's limit)")
    premises, hypotheses = (
        use.read_pairs(args.file) if args.file else ([args.pair[0]], [args.pair[1]])
    )
    pairs = use.encode_pairs(ids, premises, hypotheses, max_len)
    device = runtime.pick_device(args.device)  # in the precision it was fine-tuned in:
    rt = runtime.Runtime(device, False, 0, threads=runtime.Threads(),
                         precision=checkpoints.precision(meta))  # fmt: skip
    probs = inference.probabilities(model, pairs, args.batch_size, rt)
    rows = use.predictions(premises, hypotheses, probs, meta["labels"])
    sys.stdout.write(use.format_predictions(rows, meta["labels"], args.format))


def encode(args: argparse.Namespace) -> None:
    if len(args.sentences) > 2:
        raise UserError(f"expected one sentence or two, got {len(args.sentences)}")
    model, vocab = use.pretrained_paths(args.model, args.vocab)
    if vocab is None:  # the hf_bert route: transformers is imported here, on it only
        from bertpipe import hf_model

        bert, tokenizer = hf_model.load_bert(model, pooler=False)[0], hf_bert.load_tokenizer(model)
        encoder = functools.partial(use.encode_hf, bert, tokenizer)
    else:
        bert, meta = use.load_bert(model)
        encoder = functools.partial(use.encode, bert, use.load_vocab(vocab, meta, model))
    if not args.sentences:
        report, _ = use.crane_demo(encoder, args.dims)
        sys.stdout.write(report)
        return
    sys.stdout.write(use.format_encoding(encoder(*args.sentences), args.dims))


def fill_mask(args: argparse.Namespace) -> None:
    if args.top_k < 1:
        raise UserError(f"--top-k: expected at least 1, got {args.top_k}")
    model, vocab = use.pretrained_paths(args.model, args.vocab)
    if vocab is None:  # the hf_bert route: transformers is imported here, on it only
        from bertpipe import hf_model

        mlm, tokenizer = hf_model.load_mlm(model), hf_bert.load_tokenizer(model)
        filled = use.fill_mask_hf(mlm, tokenizer, args.sentence, args.top_k)
    else:
        bert, meta = use.load_bert(model)
        filled = use.fill_mask(bert, use.load_vocab(vocab, meta, model), args.sentence, args.top_k)
    sys.stdout.write(use.format_filled(filled))


COMMANDS = {"predict": predict, "encode": encode, "fill-mask": fill_mask}

if __name__ == "__main__":
    main()
