"""fp32 against bf16 on this machine: matmul peaks and training speed, measured alternately.

    python benchmarks/bf16.py [--shared ../shared/data] [--steps 5] [--repeats 3]
        [--threads 2] [--d2l] [--json OUT]

- the CPU model, whether it has native bf16 matmuls (`runtime.native_bf16`) and the load average;
- matmul GFLOP/s in fp32 and bf16 (`ours.py matmul`, best of 10) at issue 17's four shapes: 2048³
  (the peak MFU is measured against), 23,000 × 128 × 128 (d2l's projections), 23,000 × 128 × 256
  (its FFN) and 3,500 × 128 × 15,867 (the MLM head);
- `ours.py pretrain` and `ours.py finetune` (the package functions the stages call: d2l's model
  and batch 512, on the data `compare_d2l.py` uses) with `--precision fp32` and `--precision
  bf16`, each in a fresh process, alternating which goes first, best of --repeats; with --d2l
  also d2l's own (`shared/bench/d2l_reference.py`, fp32) in the same rounds;
- MFU of each precision's pretraining against the 2048³ peak of that precision.

Targets (issue 17): bf16 at least 1.4x fp32's pretraining sentence pairs/s and 1.3x its
fine-tuning examples/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import compare_d2l  # a sibling script: Python puts this folder first on sys.path

HERE = Path(__file__).resolve().parent
SHAPES = {"2048³ (peak)": (2048, 2048, 2048), "23,000×128×128 (projections)": (23000, 128, 128),
          "23,000×128×256 (FFN)": (23000, 128, 256),
          "3,500×128×15,867 (MLM head)": (3500, 128, 15867)}  # fmt: skip
PRECISIONS = ("fp32", "bf16")
TARGETS = {"pretrain": 1.4, "finetune": 1.3}
SPEED = {"pretrain": "pairs_per_sec", "finetune": "examples_per_sec"}


def native_bf16(env: dict[str, str]) -> bool:
    """runtime.native_bf16, asked in a process of its own (this one stays without torch)."""
    code = "from bertpipe import runtime; print(runtime.native_bf16())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return out.stdout.strip() == "True"


def measure(args: argparse.Namespace, wiki: Path, snli: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    ours = [sys.executable, str(HERE / "ours.py")]
    d2l = [sys.executable, str(args.d2l_script)]
    steps = ["--steps", str(args.steps), "--threads", str(args.threads)]
    results: dict = {"native_bf16": native_bf16(env), "matmul": {}, "runs": {}}
    for name, shape in SHAPES.items():
        for precision in PRECISIONS:
            cmd = [*ours, "matmul", "--precision", precision, "--shape", *map(str, shape)]
            results["matmul"][f"{name} {precision}"] = compare_d2l.run_json(cmd, env)
    jobs = {
        "pretrain": [*ours, "pretrain", "--wiki", str(wiki), *steps],
        "finetune": [*ours, "finetune", "--wiki", str(wiki), "--snli-file", str(snli), *steps],
    }
    theirs = {
        "pretrain": [*d2l, "pretrain", "--wiki", str(wiki), "--steps", str(args.steps)],
        "finetune": [*d2l, "finetune", "--wiki", str(wiki), "--snli-file", str(snli),
                     "--steps", str(args.steps)],
    }  # fmt: skip
    for job, cmd in jobs.items():
        order = [(p, [*cmd, "--precision", p]) for p in PRECISIONS]
        if args.d2l:
            order.append(("d2l", theirs[job]))
        for r in range(args.repeats):
            print(f"{job}: round {r + 1}/{args.repeats} (load {compare_d2l.load1():.2f})",
                  file=sys.stderr, flush=True)  # fmt: skip
            for side, run in order if r % 2 == 0 else order[::-1]:
                results["runs"].setdefault(f"{job} {side}", []).append(
                    compare_d2l.run_json(run, env)
                )
    return results


def table(results: dict) -> tuple[list[str], dict]:
    """Markdown rows and the summary figures."""
    mm = {k: v["flops_per_sec"] / 1e9 for k, v in results["matmul"].items()}
    lines = ["| matmul GFLOP/s | fp32 | bf16 | bf16 / fp32 |", "|---|---|---|---|"]
    for name in SHAPES:
        fp32, bf16 = mm[f"{name} fp32"], mm[f"{name} bf16"]
        lines.append(f"| {name} | {fp32:.0f} | {bf16:.0f} | {bf16 / fp32:.2f}× |")
    runs, summary = results["runs"], {}
    lines += ["", "| training step | fp32 | bf16 | bf16 / fp32 | target | met? | d2l (fp32) |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for job, key in SPEED.items():
        best = {side: max(r[key] for r in found) for (j, side), found in
                ((k.split(" "), v) for k, v in runs.items()) if j == job}  # fmt: skip
        ratio = best["bf16"] / best["fp32"]
        summary[job] = {**best, "ratio": round(ratio, 3), "target": TARGETS[job]}
        d2l = f"{best['d2l']:.0f}" if "d2l" in best else ""
        lines.append(f"| {job} {key} | {best['fp32']:.0f} | {best['bf16']:.0f} | {ratio:.2f}× "
                     f"| ≥ {TARGETS[job]}× | {'yes' if ratio >= TARGETS[job] else 'NO'} "
                     f"| {d2l} |")  # fmt: skip
    peak = "2048³ (peak)"
    for precision in PRECISIONS:
        flops = max(r["useful_flops_per_sec"] for r in runs[f"pretrain {precision}"])
        mfu = flops / results["matmul"][f"{peak} {precision}"]["flops_per_sec"]
        summary[f"mfu_{precision}"] = round(mfu, 3)
        lines.append(f"| pretraining MFU, {precision}: useful FLOP/s ÷ {precision} 2048³ peak "
                     f"| {mfu:.1%} | | | | | |")  # fmt: skip
    return lines, summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument(
        "--d2l-script", type=Path, help="default: <shared>/../bench/d2l_reference.py"
    )
    parser.add_argument("--d2l", action="store_true", help="also time d2l's own steps")
    parser.add_argument("--wiki-repeat", type=int, default=5)
    parser.add_argument("--snli-pairs", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per precision (best counts)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch/OMP threads")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    args.d2l_script = args.d2l_script or args.shared.resolve().parent / "bench" / "d2l_reference.py"
    args.wiki, args.snli_file = None, None  # compare_d2l.prepare_data: the repeated files
    load_start = compare_d2l.load1()
    with tempfile.TemporaryDirectory(prefix="bertpipe-bf16-") as tmp:
        wiki, snli = compare_d2l.prepare_data(args, Path(tmp))
        results = measure(args, wiki, snli)
    first = next(iter(results["matmul"].values()))
    info = compare_d2l.machine(args.threads, first) | {
        "native_bf16": results["native_bf16"], "load_start": load_start,
        "load_end": compare_d2l.load1(), "steps": args.steps, "repeats": args.repeats,
    }  # fmt: skip
    lines, summary = table(results)
    print(json.dumps(info))
    print(json.dumps(summary))
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "summary": summary, **results},
                                        indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
