"""Which thread counts give the same fine-tuned bits on the hf_bert route (transformers' kernels).

    python benchmarks/hf_thread_bits.py [--threads 1 2 2 1] [--pairs 2000] [--work /tmp/hf_bits]

Writes a Hub-layout BERT at BERT-Tiny's shape (2 blocks, 128 hidden, 2 heads, FFN 512, 512
positions; random weights, a WordPiece vocabulary trained on generated text: tests/hf_tiny.py),
generated SNLI tables, runs the real make_snli stage on them, then the real finetune stage (one
epoch, batch 64, dropout 0.1 as Google's configs have it) once per entry of --threads, each in a
fresh process, and prints the SHA-1 of each run's model.safetensors with its seconds. Equal
digests mean bit-identical weights.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hf_tiny import write_tiny_bert  # noqa: E402

from bertpipe import artifacts, synthetic  # noqa: E402

FINETUNE = {"pretrained": "hf_bert/tiny", "batch_size": 64, "lr": 1.0e-4, "num_epochs": 1,
            "seed": 0, "warmup_fraction": 0.0, "lr_schedule": "constant", "weight_decay": 0.0,
            "grad_clip": 0.0}  # fmt: skip


def prepare(work: Path, pairs: int) -> Path:
    """The model folder, params.yaml and make_snli's output under `work`; the model folder."""
    model = work / "bert_tiny_shape"
    write_tiny_bert(model, hidden=128, layers=2, heads=2, ffn=512, max_position=512)
    params = {"make_snli": {"max_len": 128}, "finetune": FINETUNE}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    tables = work / "tables"
    tables.mkdir(exist_ok=True)
    sizes = {"train": pairs, "dev": 100, "test": 100}
    for k, (split, n) in enumerate(sizes.items()):
        rows = synthetic.snli_rows(n, seed=100 * (k + 1))
        (tables / f"snli_1.0_{split}.txt").write_text("".join("\t".join(r) + "\n" for r in rows))
    params = work / "params.yaml"
    stage = [sys.executable, str(ROOT / "stages/make_snli.py"), "--params", str(params),
             "--tables", str(tables), "--pretrained", str(model), "--out", str(work / "make_snli"),
             "--metrics", str(work / "make_snli.json"), "--workers", "0"]  # fmt: skip
    subprocess.run(stage, check=True, capture_output=True)
    return model


def finetune(work: Path, model: Path, run: str, threads: int) -> tuple[str, dict]:
    out, params = work / run, work / "params.yaml"
    stage = [sys.executable, str(ROOT / "stages/finetune.py"), "--params", str(params),
             "--pretrained", str(model), "--snli", str(work / "make_snli"),
             "--out", str(out / "finetune"), "--metrics", str(out / "finetune.json"),
             "--live", str(out / "live"), "--device", "cpu", "--threads", str(threads),
             "--checkpoint-every", "0"]  # fmt: skip
    subprocess.run(stage, check=True, capture_output=True)
    metrics = json.loads((out / "finetune.json").read_text())
    return artifacts.sha1_of_file(out / "finetune" / "model.safetensors"), metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 2, 1])
    parser.add_argument("--pairs", type=int, default=2000, help="training pairs")
    parser.add_argument("--work", type=Path, default=Path("/tmp/hf_thread_bits"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    model = prepare(args.work, args.pairs)
    for i, threads in enumerate(args.threads):
        sha1, m = finetune(args.work, model, f"run{i}", threads)
        print(f"{threads} threads: {sha1[:12]}  {m['num_steps']} steps in {m['train_seconds']} s, "
              f"loss {m['loss']}, test accuracy {m['test_accuracy']}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
