"""Time every stage's work against d2l's own implementation, side by side, on the same data.

    python benchmarks/compare_d2l.py [--shared ../shared/data] [--wiki-repeat 5]
        [--snli-pairs 100000] [--steps 5] [--repeats 2] [--contend N] [--json OUT]
        [--wiki FILE] [--snli-file FILE]      (real files instead of the repeated ones)
        [--peer]                              (transformers' BERT beside both: peer_transformers.py)
        [--precision fp32|bf16]               (ours; d2l runs fp32)

Data: WikiText = (wiki.valid.tokens + wiki.test.tokens) x --wiki-repeat (5: about the size of
the real training file); SNLI = the rows of snli_1.0_dev.txt cycled to --snli-pairs rows. Both
are written once into a temporary folder; --wiki / --snli-file use given files instead.

Every measurement runs in a fresh process (so peak RSS belongs to one side), ours through
`ours.py` (the package functions the stages call) and d2l's through
`shared/bench/d2l_reference.py` (the published `d2l` package), with the same thread count,
alternating which side goes first; each figure is the best of --repeats runs. Before dividing,
the script checks that both sides did the same work (example and pair counts, vocabulary
size, steps, batch size) and stops if not. MFU: useful model FLOP/s of our pretraining step
(see ours.useful_flops) over the best 2048^3 matmul FLOP/s measured in the same run, in the
precision ours trains in (--precision: the params' fp32 or bf16), so that bf16 is measured
against bf16's own, higher, peak.
Waits (up to --wait-max seconds) for the 1-minute load average to fall below --quiet first.

--peer: the training jobs also run `peer_transformers.py` (Hugging Face transformers'
BertForPreTraining and BertForSequenceClassification on the same examples and pairs) as a third
side, and fine-tuning the hf_bert route's classifier at d2l's shape in our loop (`ours.py
finetune --model hf-d2l` at --threads: on this route the stage keeps one thread count),
alternating with the others; a second table gives ours against them.

--contend N: N busy processes (`while True: pass`) run through every measurement of both sides,
as a user's other work would; the matmul peak is measured before they start. The training
stages are also run at --threads 1 (ours), the figure the issue holds them to: with other work
on the cores, never slower than one thread.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import real_data  # a sibling script: Python puts this folder first on sys.path

HERE = Path(__file__).resolve().parent
# This process starts every measurement, so it stays small (no torch): on Linux a child's peak
# RSS (getrusage) starts from its parent's at the moment it was started.
EXAMPLE_TOLERANCE = 0.03  # example counts differ only by which random sentences NSP drew


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_quiet(threshold: float, wait_max: float) -> float:
    """Wait until the 1-minute load average is below `threshold` (or `wait_max` passed)."""
    start = time.monotonic()
    while (load := load1()) >= threshold and time.monotonic() - start < wait_max:
        print(f"  load {load:.2f} >= {threshold}: waiting", file=sys.stderr, flush=True)
        time.sleep(20)
    return load


@contextlib.contextmanager
def contention(n: int) -> Iterator[None]:
    """`n` busy processes for the duration of the block."""
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(1.0 if n else 0.0)  # under way before anything is measured
        yield
    finally:
        for process in spin:
            process.kill()
            process.wait()


def run_json(cmd: list[str], env: dict[str, str]) -> dict:
    """Run one measurement in a fresh process; its last stdout line is the JSON result."""
    load = load1()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_before"] = load
    return result


def prepare_data(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path]:
    """The WikiText and SNLI files both sides read."""
    wiki, snli = args.wiki, args.snli_file
    if wiki is None:
        wiki = tmp / "wiki.train.tokens"
        wiki.write_bytes(real_data.wiki_valid_and_test(args.shared) * args.wiki_repeat)
    if snli is None:
        header, *rows = (
            (args.shared / "snli_1.0" / "snli_1.0_dev.txt").read_bytes().splitlines(True)
        )
        cycled = [rows[i % len(rows)] for i in range(args.snli_pairs)]
        snli = tmp / "snli_1.0_train.txt"
        snli.write_bytes(header + b"".join(cycled))
    return wiki, snli


def best(runs: list[dict], key: str, higher: bool) -> dict:
    return (max if higher else min)(runs, key=lambda r: r[key])


def same(what: str, ours: object, theirs: object) -> None:
    if ours != theirs:
        sys.exit(f"not the same work: {what}: ours {ours}, d2l {theirs}")


def same_steps(label: str, ours: list[dict], theirs: list[dict]) -> None:
    """Both sides timed the same number of steps of the same batch size on as many threads."""
    for a, b in zip(ours, theirs, strict=True):
        same(f"{label} steps", a["steps"], b["steps"])
        same(f"{label} batch size", a["batch_size"], b["batch_size"])
        same("threads", a["threads"], b["threads"])


def measure(args: argparse.Namespace, wiki: Path, snli: Path, tmp: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    py, ours, d2l = (
        sys.executable,
        [sys.executable, str(HERE / "ours.py")],
        [sys.executable, str(args.d2l)],
    )
    steps = ["--steps", str(args.steps)]
    precision = ["--precision", args.precision]
    vocab = tmp / "vocab.json"
    run_json([*ours, "vocab", "--wiki", str(wiki), "--out", str(vocab)], env)
    jobs = {
        "examples": (
            [*ours, "examples", "--wiki", str(wiki)],
            [[*d2l, "examples", "--wiki", str(wiki)]],
        ),
        "snli": (
            [*ours, "snli", "--snli-file", str(snli), "--vocab", str(vocab)],
            # with d2l's vocabulary of our WikiText (its script builds the whole pretraining
            # dataset for it: that memory is not SNLI's), and with its 3-token vocabulary
            # (SNLI's work alone); the better figure of the two counts
            [[*d2l, "snli", "--snli-file", str(snli), "--vocab-from", str(wiki)],
             [*d2l, "snli", "--snli-file", str(snli)]],
        ),
        "pretrain": (
            [*ours, "pretrain", "--wiki", str(wiki), *steps, "--compile", args.compile,
             *precision],
            [[*d2l, "pretrain", "--wiki", str(wiki), *steps]],
        ),
        "finetune": (
            [*ours, "finetune", "--wiki", str(wiki), "--snli-file", str(snli), *steps,
             "--compile", args.compile, *precision],
            [[*d2l, "finetune", "--wiki", str(wiki), "--snli-file", str(snli), *steps]],
        ),
    }  # fmt: skip
    peer = [py, str(HERE / "peer_transformers.py")]  # takes d2l's arguments
    matmul = [py, str(HERE / "ours.py"), "matmul", *precision]
    results: dict = {"ours": {}, "d2l": {}, "ours_1_thread": {}, "matmul": [run_json(matmul, env)],
                     "precision": args.precision}  # fmt: skip
    with contention(args.contend):
        for name in args.only or list(jobs):
            ours_cmd, d2l_cmds = jobs[name]
            order = [("ours", ours_cmd)] + [("d2l", c) for c in d2l_cmds]
            if args.peer and name in ("pretrain", "finetune"):
                order.append(("transformers", [*peer, *d2l_cmds[0][2:]]))
            if args.peer and name == "finetune":
                # the stage keeps one thread count on this route (auto does not switch)
                order.append(("hf_bert", [*ours_cmd, "--model", "hf-d2l", "--threads",
                                          str(args.threads)]))  # fmt: skip
            if args.contend and name in ("pretrain", "finetune"):
                order.append(("ours_1_thread", [*ours_cmd, "--threads", "1"]))
            runs: dict[str, list] = {side: [] for side, _ in order}
            for r in range(args.repeats):
                print(f"{name}: run {r + 1}/{args.repeats} (load {load1():.2f})", file=sys.stderr)
                for side, cmd in order if r % 2 == 0 else order[::-1]:
                    runs[side].append(run_json(cmd, env))
                if name == "pretrain" and not args.contend:
                    results["matmul"].append(run_json(matmul, env))
            for side, found in runs.items():
                results.setdefault(side, {})[name] = found
    return results


def table(results: dict, contended: bool) -> tuple[list[dict], dict]:
    """Rows (figure, ours, d2l, ratio, target, met) after checking both sides' work.

    Contended, the training targets are 1.5x d2l and at least ours at one thread, and there is
    no MFU row (the matmul peak is the quiet machine's)."""
    ours, d2l, one, rows = results["ours"], results["d2l"], results["ours_1_thread"], []

    def row(figure: str, mine: float, theirs: float | None, ratio: float, target: str, met: bool,
            ours_rss: float | None = None, d2l_rss: float | None = None) -> None:  # fmt: skip
        rows.append({"figure": figure, "ours": mine, "d2l": theirs, "ratio": round(ratio, 2),
                     "target": target, "met": met, "ours_peak_rss_mb": ours_rss,
                     "d2l_peak_rss_mb": d2l_rss})  # fmt: skip

    checks = {}
    if "examples" in ours:
        o, d = best(ours["examples"], "seconds", False), best(d2l["examples"], "seconds", False)
        same("vocabulary size", o["vocab_size"], d["vocab_size"])
        gap = abs(o["examples"] - d["examples"]) / d["examples"]
        if gap > EXAMPLE_TOLERANCE:
            sys.exit(f"not the same work: examples: ours {o['examples']}, d2l {d['examples']}")
        checks["examples"] = {"ours": o["examples"], "d2l": d["examples"], "vocab": o["vocab_size"]}
        r = d["seconds"] / o["seconds"]
        row("pretraining examples: seconds", o["seconds"], d["seconds"], r, ">= 10x faster",
            r >= 10, o["peak_rss_mb"], d["peak_rss_mb"])  # fmt: skip
    if "snli" in ours:
        o, d = best(ours["snli"], "seconds", False), best(d2l["snli"], "seconds", False)
        for run in d2l["snli"]:
            same("SNLI pairs", o["pairs"], run["pairs"])
        checks["snli_pairs"] = o["pairs"]
        rss_o = min(x["peak_rss_mb"] for x in ours["snli"])
        rss_d = min(x["peak_rss_mb"] for x in d2l["snli"])
        r = d["seconds"] / o["seconds"]
        row("SNLI tensors: seconds", o["seconds"], d["seconds"], r, ">= 5x faster", r >= 5)
        r = o["tensor_mb"] / d["tensor_mb"]
        row("SNLI tensors: MB", o["tensor_mb"], d["tensor_mb"], r, "<= 1/8", r <= 1 / 8)
        r = rss_o / rss_d
        row("SNLI tensors: peak RSS MB", rss_o, rss_d, r, "<= 1/2", r <= 1 / 2)
    if "pretrain" in ours:
        o = best(ours["pretrain"], "pairs_per_sec", True)
        d = best(d2l["pretrain"], "pairs_per_sec", True)
        same_steps("pretraining", ours["pretrain"], d2l["pretrain"])
        r = o["pairs_per_sec"] / d["pairs_per_sec"]
        row("pretraining step: sentence pairs/s", o["pairs_per_sec"], d["pairs_per_sec"], r,
            ">= 1.5x", r >= 1.5, o["peak_rss_mb"], d["peak_rss_mb"])  # fmt: skip
        peak = max(m["flops_per_sec"] for m in results["matmul"])
        checks["matmul_flops_per_sec"] = peak
        if "pretrain" in one:
            t = best(one["pretrain"], "pairs_per_sec", True)
            r = o["pairs_per_sec"] / t["pairs_per_sec"]
            row("pretraining step against ours at --threads 1: sentence pairs/s",
                o["pairs_per_sec"], t["pairs_per_sec"], r, ">= 1x", r >= 1)  # fmt: skip
        if not contended:  # MFU: against the quiet machine's own matmul peak
            mfu = o["useful_flops_per_sec"] / peak
            # d2l's useful FLOPs per pair are ours (same model, same examples, same statistics)
            d2l_mfu = mfu * d["pairs_per_sec"] / o["pairs_per_sec"]
            row(f"pretraining MFU: useful FLOP/s / {results['precision']} matmul FLOP/s "
                "(d2l's: estimate, against the same peak)",
                round(mfu, 3), round(d2l_mfu, 3), mfu / d2l_mfu, ">= 50%", mfu >= 0.5)  # fmt: skip
    if "finetune" in ours:
        o = best(ours["finetune"], "examples_per_sec", True)
        d = best(d2l["finetune"], "examples_per_sec", True)
        same_steps("fine-tuning", ours["finetune"], d2l["finetune"])
        r = o["examples_per_sec"] / d["examples_per_sec"]
        target = 1.5 if contended else 6
        row("fine-tuning step: examples/s", o["examples_per_sec"], d["examples_per_sec"], r,
            f">= {target}x", r >= target, o["peak_rss_mb"], d["peak_rss_mb"])  # fmt: skip
        if "finetune" in one:
            t = best(one["finetune"], "examples_per_sec", True)
            r = o["examples_per_sec"] / t["examples_per_sec"]
            row("fine-tuning step against ours at --threads 1: examples/s",
                o["examples_per_sec"], t["examples_per_sec"], r, ">= 1x", r >= 1)  # fmt: skip
    return rows, checks


def peer_table(results: dict) -> str:
    """Ours against transformers and the hf_bert route (--peer), best of each side, after
    checking the same work; the threads each best run used (auto: the most) are shown."""
    lines = ["| figure | ours | other | ours / other | threads ours / other |",
             "|---|---|---|---|---|"]  # fmt: skip
    for side, name, figure, key in (
        ("transformers", "pretrain", "BertForPreTraining: sentence pairs/s", "pairs_per_sec"),
        ("transformers", "finetune", "BertForSequenceClassification: examples/s",
         "examples_per_sec"),
        ("hf_bert", "finetune", "hf_bert route, d2l's shape, our loop: examples/s",
         "examples_per_sec"),
    ):  # fmt: skip
        if name not in results.get(side, {}):
            continue
        mine, other = results["ours"][name], results[side][name]
        for a, b in zip(mine, other, strict=True):
            if (a["steps"], a["batch_size"]) != (b["steps"], b["batch_size"]):
                sys.exit(f"not the same work: {name}: ours {a}, {side} {b}")
        o, t = best(mine, key, True), best(other, key, True)
        lines.append(f"| {figure} | {o[key]} | {t[key]} | {o[key] / t[key]:.2f} "
                     f"| {o['threads']} / {t['threads']} |")  # fmt: skip
    return "\n".join(lines)


def markdown(rows: list[dict]) -> str:
    lines = ["| figure | ours | d2l | ratio | target | met? | peak RSS MB ours / d2l |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        rss = (
            ""
            if r["ours_peak_rss_mb"] is None
            else f"{r['ours_peak_rss_mb']} / {r['d2l_peak_rss_mb']}"
        )
        lines.append(f"| {r['figure']} | {r['ours']} | {r['d2l']} | {r['ratio']} | {r['target']} "
                     f"| {'yes' if r['met'] else 'NO'} | {rss} |")  # fmt: skip
    return "\n".join(lines)


def machine(threads: int, matmul: dict) -> dict:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    return {
        "cpu": names[0] if names else platform.processor() or "unknown",
        "nproc": os.cpu_count(),
        "threads": threads,
        "torch": matmul.get("torch"),
        "cpu_capability": matmul.get("cpu_capability"),
        "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--d2l", type=Path, help="d2l_reference.py (default: <shared>/../bench/)")
    parser.add_argument("--wiki-repeat", type=int, default=5)
    parser.add_argument("--snli-pairs", type=int, default=100_000, help="SNLI rows to cycle to")
    parser.add_argument("--wiki", type=Path, help="a WikiText .tokens file to use as it is")
    parser.add_argument("--snli-file", type=Path, help="an SNLI .txt file to use as it is")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per side")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side (best counts)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch/OMP threads")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="ours'")
    parser.add_argument("--only", nargs="+", choices=["examples", "snli", "pretrain", "finetune"])
    parser.add_argument("--quiet", type=float, default=0.7, help="load average to wait for")
    parser.add_argument("--wait-max", type=float, default=600, help="seconds to wait at most")
    parser.add_argument(
        "--contend",
        type=int,
        default=0,
        metavar="N",
        help="busy processes running through every measurement (default 0)",
    )
    parser.add_argument("--peer", action="store_true", help="also time transformers' BERT")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    args.d2l = args.d2l or args.shared.resolve().parent / "bench" / "d2l_reference.py"
    load_start = wait_quiet(args.quiet, args.wait_max)
    with tempfile.TemporaryDirectory(prefix="bertpipe-bench-") as tmp:
        wiki, snli = prepare_data(args, Path(tmp))
        results = measure(args, wiki, snli, Path(tmp))
    rows, checks = table(results, args.contend > 0)
    info = machine(args.threads, (results["matmul"] or [{}])[0]) | {
        "load_start": load_start,
        "load_end": load1(),
        "wiki": str(args.wiki or f"valid+test x {args.wiki_repeat}"),
        "snli": str(args.snli_file or f"dev rows cycled to {args.snli_pairs}"),
        "steps": args.steps,
        "repeats": args.repeats,
        "contend": args.contend,
        "precision": args.precision,
        "matmul_flops_per_sec": max(m["flops_per_sec"] for m in results["matmul"]),
    }
    print(json.dumps(info))
    print(json.dumps(checks))
    print(markdown(rows))
    if args.peer:
        print(peer_table(results))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "checks": checks, "rows": rows,
                                         "runs": results}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
