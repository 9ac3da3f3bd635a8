"""Run the whole pipeline on small params and generated data, without touching your workspace.

    python -m bertpipe.small [--workdir DIR] [--repo DIR]

Copies the repository's files into a scratch folder, writes `params-small.yaml` there as its
`params.yaml`, generates WikiText-2 and SNLI stand-in archives (`bertpipe.synthetic`), serves them
from a loopback HTTP server (the first mirror answers 404, so the fallback is exercised too) and
runs `dvc repro` followed by `dvc metrics show`. Everything runs through the real download,
extraction, parsing and training code. The end-to-end tests and CI use the same pieces
(`bertpipe.scratch`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bertpipe import scratch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a new temp folder)")
    parser.add_argument(
        "--repo", type=Path, default=Path("."), help="repository to copy (default: .)"
    )
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bertpipe-small-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"small-params run in {workdir}", flush=True)
    scratch.copy_repository(args.repo, workdir)
    with tempfile.TemporaryDirectory(prefix="bertpipe-mirror-") as mirror:
        downloads = scratch.make_archives(Path(mirror))
        with scratch.serve(Path(mirror)) as base_url:
            scratch.write_params(workdir, downloads, base_url)
            scratch.commit_all(workdir, "small-params run")
            scratch.dvc(workdir, "repro")
    scratch.dvc(workdir, "metrics", "show")


if __name__ == "__main__":
    main()
