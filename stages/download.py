"""Download an archive and extract the files its params section names: WikiText-2 or SNLI.

One script for the two download stages, which differ only in their params: `--name
download_wikitext` extracts wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens from
WikiText-2; `--name download_snli` extracts snli_1.0_train.txt, snli_1.0_dev.txt and
snli_1.0_test.txt from SNLI 1.0. The archive comes from the first mirror in the params (http(s),
file:// or a local copy of the archive) that passes its SHA-1 checks; d2l's WikiText URL now
serves an XML error page (d2l issue #2588), so the params can list several. No tracked file is
read: the mirrors are params. The output folder holds the extracted files, flat.

Reads:
Writes: --out (data/<name>/), --metrics (metrics/<name>.json)
Params: <name> (the section named like the stage)
"""

from __future__ import annotations

from pathlib import Path

from bertpipe import artifacts, config, download
from bertpipe.cli import run, stage_parser

# every params section that describes an archive to download is a stage this script runs
STAGES = [name for name, kind in config.SECTIONS.items() if kind is config.DownloadConfig]


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--name", required=True, choices=STAGES, help="the stage to run")
    parser.add_argument("--out", type=Path, required=True, help="folder for the extracted files")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON, written last")
    args = parser.parse_args(argv)
    cfg = config.load(args.params, args.name)
    metrics = download.fetch(cfg, args.out)
    artifacts.write_json(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
