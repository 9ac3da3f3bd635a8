"""Download WikiText-2 and extract its three token files from the first mirror that passes.

d2l's S3 URL now serves an XML error page (d2l issue #2588), so params list several mirrors
(http(s), file:// or a local copy of the archive), each checked against the archive's or the
files' SHA-1s. No tracked file is read: the mirrors are params. The output folder holds
wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens, flat.

Reads:
Writes: data/download_wikitext, metrics/download_wikitext.json
Params: download_wikitext
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bertpipe import artifacts, config, download
from bertpipe.cli import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder that receives the extracted files (replaced atomically)",
    )
    parser.add_argument(
        "--metrics",
        type=Path,
        required=True,
        help="JSON written last: mirror used, archive size and SHA-1, file sizes",
    )
    args = parser.parse_args(argv)
    cfg = config.load(args.params, "download_wikitext")
    metrics = download.fetch(cfg, args.out)
    artifacts.write_json(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
