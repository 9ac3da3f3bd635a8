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

from pathlib import Path

from bertpipe import artifacts, config, download
from bertpipe.cli import run, stage_parser


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder for the extracted files")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON, written last")
    args = parser.parse_args(argv)
    cfg = config.load(args.params, "download_wikitext")
    metrics = download.fetch(cfg, args.out)
    artifacts.write_json(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
