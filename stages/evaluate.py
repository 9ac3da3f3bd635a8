"""Score the fine-tuned classifier on one SNLI split: accuracy, per-class P/R/F1, confusions.

Reads:  --model (data/finetune/model.safetensors), --snli (data/make_snli/)
Writes: --metrics (metrics/evaluate.json), --predictions (data/evaluate/predictions.csv:
        `actual,predicted` label names, one row per pair, for DVC's confusion plot)
Params: evaluate

Speed knobs (not params): --device, --threads, --workers.
"""

from __future__ import annotations

import logging

from bertpipe import artifacts, checkpoints, config, runtime
from bertpipe.cli import run, stage_parser
from bertpipe.evaluate import evaluate, load

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
    model, data, meta = load(args.model, args.snli, cfg.split, args.params)

    precision = checkpoints.precision(meta)  # the one it was fine-tuned in
    with runtime.runtime(args.device, args.workers, "off", distributed=False,
                         threads=args.threads, precision=precision) as rt:  # fmt: skip
        report, predictions = evaluate(model, data, meta["labels"], cfg.batch_size, rt)
    log.info("%s: accuracy %.4f, macro-F1 %.4f on %d pairs",
             cfg.split, report["accuracy"], report["macro_f1"], report["num_pairs"])  # fmt: skip
    artifacts.atomic_write_bytes(args.predictions, predictions.encode())
    artifacts.write_json(args.metrics, {"split": cfg.split, **report, **rt.knobs()})


if __name__ == "__main__":
    run(main)
