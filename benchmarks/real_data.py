"""Package the real public files in `shared/data` as the archives the pipeline downloads.

    python benchmarks/real_data.py --shared ../shared/data --out /tmp/mirror [--wiki-repeat K]
        [--snli-repeat K]

WikiText-2's training split and SNLI's train/test splits are not in `shared/data`, so:
- `wikitext-2/wiki.train.tokens` = (wiki.valid.tokens + wiki.test.tokens) repeated K times;
  the valid and test members are the real files (their SHA-1s match the real release).
- `snli_1.0/snli_1.0_train.txt` = the first 80% of the dev rows, repeated K times;
  `snli_1.0_test.txt` = the last 20%; `snli_1.0_dev.txt` = the whole dev file.
Prints the `download_wikitext` / `download_snli` params sections (YAML) that point at them.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import zipfile
from pathlib import Path

import yaml


def wiki_members(shared: Path, repeat: int) -> dict[str, bytes]:
    valid = (shared / "wikitext-2" / "wiki.valid.tokens").read_bytes()
    test = (shared / "wikitext-2" / "wiki.test.tokens").read_bytes()
    return {"wiki.train.tokens": (valid + test) * repeat, "wiki.valid.tokens": valid,
            "wiki.test.tokens": test}  # fmt: skip


def snli_members(shared: Path, repeat: int) -> dict[str, bytes]:
    header, *rows = (shared / "snli_1.0" / "snli_1.0_dev.txt").read_bytes().splitlines(True)
    cut = len(rows) * 4 // 5
    return {
        "snli_1.0_train.txt": header + b"".join(rows[:cut]) * repeat,
        "snli_1.0_test.txt": header + b"".join(rows[cut:]),
        "snli_1.0_dev.txt": header + b"".join(rows),
    }


def write_zip(path: Path, folder: str, members: dict[str, bytes]) -> str:
    """Write the archive (stored, not deflated: it is local) and return its SHA-1."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(f"{folder}/{name}", (2016, 1, 1, 0, 0, 0)), data)
    return hashlib.sha1(path.read_bytes()).hexdigest()


def build(shared: Path, out: Path, wiki_repeat: int = 1, snli_repeat: int = 1) -> dict:
    """Write both archives into `out`; return the download params sections."""
    out.mkdir(parents=True, exist_ok=True)
    wiki = wiki_members(shared, wiki_repeat)
    snli = snli_members(shared, snli_repeat)
    wiki_sha1 = write_zip(out / "wikitext-2-v1.zip", "wikitext-2", wiki)
    snli_sha1 = write_zip(out / "snli_1.0.zip", "snli_1.0", snli)
    return {
        "download_wikitext": {
            "mirrors": [str((out / "wikitext-2-v1.zip").resolve())],
            "sha1": wiki_sha1,
            "files": {name: hashlib.sha1(data).hexdigest() for name, data in wiki.items()},
        },
        "download_snli": {
            "mirrors": [str((out / "snli_1.0.zip").resolve())],
            "sha1": snli_sha1,
            "files": dict.fromkeys(snli),
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--wiki-repeat", type=int, default=1)
    parser.add_argument("--snli-repeat", type=int, default=1)
    args = parser.parse_args(argv)
    sections = build(args.shared, args.out, args.wiki_repeat, args.snli_repeat)
    yaml.safe_dump(sections, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
