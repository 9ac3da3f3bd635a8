"""Download the SNLI 1.0 corpus and extract its train, dev and test tables.

The archive comes from the first mirror in params (http(s), file:// or a local copy of the
archive) whose SHA-1 matches. No tracked file is read: the mirrors are params. The output folder
holds snli_1.0_train.txt, snli_1.0_dev.txt and snli_1.0_test.txt, flat.

Reads:
Writes: data/download_snli, metrics/download_snli.json
Params: download_snli
"""

from __future__ import annotations

from pathlib import Path

from bertpipe import artifacts, config, download
from bertpipe.cli import run, stage_parser


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder for the extracted files")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON, written last")
    args = parser.parse_args(argv)
    cfg = config.load(args.params, "download_snli")
    metrics = download.fetch(cfg, args.out)
    artifacts.write_json(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
