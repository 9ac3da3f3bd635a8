"""Score the fine-tuned classifier on one SNLI split: accuracy, per-class P/R/F1, confusions.

Reads:  --model (data/finetune/model.safetensors), --snli (data/make_snli/)
Writes: --metrics (metrics/evaluate.json), --predictions (data/evaluate/predictions.csv:
        `actual,predicted` label names, one row per pair, for DVC's confusion plot)
Params: evaluate

Speed knobs (not params): --device, --threads, --workers.
"""

from __future__ import annotations

import logging

import numpy as np

from bertpipe import artifacts, batches, checkpoints, config, metrics, runtime
from bertpipe.cli import run, stage_parser
from bertpipe.errors import UserError
from bertpipe.evaluate import predict

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", required=True, help="finetune checkpoint (.safetensors)")
    parser.add_argument("--snli", required=True, help="make_snli output folder")
    parser.add_argument("--metrics", required=True, help="metrics JSON file to write")
    parser.add_argument("--predictions", required=True, help="CSV of actual,predicted to write")
    runtime.add_speed_args(parser, training=False)
    args = parser.parse_args(argv)
    cfg = config.load(args.params, "evaluate")
    snli_meta = batches.load_snli(args.snli)
    if cfg.split not in snli_meta["splits"]:
        raise UserError(
            f"{args.params}: evaluate.split '{cfg.split}' is not in {args.snli} "
            f"(has {', '.join(snli_meta['splits'])}); pick one of those"
        )
    model, meta = checkpoints.load_classifier(args.model)
    checkpoints.check_snli_fits(snli_meta, args.snli, meta, args.model)
    labels = meta["labels"]
    if labels != snli_meta["labels"]:
        raise UserError(f"{args.model}: labels {labels} differ from {args.snli}'s; re-run finetune")
    data = batches.load_snli_split(args.snli, cfg.split)

    with runtime.runtime(
        args.device, args.workers, "off", distributed=False, threads=args.threads
    ) as rt:
        predicted = predict(model, data, cfg.batch_size, rt)
    actual = np.asarray(data["labels"], dtype=np.int64)
    report = metrics.classification_report(actual, predicted, labels)
    log.info("%s: accuracy %.4f, macro-F1 %.4f on %d pairs",
             cfg.split, report["accuracy"], report["macro_f1"], len(actual))  # fmt: skip

    names = np.asarray(labels)
    rows = [f"{a},{p}" for a, p in zip(names[actual], names[predicted], strict=True)]
    artifacts.atomic_write_bytes(
        args.predictions, "\n".join(["actual,predicted", *rows, ""]).encode()
    )
    report["num_pairs"] = report.pop("examples")
    artifacts.write_json(args.metrics, {"split": cfg.split, **report, **rt.knobs()})


if __name__ == "__main__":
    run(main)
