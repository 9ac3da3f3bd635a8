"""Download d2l's published BERT weights (bert.small or bert.base) and extract them.

The archive (d2l's `bert.small.torch.zip` or `bert.base.torch.zip`) comes from the first mirror
in params whose SHA-1 matches. Its members sit in a folder `bert.<size>.torch/`; members are
found by basename, so the output folder holds pretrained.params and vocab.json, flat.

Reads:
Writes: data/download_bert, metrics/download_bert.json
Params: download_bert
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
    cfg = config.load(args.params, "download_bert")
    metrics = download.fetch(cfg, args.out)
    artifacts.write_json(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
