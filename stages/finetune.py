"""Fine-tune the pretrained BERT on SNLI: a new 3-way head on the <cls> vector, d2l's epochs.

Reads:  --pretrained (the folder finetune.pretrained names: data/pretrain/, data/d2l_bert/<name>/
        or data/hf_bert/<name>/, see bertpipe.routes), --snli (data/make_snli/)
Writes: --out (data/finetune/model.safetensors), --metrics (metrics/finetune.json),
        --live (metrics/finetune_live/: DVCLive curves under plots/metrics/, x = step);
        the dev and test accuracies after every epoch (dev only if make_snli wrote one)
Params: finetune (the model's shape and dropout come from the checkpoint)

Speed knobs (not params): --device, --threads, --workers, --compile, --checkpoint-every. Launch with
torchrun for DDP. A killed run resumes from its last checkpoint (data/.finetune.resume/). On the
hf_bert route the thread count changes the bits, so auto keeps one count for the whole run.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from bertpipe import artifacts, batches, checkpoints, config, curves, routes, runtime
from bertpipe.cli import run, stage_parser
from bertpipe.finetune import finetune
from bertpipe.resume import Resume, fingerprint

log = logging.getLogger(__name__)


def held_out_splits(folder: str, splits: list[str]) -> dict[str, batches.Arrays]:
    """Dev (to compare configurations by) and test (d2l's figure); make_snli's dev is optional."""
    if "dev" not in splits:
        log.warning("%s has no dev split: only the test accuracy is reported", folder)
        return {"test": batches.load_snli_split(folder, "test")}
    return {s: batches.load_snli_split(folder, s) for s in ("dev", "test")}


def thread_setting(setting: str, bert_meta: dict) -> str:
    """--threads as this run uses it. On the hf_bert route a fixed count: transformers' CPU
    kernels give other bits at another thread count (README: "Same params, same model"), so
    auto keeps the count it starts with instead of following the load."""
    if not checkpoints.is_transformers(bert_meta) or setting != "auto":
        return setting
    count = str(torch.get_num_threads())
    log.info("hf_bert route: %s threads throughout (transformers' kernels give other bits "
             "at another count, so auto does not switch; --threads sets it)", count)  # fmt: skip
    return count


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument(
        "--pretrained",
        required=True,
        help="folder of the model to start from: data/pretrain, data/d2l_bert/<name> or "
        "data/hf_bert/<name>",
    )
    parser.add_argument("--snli", required=True, help="make_snli output folder")
    parser.add_argument("--out", required=True, help="output folder for model.safetensors")
    parser.add_argument("--metrics", required=True, help="metrics JSON file to write")
    parser.add_argument("--live", required=True, help="DVCLive folder for the training curves")
    runtime.add_speed_args(parser)
    args = parser.parse_args(argv)
    cfg = config.load(args.params, "finetune")
    snli_meta = batches.load_snli(args.snli)
    bert, bert_meta = routes.load_pretrained(args.pretrained)
    checkpoints.check_snli_fits(snli_meta, args.snli, bert_meta, args.pretrained)
    train = batches.load_snli_split(args.snli, "train")
    held_out = held_out_splits(args.snli, snli_meta["splits"])
    labels = snli_meta["labels"]
    threads = thread_setting(args.threads, bert_meta)
    run_params = {"finetune": dataclasses.asdict(cfg)}
    if checkpoints.is_transformers(bert_meta):  # its bits depend on these: resume at the same
        import transformers  # imported already, by routes.load_pretrained on this route

        run_params |= {"threads": threads, "transformers": transformers.__version__}
    inputs = [args.pretrained, args.snli, __file__]
    resume = Resume.beside(args.out, fingerprint(run_params, inputs), args.checkpoint_every)

    with runtime.runtime(args.device, args.workers, args.compile, distributed=True,
                         threads=threads, precision=cfg.precision) as rt:  # fmt: skip
        torch.manual_seed(cfg.seed)  # the new head's initialisation
        model = routes.new_classifier(bert, bert_meta, num_classes=len(labels))
        with curves.curves(args.live, rt) as live:
            metrics = finetune(model, train, held_out, cfg, rt, live, resume)
        if not rt.is_main:
            return
        with artifacts.atomic_dir(args.out) as out:
            header = checkpoints.classifier_meta(
                bert_meta, labels, snli_meta["max_len"], cfg.precision
            )
            checkpoints.save(out / artifacts.WEIGHTS_FILE, model, header)
        log.info("wrote %s", args.out)
    resume.clear()
    artifacts.write_json(args.metrics, metrics | {"num_train_pairs": len(train["labels"])})


if __name__ == "__main__":
    run(main)
