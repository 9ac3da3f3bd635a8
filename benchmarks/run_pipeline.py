"""Run the default pipeline (d2l's params) on the real files in `shared/data`, in a scratch copy.

    python benchmarks/run_pipeline.py --shared ../shared/data [--workdir DIR] [--wiki-repeat K]

The repository's own params.yaml is used as it is, except that the two download sections point
at local archives built by `real_data.py` (see there for how the splits are made). Prints the
wall time of `dvc repro` and `dvc metrics show`. This is how README's "Results" were measured.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import real_data  # a sibling script: Python puts this folder first on sys.path
import yaml

from bertpipe import scratch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a new temp folder)")
    parser.add_argument("--wiki-repeat", type=int, default=1)
    parser.add_argument("--snli-repeat", type=int, default=1)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bertpipe-real-"))
    workdir.mkdir(parents=True, exist_ok=True)
    scratch.copy_repository(Path("."), workdir)
    sections = real_data.build(
        args.shared.resolve(), workdir.parent / f"{workdir.name}-mirror", args.wiki_repeat,
        args.snli_repeat,
    )  # fmt: skip
    params = yaml.safe_load((workdir / "params.yaml").read_text(encoding="utf-8"))
    params.update(sections)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    scratch.commit_all(workdir, "default params on shared/data")
    print(f"default pipeline in {workdir}", flush=True)
    start = time.perf_counter()
    scratch.dvc(workdir, "repro")
    print(f"dvc repro: {time.perf_counter() - start:.0f} s", flush=True)
    scratch.dvc(workdir, "metrics", "show")


if __name__ == "__main__":
    main()
