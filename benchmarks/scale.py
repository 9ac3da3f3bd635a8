"""How our data stages' time and peak memory grow with corpus size and SNLI size.

    python benchmarks/scale.py [--shared ../shared/data] [--wiki-repeats 1 5 20]
        [--snli-rows 25000 100000 400000] [--budget-gib 24] [--json OUT]

WikiText at each size is (wiki.valid.tokens + wiki.test.tokens) x repeat; SNLI is the dev rows
cycled to the given row count. Each point runs `ours.py examples` (tokenize_wikitext +
make_examples: read, tokenise, vocabulary, NSP, MLM, pad) or `ours.py snli` (make_snli's work)
in a fresh process, once with the stages' default worker count (time) and once with one worker
(peak memory: then every byte lives in the one process that getrusage measures; with more
workers the same data is split between processes that run at the same time).

The largest corpus that fits in --budget-gib is extrapolated from a least-squares line through
the one-worker peak RSS against the number of corpus tokens (the points are close to a line:
memory is a fixed start-up cost plus bytes per token).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import real_data  # a sibling script: Python puts this folder first on sys.path
from compare_d2l import load1, run_json, wait_quiet

HERE = Path(__file__).resolve().parent
# WikiText-2's published token counts: train 2,088,628; valid 217,646 + test 245,569
TRAIN_PER_VALID_TEST = 2_088_628 / (217_646 + 245_569)


def line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line through the points."""
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(intercept), float(slope)


def measure(args: argparse.Namespace, tmp: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())}
    ours = [sys.executable, str(HERE / "ours.py")]
    results: dict = {"wiki": [], "snli": []}
    vocab = tmp / "vocab.json"
    for repeat in args.wiki_repeats:
        wiki = tmp / f"wiki{repeat}.tokens"
        wiki.write_bytes(real_data.wiki_valid_and_test(args.shared) * repeat)
        if repeat == args.wiki_repeats[0]:
            run_json([*ours, "vocab", "--wiki", str(wiki), "--out", str(vocab)], env)
        fast = run_json([*ours, "examples", "--wiki", str(wiki)], env)
        lean = run_json([*ours, "examples", "--wiki", str(wiki), "--workers", "1"], env)
        results["wiki"].append({"repeat": repeat, "file_mb": round(wiki.stat().st_size / 2**20, 1),
                                "fast": fast, "one_worker": lean})  # fmt: skip
        print(f"wiki x{repeat}: {fast['seconds']} s, {lean['peak_rss_mb']} MB", file=sys.stderr)
        wiki.unlink()
    header, *rows = (args.shared / "snli_1.0" / "snli_1.0_dev.txt").read_bytes().splitlines(True)
    for n in args.snli_rows:
        snli = tmp / f"snli{n}.txt"
        snli.write_bytes(header + b"".join(rows[i % len(rows)] for i in range(n)))
        cmd = [*ours, "snli", "--snli-file", str(snli), "--vocab", str(vocab)]
        fast, lean = run_json(cmd, env), run_json([*cmd, "--workers", "1"], env)
        results["snli"].append({"rows": n, "file_mb": round(snli.stat().st_size / 2**20, 1),
                                "fast": fast, "one_worker": lean})  # fmt: skip
        print(f"snli {n}: {fast['seconds']} s, {lean['peak_rss_mb']} MB", file=sys.stderr)
        snli.unlink()
    return results


def report(results: dict, budget_gib: float) -> dict:
    wiki, snli = results["wiki"], results["snli"]
    tokens = [w["one_worker"]["tokens"] for w in wiki]
    base, per_token = line(tokens, [w["one_worker"]["peak_rss_mb"] for w in wiki])
    _, sec_per_token = line(tokens, [w["fast"]["seconds"] for w in wiki])
    max_tokens = (budget_gib * 1024 - base) / per_token
    pairs = [s["one_worker"]["pairs"] for s in snli]
    snli_base, per_pair = line(pairs, [s["one_worker"]["peak_rss_mb"] for s in snli])
    _, sec_per_pair = line(pairs, [s["fast"]["seconds"] for s in snli])
    fit = {
        "examples_rss_mb": f"{base:.0f} + {per_token * 1e6:.1f} per million tokens",
        "examples_seconds_per_million_tokens": round(sec_per_token * 1e6, 3),
        "largest_corpus_tokens": int(max_tokens),
        "largest_corpus_x_wikitext2_train": round(
            max_tokens / (tokens[0] / wiki[0]["repeat"]) / TRAIN_PER_VALID_TEST, 1
        ),
        "snli_rss_mb": f"{snli_base:.0f} + {per_pair * 1e5:.1f} per 100k pairs",
        "snli_seconds_per_100k_pairs": round(sec_per_pair * 1e5, 3),
        "largest_snli_pairs": int((budget_gib * 1024 - snli_base) / per_pair),
        "budget_gib": budget_gib,
    }
    print("| corpus | file MB | tokens | examples | seconds | seconds, 1 worker | "
          "peak RSS MB, 1 worker |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for w in wiki:
        f, o = w["fast"], w["one_worker"]
        print(
            f"| valid+test x{w['repeat']} | {w['file_mb']} | {o['tokens']:,} | "
            f"{o['examples']:,} | {f['seconds']} | {o['seconds']} | {o['peak_rss_mb']} |"
        )
    print("\n| SNLI rows | file MB | pairs | seconds | seconds, 1 worker | peak RSS MB, 1 worker |"
          "\n|---|---|---|---|---|---|")  # fmt: skip
    for s in snli:
        f, o = s["fast"], s["one_worker"]
        print(
            f"| {s['rows']:,} | {s['file_mb']} | {o['pairs']:,} | {f['seconds']} | "
            f"{o['seconds']} | {o['peak_rss_mb']} |"
        )
    print(json.dumps(fit, indent=2))
    return fit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--wiki-repeats", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--snli-rows", type=int, nargs="+", default=[25_000, 100_000, 400_000])
    parser.add_argument("--budget-gib", type=float, default=24.0)
    parser.add_argument("--quiet", type=float, default=0.7, help="load average to wait for")
    parser.add_argument("--wait-max", type=float, default=600, help="seconds to wait at most")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    load = wait_quiet(args.quiet, args.wait_max)
    with tempfile.TemporaryDirectory(prefix="bertpipe-scale-") as tmp:
        results = measure(args, Path(tmp))
    fit = report(results, args.budget_gib)
    print(f"load average: {load:.2f} at the start, {load1():.2f} at the end")
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "fit": fit}, indent=2) + "\n")


if __name__ == "__main__":
    main()
