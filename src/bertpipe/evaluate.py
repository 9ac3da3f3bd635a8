"""The evaluate stage's logic: the fine-tuned classifier scored on one make_snli split.

`load` refuses a checkpoint and an SNLI folder that do not belong together (another vocabulary,
pairs longer than its positions, other labels) and a split the folder does not have. `evaluate`
predicts every pair (`inference.predict`) and returns the classification report with the rows
of DVC's confusion plot: `actual,predicted` label names, one per pair, in the split's order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from bertpipe import batches, checkpoints, metrics, routes
from bertpipe.batches import Arrays
from bertpipe.errors import UserError
from bertpipe.inference import predict
from bertpipe.runtime import Runtime


def load(
    model_path: str | Path, snli_path: str | Path, split: str, params_path: str | Path
) -> tuple[nn.Module, Arrays, dict[str, Any]]:
    """The classifier (CPU), the split's arrays and the checkpoint's meta (its label names, its
    precision), checked against each other.

    `params_path` names the file that chose `split`, for the error that says it is missing."""
    snli_meta = batches.load_snli(snli_path)
    if split not in snli_meta["splits"]:
        raise UserError(
            f"{params_path}: evaluate.split '{split}' is not in {snli_path} "
            f"(has {', '.join(snli_meta['splits'])}); pick one of those"
        )
    model, meta = routes.load_classifier(model_path)
    checkpoints.check_snli_fits(snli_meta, snli_path, meta, model_path)
    if meta["labels"] != snli_meta["labels"]:
        raise UserError(
            f"{model_path}: labels {meta['labels']} differ from {snli_path}'s; re-run finetune"
        )
    return model, batches.load_snli_split(snli_path, split), meta


def evaluate(
    model: nn.Module, data: Arrays, labels: list[str], batch_size: int, rt: Runtime
) -> tuple[dict[str, Any], str]:
    """(classification report with `num_pairs`, the predictions CSV with its header line)."""
    predicted = predict(model, data, batch_size, rt)  # (N,)
    actual = np.asarray(data["labels"], dtype=np.int64)  # (N,)
    report = metrics.classification_report(actual, predicted, labels)
    report["num_pairs"] = report.pop("examples")
    names = np.asarray(labels)
    rows = [f"{a},{p}" for a, p in zip(names[actual], names[predicted], strict=True)]
    return report, "\n".join(["actual,predicted", *rows, ""])
