"""The baseline stage's seconds, peak memory and accuracy, on real or generated SNLI pairs.

    python benchmarks/baseline.py shared [--shared ../shared/data] [--snli-repeat K]
    python benchmarks/baseline.py zipf [--pairs 550000] [--words 36000] [--seed 0]

`shared`: `real_data.py`'s split of SNLI dev, its train part repeated K times (K = 1 is
README's results split; K = 80, 550,960 pairs, is SNLI's training size).
`zipf`: generated pairs whose words follow Zipf's law over a vocabulary of `--words` words
(premises of 6-20 words; hypotheses drawn from a stretch of the premise plus new words, with a
negation in some contradictions), so that the features number hundreds of thousands, as on
real SNLI, where the repeated dev rows give only tens of thousands.

Either way `stages/baseline.py` runs, with the repository's params.yaml, in a fresh process on
a download_snli folder written to a temporary folder; the script prints the stage's metrics
with its wall seconds, its peak RSS (os.wait4's ru_maxrss: the stage is one process) and the
1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import real_data  # a sibling script: Python puts this folder first on sys.path
from compare_d2l import load1

from bertpipe.synthetic import SNLI_HEADER

ROOT = Path(__file__).resolve().parent.parent
LABELS = ("entailment", "contradiction", "neutral")


def zipf_sentences(rng: np.random.Generator, words: int, lengths: np.ndarray) -> list[list[int]]:
    """Word ids (0 is the most frequent word) with P(rank r) proportional to 1/r."""
    weights = 1.0 / np.arange(1, words + 1)
    ids = rng.choice(words, size=int(lengths.sum()), p=weights / weights.sum())
    return [part.tolist() for part in np.split(ids, np.cumsum(lengths)[:-1])]


def zipf_rows(pairs: int, words: int, seed: int) -> list[str]:
    """SNLI 1.0 `.txt` lines (header first) of generated pairs; the label decides the overlap."""
    rng = np.random.default_rng(seed)
    names = [f"w{i}" for i in range(words)]
    premises = zipf_sentences(rng, words, rng.integers(6, 21, pairs))
    extra = zipf_sentences(rng, words, rng.integers(0, 4, pairs))
    labels = rng.integers(0, 3, pairs)
    lines = ["\t".join(SNLI_HEADER)]
    for premise, new, label in zip(premises, extra, labels.tolist(), strict=True):
        start = int(rng.integers(0, len(premise) - 3))
        kept = premise[start : start + int(rng.integers(2, 7))]
        # entailment keeps to the premise; neutral adds words; contradiction adds words and,
        # half the time, a negation
        hypothesis = [names[i] for i in kept + (new if label else [])]
        if label == 1 and rng.random() < 0.5:
            hypothesis.insert(1, "not")
        p, h = " ".join(names[i] for i in premise), " ".join(hypothesis)
        gold = LABELS[label]
        lines.append("\t".join([gold, p, h, p, h, p, h, "x", "x", *[gold] * 5]))
    return lines


def write_tables(args: argparse.Namespace, folder: Path) -> None:
    """A download_snli folder: snli_1.0_{train,test}.txt."""
    folder.mkdir()
    if args.data == "shared":
        members = real_data.snli_members(args.shared, args.snli_repeat)
        for split in ("train", "test"):
            (folder / f"snli_1.0_{split}.txt").write_bytes(members[f"snli_1.0_{split}.txt"])
        return
    lines = zipf_rows(args.pairs + args.pairs // 4, args.words, args.seed)
    cut = 1 + args.pairs
    (folder / "snli_1.0_train.txt").write_text("\n".join(lines[:cut]) + "\n", encoding="utf-8")
    test = [lines[0], *lines[cut:]]
    (folder / "snli_1.0_test.txt").write_text("\n".join(test) + "\n", encoding="utf-8")


def run_stage(tmp: Path) -> dict:
    """stages/baseline.py in a fresh process: its metrics, wall seconds and peak RSS."""
    metrics = tmp / "baseline.json"
    stage = ROOT / "stages" / "baseline.py"
    cmd = [sys.executable, str(stage), "--params", str(ROOT / "params.yaml"),
           "--tables", str(tmp / "tables"), "--metrics", str(metrics)]  # fmt: skip
    load = load1()
    start = time.perf_counter()
    process = subprocess.Popen(cmd)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"the baseline stage failed ({status})")
    result = json.loads(metrics.read_text(encoding="utf-8"))
    return {**result, "wall_seconds": round(seconds, 1), "peak_rss_mb": usage.ru_maxrss // 1024,
            "load_before": load, "load_after": load1()}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", choices=["shared", "zipf"])
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--snli-repeat", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=550_000, help="zipf: training pairs")
    parser.add_argument("--words", type=int, default=36_000, help="zipf: vocabulary size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bertpipe-baseline-") as tmp:
        write_tables(args, Path(tmp) / "tables")
        print(json.dumps(run_stage(Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
