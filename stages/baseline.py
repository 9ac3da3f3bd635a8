"""The yardstick: a bag-of-words + word-overlap logistic regression on the same SNLI splits.

Trained on the train split and scored on `evaluate.split`'s rows, from the same cleaned text
make_snli encodes, so `dvc metrics show` puts its accuracy next to the fine-tuned BERT's.

Reads:  --tables (data/download_snli/: snli_1.0_{train,test,dev}.txt)
Writes: --metrics (metrics/baseline.json)
Params: baseline, evaluate (the split scored)
"""

from __future__ import annotations

import logging

import numpy as np

from bertpipe import artifacts, config, metrics, snli
from bertpipe.baseline import bow_baseline
from bertpipe.cli import run, stage_parser
from bertpipe.errors import UserError

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--tables", required=True, help="folder with snli_1.0_<split>.txt")
    parser.add_argument("--metrics", required=True, help="metrics JSON file to write")
    args = parser.parse_args(argv)
    cfg = config.load(args.params, "baseline")
    split = config.load(args.params, "evaluate").split
    files = snli.split_files(args.tables)
    if split not in files:
        raise UserError(f"{args.tables}: no '{split}' split for evaluate.split; have {list(files)}")
    train, test = snli.read_snli(files["train"]), snli.read_snli(files[split])
    fit, predicted = bow_baseline(train, test, cfg.l2, cfg.min_count)
    actual = np.asarray(test.labels, dtype=np.int64)
    report = metrics.classification_report(actual, predicted, list(snli.LABELS))
    log.info("bag-of-words baseline on %s: accuracy %.4f (%d features, %.1f s)",
             split, report["accuracy"], fit["num_features"], fit["seconds"])  # fmt: skip
    summary = {k: report[k] for k in ("accuracy", "macro_f1")}
    artifacts.write_json(args.metrics, {"split": split, **summary, **fit})


if __name__ == "__main__":
    run(main)
