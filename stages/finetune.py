"""Fine-tune the pretrained BERT on SNLI: a new 3-way head on the <cls> vector, d2l's epochs.

Reads:  --pretrained (data/pretrain/model.safetensors), --snli (data/make_snli/)
Writes: --out (data/finetune/model.safetensors), --metrics (metrics/finetune.json),
        --live (metrics/finetune_live/: DVCLive curves under plots/metrics/, x = step)
Params: finetune (the model's shape and dropout come from the checkpoint)

Speed knobs (not params): --device, --workers, --compile. Launch with torchrun for DDP.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from bertpipe import artifacts, config, training
from bertpipe.cli import run, stage_parser
from bertpipe.model import BERTClassifier

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--pretrained", required=True, help="pretrain checkpoint (.safetensors)")
    parser.add_argument("--snli", required=True, help="make_snli output folder")
    parser.add_argument("--out", required=True, help="output folder for model.safetensors")
    parser.add_argument("--metrics", required=True, help="metrics JSON file to write")
    parser.add_argument("--live", required=True, help="DVCLive folder for the training curves")
    training.add_speed_args(parser)
    args = parser.parse_args(argv)
    cfg = config.load(args.params, "finetune")
    snli_meta = training.read_meta(Path(args.snli) / "meta.json")
    bert, bert_meta = training.load_bert(args.pretrained)
    training.check_snli_fits(snli_meta, args.snli, bert_meta, args.pretrained)
    train = training.load_snli_split(args.snli, "train")
    test = training.load_snli_split(args.snli, "test")
    labels = snli_meta["labels"]

    with training.runtime(args.device, args.workers, args.compile, distributed=True) as rt:
        torch.manual_seed(cfg.seed)  # the new head's initialisation
        model = BERTClassifier(bert, num_classes=len(labels))
        with training.curves(args.live, rt) as live:
            metrics = training.finetune(model, train, test, cfg, rt, live)
        if not rt.is_main:
            return
        with artifacts.atomic_dir(args.out) as out:
            meta = training.classifier_meta(bert_meta, labels)
            artifacts.save_checkpoint(Path(out) / "model.safetensors", model.state_dict(), meta)
        log.info("wrote %s", args.out)
    artifacts.write_json(args.metrics, metrics | {"train_pairs": len(train["labels"])})


if __name__ == "__main__":
    run(main)
