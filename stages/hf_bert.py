"""Fetch a Google BERT in Hugging Face's layout: from the Hub at a revision, or a local folder.

A Hub entry (`revision` set) is resolved to a commit and its files are fetched at that commit
through `huggingface_hub` (its cache, its timeouts and retries; see bertpipe.hf_bert), each
checked against the hash the Hub lists. A local folder (`revision: null`) is copied when its
files' digest equals `sha256`. The output is a `save_pretrained`-style folder that
`transformers` loads offline: config.json, model.safetensors and the tokenizer's files (a
tokenizer.json always: built from vocab.txt when the source has none). No pickled weights and
no code are taken.

Reads:
Writes: --out (data/hf_bert/<name>/: config.json, model.safetensors, tokenizer.json, ...),
        --metrics (metrics/hf_bert/<name>.json)
Params: hf_bert.<name> (its own entry only)
"""

from __future__ import annotations

import logging

from bertpipe import artifacts, config, hf_bert
from bertpipe.cli import run, stage_parser
from bertpipe.errors import UserError

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--name", required=True, help="which entry of the hf_bert params")
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--metrics", required=True, help="metrics JSON file to write")
    args = parser.parse_args(argv)
    cfg = config.load_entry(args.params, "hf_bert", args.name)
    where = f"{args.params}: hf_bert.{args.name}"

    with artifacts.atomic_dir(args.out) as out:
        commit = None
        if cfg.revision is None:
            hf_bert.copy_folder(cfg, out, where)
        else:
            commit = hf_bert.fetch_from_hub(cfg, out, where)
        fetched = sorted(p.name for p in out.iterdir())
        digest = hf_bert.folder_sha256(out, fetched)
        if cfg.revision is not None and cfg.sha256 not in (None, digest):
            raise UserError(
                f"{where}.sha256 is {cfg.sha256}, but the files fetched ({', '.join(fetched)}) "
                f"have digest {digest}: the revision moved, or set sha256 to that"
            )
        source = f"{where}: {cfg.source}" + (f" at commit {commit}" if commit else "")
        facts = hf_bert.complete(out, source)
    log.info(
        "wrote %s: %s (%s), %s", args.out, cfg.source, commit or "local folder", facts["model"]
    )
    metrics = {"source": cfg.source, "revision": cfg.revision, "commit": commit,
               "sha256": digest, **facts}  # fmt: skip
    artifacts.write_json(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
