"""Run the default pipeline (d2l's params) on the real files in `shared/data`, in a scratch copy.

    python benchmarks/run_pipeline.py --shared ../shared/data [--workdir DIR] [--wiki-repeat K]
        [--snli-repeat K] [--set finetune.num_epochs=1 ...] [--json OUT]

The repository's own params.yaml is used as it is, except that the two download sections point
at local archives built by `real_data.py` (see there for how the splits are made) and each
`--set section.key=value` (value read as YAML). This is how README's "Results" were measured.

The stages run one at a time in dependency order, each as `dvc repro --single-item <stage>` in
a process of its own, which gives every stage its own figures:
- seconds: the wall time of that `dvc repro` (DVC's own start-up, about 1 s, included);
- peak RSS: os.wait4's ru_maxrss of the dvc process, which on Linux is the largest peak of any
  single process in its tree (dvc, the stage, the stage's workers), not their sum. Linux also
  carries a parent's peak over fork and exec into its child's, so the archives are built in a
  process of their own and this script's own peak (printed as `floor_rss_mb`) stays small:
  a stage's figure is never below it;
- peak tree RSS: the sum of the RSS of every process in the tree, sampled every 0.2 s (a peak
  shorter than that can be missed); it counts worker pools and DVC's own process.
The whole repro's seconds are the stages' sum and its peaks the largest stage's. Then `dvc
status` (which must be clean, as after a plain `dvc repro`) and `dvc metrics show` run.
"""

from __future__ import annotations

import argparse
import contextlib
import graphlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml
from compare_d2l import load1, machine

from bertpipe import scratch

HERE = Path(__file__).resolve().parent
SAMPLE_S = 0.2


def set_param(params: dict, assignment: str) -> None:
    """Apply one `section.key=value` to the params, the value read as YAML."""
    name, equals, value = assignment.partition("=")
    *sections, key = name.split(".")
    target = params
    for section in sections:
        target = target.get(section) if isinstance(target, dict) else None
    if not equals or not sections or not isinstance(target, dict) or key not in target:
        sys.exit(f"--set {assignment!r}: expected section.key=value for a key in params.yaml")
    target[key] = yaml.safe_load(value)


def stage_order(workdir: Path) -> list[str]:
    """The pipeline's stages, each after the stages it depends on (from `dvc dag --dot`)."""
    dot = scratch.dvc(workdir, "dag", "--dot", capture=True)
    graph: dict[str, set[str]] = {n: set() for n in re.findall(r'^"([^"]+)";$', dot, re.M)}
    for before, after in re.findall(r'^"([^"]+)" -> "([^"]+)";$', dot, re.M):
        graph[after].add(before)
    return list(graphlib.TopologicalSorter(graph).static_order())


def tree_rss(root: psutil.Process) -> int:
    """The summed RSS of `root` and its descendants now, in bytes."""
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # one may have ended since it was listed
            total += process.memory_info().rss
    return total


def run_stage(workdir: Path, stage: str) -> dict:
    """`dvc repro --single-item <stage>` in a process of its own: seconds and peak memory."""
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    load, start, tree_peak = load1(), time.perf_counter(), 0
    process = subprocess.Popen(cmd, cwd=workdir, env=scratch.dvc_env(workdir))
    root = psutil.Process(process.pid)
    # os.wait4 rather than Popen.wait: it returns the finished tree's resource usage
    while not (done := os.wait4(process.pid, os.WNOHANG))[0]:
        with contextlib.suppress(psutil.Error):
            tree_peak = max(tree_peak, tree_rss(root))
        time.sleep(SAMPLE_S)
    _, status, usage = done
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"dvc repro --single-item {stage} failed with status {process.returncode}")
    return {"stage": stage, "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_mb": usage.ru_maxrss // 1024, "tree_rss_mb": tree_peak // 2**20,
            "load_before": load, "load_after": load1()}  # fmt: skip


def markdown(rows: list[dict]) -> str:
    """The per-stage table, and the whole repro's row (seconds summed, peaks the largest)."""
    whole = {
        "stage": "**whole repro**",
        "seconds": round(sum(r["seconds"] for r in rows), 1),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
        "tree_rss_mb": max(r["tree_rss_mb"] for r in rows),
        "load_before": rows[0]["load_before"],
        "load_after": rows[-1]["load_after"],
    }
    lines = [
        "| stage | seconds | peak RSS MB (largest process) | peak tree RSS MB (sampled) "
        "| load before → after |",
        "|---|---|---|---|---|",
    ]
    for r in [*rows, whole]:
        load = f"{r['load_before']:.2f} → {r['load_after']:.2f}"
        cells = [
            r["stage"],
            f"{r['seconds']:.1f}",
            f"{r['peak_rss_mb']:,}",
            f"{r['tree_rss_mb']:,}",
        ]
        lines.append("| " + " | ".join([*cells, load]) + " |")
    return "\n".join(lines)


def prepare(args: argparse.Namespace) -> Path:
    """The scratch workspace: the repository, the local archives, the params, one commit."""
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bertpipe-real-"))
    workdir.mkdir(parents=True, exist_ok=True)
    scratch.copy_repository(Path("."), workdir)
    built = subprocess.run(
        [sys.executable, str(HERE / "real_data.py"), "--shared", str(args.shared.resolve()),
         "--out", str(workdir.parent / f"{workdir.name}-mirror"),
         "--wiki-repeat", str(args.wiki_repeat), "--snli-repeat", str(args.snli_repeat)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    sections = yaml.safe_load(built.stdout)
    params = yaml.safe_load((workdir / "params.yaml").read_text(encoding="utf-8"))
    params.update(sections)
    for assignment in args.set:
        set_param(params, assignment)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    scratch.commit_all(workdir, "default params on shared/data")
    return workdir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a new temp folder)")
    parser.add_argument("--wiki-repeat", type=int, default=1)
    parser.add_argument("--snli-repeat", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one params.yaml value (repeatable)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    workdir = prepare(args)
    print(f"default pipeline in {workdir}", flush=True)
    rows = [run_stage(workdir, stage) for stage in stage_order(workdir)]
    status = scratch.dvc(workdir, "status", capture=True)
    scratch.dvc(workdir, "metrics", "show")
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    about = {**machine(os.cpu_count() or 1, {}), "command": " ".join(sys.argv),
             "floor_rss_mb": floor}  # fmt: skip
    print(json.dumps(about), markdown(rows), f"dvc status after the run: {status.strip()}",
          sep="\n", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({**about, "stages": rows}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
